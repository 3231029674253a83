-- Apply one batch of one account's usage events atomically, then read back the state that
-- trigger evaluation needs. One call per account per batch (never per event).
--
-- KEYS[1]  the account's subscription key (<base>sub): routes the call on Redis Cluster; every
--          other key is derived from ARGV[1] and shares the account's hash tag.
-- ARGV[1]  base "<prefix>:{<account>}:"
-- ARGV[2]  watermark field "<topic>/<partition>"
-- ARGV[3]  dedup bucket index (floor(now / window)); ARGV[4] bucket TTL seconds; "0" = no dedup
-- ARGV[5]  oldest ISO week to keep in the weekly counts ("2026-W35")
-- ARGV[6]  JSON request: {"ev": [[offset, id_digest, period, week, ts_ms, [[meter, op, arg], ...]], ...],
--                         "periods": [...], "uniq": [...], "weeks": [...], "marks": [...]}
--
-- Exactly once: an event whose offset is at or below the (account, partition) watermark was
-- applied by an earlier call (a redelivery after a crash or rebalance, or a fenced zombie's
-- stale batch) and is skipped; an event whose (source, id) digest is in the current or the
-- previous dedup bucket is a producer duplicate and is skipped. The watermark, the dedup marks
-- and the aggregates change in this one script, so they can never disagree.
--
-- Exactness: sums and maxima are integer strings in micro-units; they are only ever added by
-- HINCRBY (int64) or compared as strings, never turned into Lua doubles.
--
-- Returns {flags, sub, periods, life, weeks, marks, outbox}; flags has one char per event:
-- "1" applied, "d" duplicate (source, id), "r" redelivered (offset already applied).

local base = ARGV[1]
local wm_field = ARGV[2]
local bucket = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local week_cutoff = ARGV[5]
local req = cjson.decode(ARGV[6])

local wm_key = base .. 'wm'
local life_key = base .. 'life'
local cur_dedup = base .. 'd:' .. bucket
local prev_dedup = base .. 'd:' .. (bucket - 1)

-- a >= b for non-negative integer strings without leading zeros
local function int_ge(a, b)
  if #a ~= #b then return #a > #b end
  return a >= b
end

local watermark = tonumber(redis.call('HGET', wm_key, wm_field) or '-1')
local flags = {}
local max_offset = watermark
local counts = {}      -- key -> field -> increment (small integers: exact as doubles)
local touched_weeks = {}
local dedup_used = false

local function bump(key, field, n)
  local t = counts[key]
  if not t then t = {}; counts[key] = t end
  t[field] = (t[field] or 0) + n
end

for i, ev in ipairs(req.ev) do
  local offset, digest, period, week, ts, ups = ev[1], ev[2], ev[3], ev[4], ev[5], ev[6]
  if offset <= watermark then
    flags[i] = 'r'
  elseif ttl > 0 and (redis.call('HEXISTS', cur_dedup, digest) == 1
                      or redis.call('HEXISTS', prev_dedup, digest) == 1) then
    flags[i] = 'd'
  else
    flags[i] = '1'
    if ttl > 0 then
      redis.call('HSET', cur_dedup, digest, '1')
      dedup_used = true
    end
    local pkey = base .. 'p:' .. period
    for _, u in ipairs(ups) do
      local meter, op, arg = u[1], u[2], u[3]
      bump(pkey, meter .. ':n', 1)
      local wkey = base .. 'w:' .. meter
      bump(wkey, week, 1)
      touched_weeks[wkey] = true
      if op == 'c' then
        bump(pkey, meter .. ':v', 1)
        bump(life_key, meter, 1)
      elseif op == 's' then
        redis.call('HINCRBY', pkey, meter .. ':v', arg)
        redis.call('HINCRBY', life_key, meter, arg)
      else
        bump(life_key, meter, 1)
        if op == 'u' then
          redis.call('SADD', base .. 'u:' .. meter .. ':' .. period, arg)
        elseif op == 'x' then
          local cur = redis.call('HGET', pkey, meter .. ':v')
          if not cur or not int_ge(cur, arg) then redis.call('HSET', pkey, meter .. ':v', arg) end
        elseif op == 'l' then
          -- latest by event time: an older event arriving later does not override a newer one
          local cur_ts = tonumber(redis.call('HGET', pkey, meter .. ':t') or '-1')
          if ts >= cur_ts then
            redis.call('HSET', pkey, meter .. ':v', arg, meter .. ':t', string.format('%d', ts))
          end
        end
      end
    end
  end
  if offset > max_offset then max_offset = offset end
end

for key, fields in pairs(counts) do
  for field, n in pairs(fields) do
    redis.call('HINCRBY', key, field, string.format('%d', n))
  end
end
for wkey, _ in pairs(touched_weeks) do
  if redis.call('HLEN', wkey) > 12 then
    for _, w in ipairs(redis.call('HKEYS', wkey)) do
      if w < week_cutoff then redis.call('HDEL', wkey, w) end
    end
  end
end
if dedup_used then redis.call('EXPIRE', cur_dedup, ttl) end
if max_offset > watermark then
  redis.call('HSET', wm_key, wm_field, string.format('%d', max_offset))
end

-- Read back what trigger evaluation needs.
local periods = {}
for _, period in ipairs(req.periods) do
  local uniq = {}
  for _, meter in ipairs(req.uniq) do
    uniq[#uniq + 1] = meter
    uniq[#uniq + 1] = redis.call('SCARD', base .. 'u:' .. meter .. ':' .. period)
  end
  periods[#periods + 1] = {period, redis.call('HGETALL', base .. 'p:' .. period), uniq}
end
local weeks = {}
for _, meter in ipairs(req.weeks) do
  weeks[#weeks + 1] = {meter, redis.call('HGETALL', base .. 'w:' .. meter)}
end
local marks = {}
if #req.marks > 0 then marks = redis.call('HMGET', base .. 'fired', unpack(req.marks)) end
-- HMGET's nils would end the Lua array early: make them explicit empty strings
for i = 1, #req.marks do if not marks[i] then marks[i] = '' end end

return {table.concat(flags), redis.call('HGETALL', KEYS[1]), periods,
        redis.call('HGETALL', life_key), weeks, marks, redis.call('LRANGE', base .. 'ob', 0, -1)}
