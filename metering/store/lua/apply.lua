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
-- ARGV[7]  the meters whose ISO-week counts are kept, space-separated (the power-user
--          meters: nothing else reads weekly counts)
--
-- Exactly once: an event whose offset is at or below the (account, partition) watermark was
-- applied by an earlier call (a redelivery after a crash or rebalance, or a fenced zombie's
-- stale batch) and is skipped; an event whose (source, id) digest is in the current or the
-- previous dedup bucket, or earlier in this same call, is a producer duplicate and is skipped.
-- The watermark, the dedup marks and the aggregates change in this one script, so they can
-- never disagree.
--
-- Exactness: sums and maxima are integer strings in micro-units. Maxima are compared as
-- strings. Sums are gathered as doubles only while exact: a stored value of up to 15 digits
-- plus a gathered delta below 2^52 stays below 2^53; a longer stored value or event value
-- goes to HINCRBY (int64 in Redis). A value is never rounded.
--
-- Cost: a redis.call from Lua costs far more than a table update, so the script makes a fixed
-- number of calls per account (about 15), not per event: the dedup digests are checked with
-- one HMGET per bucket and recorded with one HSET; each period hash and the lifetime hash are
-- read once (the read-back needs them anyway), updated in Lua and written with one HSET.
--
-- Returns {flags, sub, periods, life, weeks, marks, outbox}; flags has one char per event:
-- FLAG.applied, FLAG.duplicate (source, id) or FLAG.redelivered (offset already applied).
--
-- K (key suffixes), OP (meter update ops) and FLAG come from the preamble that
-- metering/store/codec.py generates from the Python names: never spell them out here.
-- The argument packing and the reply parsing live in codec.py as well.

local base = ARGV[1]
local wm_field = ARGV[2]
local bucket = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local week_cutoff = ARGV[5]
local req = cjson.decode(ARGV[6])
local weekly = {}
for meter in string.gmatch(ARGV[7] or '', '%S+') do weekly[meter] = true end

local wm_key = base .. K.wm
local life_key = base .. K.life
local cur_dedup = base .. K.dedup .. bucket
local prev_dedup = base .. K.dedup .. (bucket - 1)
local CHUNK = 3000 -- arguments per unpack(): Lua's C stack holds 8000

