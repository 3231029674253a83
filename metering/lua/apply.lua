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
-- Exactness: sums and maxima are integer strings in micro-units. Maxima are compared as
-- strings; sums of up to 15 digits are gathered as doubles below 2^52 (exact) and anything
-- larger goes to HINCRBY (int64): a value is never rounded.
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

local watermark = tonumber(redis.call('HGET', wm_key, wm_field) or '-1')
local flags = {}
local max_offset = watermark
-- Writes are gathered per key and field and done once at the end (a redis.call from Lua
-- costs far more than a table update): small counts, maxima, latest values, set members.
local counts = {}      -- key -> field -> increment (integers < 2^53: exact as doubles)
local maxima = {}      -- key -> field -> largest micro-unit integer string seen
local latest = {}      -- key -> field -> {ts, value}
local members = {}     -- set key -> list of members
local touched_weeks = {}
local dedup_used = false

local function bump(key, field, n)
  local t = counts[key]
  if not t then t = {}; counts[key] = t end
  t[field] = (t[field] or 0) + n
end

-- a >= b for non-negative integer strings without leading zeros
local function int_ge(a, b)
  if #a ~= #b then return #a > #b end
  return a >= b
end

-- Sums: micro-unit integer strings. Up to 15 digits they add exactly as doubles and are
-- gathered (flushed before 2^52); longer ones go straight to HINCRBY (int64 in Redis).
local LIMIT = 4503599627370496
local function add_sum(key, field, arg)
  if #arg > 15 then
    redis.call('HINCRBY', key, field, arg)
    return
  end
  local t = counts[key]
  if not t then t = {}; counts[key] = t end
  local v = (t[field] or 0) + tonumber(arg)
  if v >= LIMIT then
    redis.call('HINCRBY', key, field, string.format('%d', v))
    v = 0
  end
  t[field] = v
end

for i, ev in ipairs(req.ev) do
  local offset, digest, period, week, ts, ups = ev[1], ev[2], ev[3], ev[4], ev[5], ev[6]
  if offset <= watermark then
    flags[i] = 'r'
  elseif ttl > 0 and (redis.call('HEXISTS', prev_dedup, digest) == 1
                      or redis.call('HSETNX', cur_dedup, digest, '1') == 0) then
    flags[i] = 'd'
  else
    flags[i] = '1'
    dedup_used = dedup_used or ttl > 0
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
        add_sum(pkey, meter .. ':v', arg)
        add_sum(life_key, meter, arg)
      else
        bump(life_key, meter, 1)
        if op == 'u' then
          local skey = base .. 'u:' .. meter .. ':' .. period
          local m = members[skey]
          if not m then m = {}; members[skey] = m end
          m[#m + 1] = arg
        elseif op == 'x' then
          local t = maxima[pkey]
          if not t then t = {}; maxima[pkey] = t end
          local field = meter .. ':v'
          if not t[field] or not int_ge(t[field], arg) then t[field] = arg end
        elseif op == 'l' then
          -- latest by event time: an older event arriving later does not override a newer one;
          -- a tie goes to the later record
          local t = latest[pkey]
          if not t then t = {}; latest[pkey] = t end
          local cur = t[meter]
          if not cur or ts >= cur[1] then t[meter] = {ts, arg} end
        end
      end
    end
  end
  if offset > max_offset then max_offset = offset end
end

local new_week = {}
for key, fields in pairs(counts) do
  local is_week = touched_weeks[key]
  for field, n in pairs(fields) do
    if n ~= 0 then
      local total = redis.call('HINCRBY', key, field, string.format('%d', n))
      -- a week field just created: the only moment the 12-week window can overflow
      if is_week and total == n then new_week[key] = true end
    end
  end
end
for key, fields in pairs(maxima) do
  for field, v in pairs(fields) do
    local cur = redis.call('HGET', key, field)
    if not cur or not int_ge(cur, v) then redis.call('HSET', key, field, v) end
  end
end
for key, meters in pairs(latest) do
  for meter, tv in pairs(meters) do
    local cur_ts = tonumber(redis.call('HGET', key, meter .. ':t') or '-1')
    if tv[1] >= cur_ts then
      redis.call('HSET', key, meter .. ':v', tv[2], meter .. ':t', string.format('%d', tv[1]))
    end
  end
end
for skey, m in pairs(members) do
  for j = 1, #m, 5000 do
    redis.call('SADD', skey, unpack(m, j, math.min(j + 4999, #m)))
  end
end
for wkey, _ in pairs(new_week) do
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
