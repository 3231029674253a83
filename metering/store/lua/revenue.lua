-- What `metering scorecard` reads of one account (SPEC 7.3); writes nothing.
-- KEYS[1]  the account's subscription key (routing only); ARGV[1] base "<prefix>:{<account>}:"
-- Returns {MRR history entries (oldest first), fired marks, conversion records}.
local base = ARGV[1]
return {
  redis.call('LRANGE', base .. K.history, 0, -1),
  redis.call('HVALS', base .. K.fired),
  redis.call('HVALS', base .. K.converted),
}