local function call_chunked(cmd, key, args)
  for j = 1, #args, CHUNK do
    redis.call(cmd, key, unpack(args, j, math.min(j + CHUNK - 1, #args)))
  end
end

-- HMGET of many fields, chunked; a missing field is false
local function hmget(key, fields)
  local out = {}
  for j = 1, #fields, CHUNK do
    local part = redis.call('HMGET', key, unpack(fields, j, math.min(j + CHUNK - 1, #fields)))
    for k = 1, #part do out[j + k - 1] = part[k] end
  end
  return out
end

-- 1. Offsets, then (source, id) digests.
local watermark = tonumber(redis.call('HGET', wm_key, wm_field) or '-1')
local flags = {}
local fresh = {} -- indices of events past the watermark
local max_offset = watermark
local events = req.ev
for i = 1, #events do
  local offset = events[i][1]
  if offset <= watermark then
    flags[i] = FLAG.redelivered
  else
    fresh[#fresh + 1] = i
    if offset > max_offset then max_offset = offset end
  end
end
if ttl > 0 and #fresh > 0 then
  local digests = {}
  for j = 1, #fresh do digests[j] = events[fresh[j]][2] end
  local in_prev = hmget(prev_dedup, digests)
  local in_cur = hmget(cur_dedup, digests)
  local seen = {}
  local record = {}
  for j = 1, #fresh do
    local d = digests[j]
    if in_prev[j] or in_cur[j] or seen[d] then
      flags[fresh[j]] = FLAG.duplicate
    else
      seen[d] = true
      flags[fresh[j]] = FLAG.applied
      record[#record + 1] = d
      record[#record + 1] = '1'
    end
  end
  if #record > 0 then
    call_chunked('HSET', cur_dedup, record)
    redis.call('EXPIRE', cur_dedup, ttl)
  end
else
  for j = 1, #fresh do flags[fresh[j]] = FLAG.applied end
end

-- 2. Gather the applied events' updates in Lua tables.
local deltas = {}      -- key -> field -> increment (a double, exact: see add)
local maxima = {}      -- period key -> field -> largest micro-unit integer string seen
local latest = {}      -- period key -> meter -> {ts, value}
local members = {}     -- set key -> list of members
local week_bumps = {}  -- week key -> week -> count

local function sub_table(t, key)
  local s = t[key]
  if not s then s = {}; t[key] = s end
  return s
end

-- a >= b for non-negative integer strings without leading zeros
local function int_ge(a, b)
  if #a ~= #b then return #a > #b end
  return a >= b
end

-- Values of more than 15 digits go straight to HINCRBY; gathered deltas are flushed there
-- before they reach 2^52, so each stays exact as a double and below 2^53 once added to a
-- stored value of at most 15 digits.
local LIMIT = 4503599627370496
local function add(key, field, arg_or_n)
  if type(arg_or_n) == 'string' and #arg_or_n > 15 then
    redis.call('HINCRBY', key, field, arg_or_n)
    return
  end
  local t = sub_table(deltas, key)
  local v = (t[field] or 0) + tonumber(arg_or_n)
  if v >= LIMIT then
    redis.call('HINCRBY', key, field, string.format('%d', v))
    v = 0
  end
  t[field] = v
end

for i = 1, #events do
  if flags[i] == FLAG.applied then
    local ev = events[i]
    local period, week, ts, ups = ev[3], ev[4], ev[5], ev[6]
    local pkey = base .. K.period .. period
    for _, u in ipairs(ups) do
      local meter, op, arg = u[1], u[2], u[3]
      add(pkey, meter .. ':n', 1)
      if weekly[meter] then
        local wb = sub_table(week_bumps, base .. K.weeks .. meter)
        wb[week] = (wb[week] or 0) + 1
      end
      if op == OP.count then
        add(pkey, meter .. ':v', 1)
        add(life_key, meter, 1)
      elseif op == OP.sum then
        add(pkey, meter .. ':v', arg)
        add(life_key, meter, arg)
      else
        add(life_key, meter, 1)
        if op == OP.unique_count then
          local m = sub_table(members, base .. K.unique .. meter .. ':' .. period)
          m[#m + 1] = arg
        elseif op == OP.max then
          local t = sub_table(maxima, pkey)
          local field = meter .. ':v'
          if not t[field] or not int_ge(t[field], arg) then t[field] = arg end
        elseif op == OP.latest then
          -- latest by event time: an older event arriving later does not override a newer one;
          -- a tie goes to the later record
          local t = sub_table(latest, pkey)
          local cur = t[meter]
          if not cur or ts >= cur[1] then t[meter] = {ts, arg} end
        end
      end
    end
  end
end

-- 3. Write. A hash that is also read back is read once, updated in Lua, written with one
-- HSET and returned as updated.

local function flatten(values)
  local flat = {}
  for f, v in pairs(values) do
    flat[#flat + 1] = f
    flat[#flat + 1] = v
  end
  return flat
end

-- Reads `key`, applies its gathered deltas, maxima and latest values, writes the changed
-- fields with one HSET; returns the hash as it now stands (field -> string).
local updated = {}
local function update_hash(key)
  updated[key] = true
  local flat = redis.call('HGETALL', key)
  local values = {}
  for j = 1, #flat, 2 do values[flat[j]] = flat[j + 1] end
  local changed = {}
  for field, n in pairs(deltas[key] or {}) do
    if n ~= 0 then
      local cur = values[field]
      if cur and #cur > 15 then
        -- beyond exact doubles: let Redis add (int64) and read the result back as a string
        redis.call('HINCRBY', key, field, string.format('%d', n))
        values[field] = redis.call('HGET', key, field)
      else
        local v = string.format('%d', (cur and tonumber(cur) or 0) + n)
        values[field] = v
        changed[#changed + 1] = field
        changed[#changed + 1] = v
      end
    end
  end
  for field, v in pairs(maxima[key] or {}) do
    local cur = values[field]
    if not cur or not int_ge(cur, v) then
      values[field] = v
      changed[#changed + 1] = field
      changed[#changed + 1] = v
    end
  end
  for meter, tv in pairs(latest[key] or {}) do
    local tfield = meter .. ':t'
    if tv[1] >= tonumber(values[tfield] or '-1') then
      local t = string.format('%d', tv[1])
      values[meter .. ':v'], values[tfield] = tv[2], t
      changed[#changed + 1] = meter .. ':v'
      changed[#changed + 1] = tv[2]
      changed[#changed + 1] = tfield
      changed[#changed + 1] = t
    end
  end
  if #changed > 0 then call_chunked('HSET', key, changed) end
  return values
end

for skey, m in pairs(members) do call_chunked('SADD', skey, m) end

for wkey, bumps in pairs(week_bumps) do
  local created = false
  for week, n in pairs(bumps) do
    -- a week field just created: the only moment the 12-week window can overflow
    if redis.call('HINCRBY', wkey, week, n) == n then created = true end
  end
  if created and redis.call('HLEN', wkey) > 12 then
    for _, w in ipairs(redis.call('HKEYS', wkey)) do
      if w < week_cutoff then redis.call('HDEL', wkey, w) end
    end
  end
end

if max_offset > watermark then
  redis.call('HSET', wm_key, wm_field, string.format('%d', max_offset))
end

-- 4. Read back what trigger evaluation needs.
local periods = {}
for _, period in ipairs(req.periods) do
  local values = update_hash(base .. K.period .. period)
  local uniq = {}
  for _, meter in ipairs(req.uniq) do
    uniq[#uniq + 1] = meter
    uniq[#uniq + 1] = redis.call('SCARD', base .. K.unique .. meter .. ':' .. period)
  end
  periods[#periods + 1] = {period, flatten(values), uniq}
end
local life = update_hash(life_key)
-- The planner puts each event's period in req.periods; should a caller not, its updates are
-- still written (just not read back) rather than lost.
for _, gathered in ipairs({deltas, maxima, latest}) do
  for key, _ in pairs(gathered) do
    if not updated[key] then update_hash(key) end
  end
end
local weeks = {}
for _, meter in ipairs(req.weeks) do
  weeks[#weeks + 1] = {meter, redis.call('HGETALL', base .. K.weeks .. meter)}
end
local marks = {}
if #req.marks > 0 then marks = hmget(base .. K.fired, req.marks) end
-- HMGET's missing fields (false) become explicit empty strings
for i = 1, #req.marks do if not marks[i] then marks[i] = '' end end

return {table.concat(flags), redis.call('HGETALL', KEYS[1]), periods,
        flatten(life), weeks, marks, redis.call('LRANGE', base .. K.outbox, 0, -1)}
