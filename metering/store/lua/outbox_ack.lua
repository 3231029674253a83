-- Drop the first N entries of an account's outbox once Kafka acknowledged them; only if the
-- head is still the one that was published (a fenced member must not drop the owner's entries).
-- KEYS[1] outbox key; ARGV[1] N; ARGV[2] the first published entry.
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[2] then return 0 end
redis.call('LTRIM', KEYS[1], tonumber(ARGV[1]), -1)
return 1
