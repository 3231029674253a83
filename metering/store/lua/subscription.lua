-- Write what the fold decided for one account's subscription records, in one atomic step: the
-- new state, the offset watermarks, the MRR, the movements appended to its history, the
-- conversions and their outbox entries. A compare-and-set on the write version `v` (read by
-- subscription_read.lua): if anyone wrote the account since that read (a fenced member, say),
-- nothing is written and the caller reads again and decides afresh.
--
-- KEYS[1]  the account's subscription key
-- ARGV[1]  base "<prefix>:{<account>}:"
-- ARGV[2]  the version read ('0' = never written); ARGV[3] the new version
-- ARGV[4]  JSON {"state": [field, value, ...] ([] = unchanged), "wm": [field, offset, ...],
--                "mrr": "<micro-units>", "paid": "0"|"1", "mh": [entry, ...],
--                "cv": [trigger id, record, ...], "ob": ["<topic>\n<CloudEvent>", ...]}
--          every number a string: nothing here is arithmetic, so no value meets a Lua double
-- Returns {1 written | 0 refused, the account's whole outbox}.
local base = ARGV[1]
local mrr_key = base .. K.mrr
local outbox_key = base .. K.outbox
if (redis.call('HGET', mrr_key, 'v') or '0') ~= ARGV[2] then
  return {0, redis.call('LRANGE', outbox_key, 0, -1)}
end
local w = cjson.decode(ARGV[4])
if #w.state > 0 then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], unpack(w.state))
end
for i = 1, #w.wm, 2 do
  redis.call('HSET', base .. K.wm, w.wm[i], w.wm[i + 1])
end
redis.call('HSET', mrr_key, 'v', ARGV[3], 'mrr', w.mrr, 'paid', w.paid)
for _, entry in ipairs(w.mh) do
  redis.call('RPUSH', base .. K.history, entry)
end
for i = 1, #w.cv, 2 do
  redis.call('HSET', base .. K.converted, w.cv[i], w.cv[i + 1])
end
for _, entry in ipairs(w.ob) do
  redis.call('RPUSH', outbox_key, entry)
end
return {1, redis.call('LRANGE', outbox_key, 0, -1)}
