-- Record one account's triggers atomically: set each fired mark and append the trigger to the
-- account's outbox in the same script, so a trigger is durable exactly when its mark is.
--
-- KEYS[1]  the account's subscription key (routing only; see apply.lua)
-- ARGV[1]  base "<prefix>:{<account>}:"
-- ARGV[2]  JSON: [[field, expected, mark, topic, payload], ...]
--          `expected` is the mark the caller saw ("" = never fired): a compare-and-set, so a
--          fenced or duplicate caller cannot fire the same scope twice or skip a cooldown.
--          A recovery (expansion.recovered) and the re-firing of a recovered level are the same
--          compare-and-set: fired n -> recovered n -> fired n + 1, each step at most once.
-- Returns {flags, outbox}: one char per candidate ("1" recorded, "0" refused: the mark had
-- changed) and the whole outbox after the appends. A caller refused because another member
-- (say, a fenced zombie) recorded the same trigger first thus sees that member's entry and
-- publishes it: an entry can never be stranded behind a refused candidate.
local base = ARGV[1]
local fired_key = base .. K.fired
local outbox_key = base .. K.outbox
local out = {}
for i, c in ipairs(cjson.decode(ARGV[2])) do
  local cur = redis.call('HGET', fired_key, c[1]) or ''
  if cur == c[2] then
    redis.call('HSET', fired_key, c[1], c[3])
    redis.call('RPUSH', outbox_key, c[4] .. '\n' .. c[5])
    out[i] = '1'
  else
    out[i] = '0'
  end
end
return {table.concat(out), redis.call('LRANGE', outbox_key, 0, -1)}
