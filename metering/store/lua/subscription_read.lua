-- Read one account's subscription side, for the fold that decides its subscription records
-- (metering/core/revenue.py); written back by subscription.lua with a compare-and-set on `v`.
--
-- KEYS[1]  the account's subscription key (routing only: every key below shares its hash tag)
-- ARGV[1]  base "<prefix>:{<account>}:"
-- ARGV[2..] offset-watermark fields to read ("<topic>/<partition>")
-- Returns {sub, mrr, watermarks, history length, fired, converted ids, outbox}: sub, mrr and
-- fired flat (field, value, ...); one watermark per field asked ('' when none).
local base = ARGV[1]
local wms = {}
for i = 2, #ARGV do
  wms[i - 1] = redis.call('HGET', base .. K.wm, ARGV[i]) or ''
end
return {
  redis.call('HGETALL', KEYS[1]),
  redis.call('HGETALL', base .. K.mrr),
  wms,
  redis.call('LLEN', base .. K.history),
  redis.call('HGETALL', base .. K.fired),
  redis.call('HKEYS', base .. K.converted),
  redis.call('LRANGE', base .. K.outbox, 0, -1),
}
