-- Replace an account's subscription state with a newer one (last by event time wins; a tie
-- goes to the later record, so replaying the compacted topic converges to the same state).
--
-- KEYS[1]  the account's subscription key
-- ARGV[1]  the update's event time (epoch ms)
-- ARGV[2..] field, value pairs of the new state (it always includes "time")
-- Returns 1 when applied, 0 when an equal-or-newer state was already there.
local cur = tonumber(redis.call('HGET', KEYS[1], 'time') or '-1')
if tonumber(ARGV[1]) < cur then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
