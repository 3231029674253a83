-- Apply one batch of one account's usage events atomically, then read back the state that
-- trigger evaluation needs. One call per account per batch (never per event).
--
-- KEYS[1]  the account's subscription key (<base>sub): routes the call on Redis Cluster; every
--          other key is derived from ARGV[1] and shares the account's hash tag.
-- ARGV[1]  base "<prefix>:{<account>}:"
-- ARGV[2]  watermark field "<topic>/<partition>"
-- ARGV[3]  dedup bucket index (floor(now / window)); ARGV[4] bucket TTL seconds; "0" = no dedup
-- ARGV[5]  oldest ISO week to keep in the weekly counts ("2026-W35")
-- ARGV[6]  JSON request: {"ev": [[offset, period, week, ts_ms, [[meter, op, arg], ...]], ...],
--                         "periods": [...], "uniq": [...], "weeks": [...], "marks": [...]}
-- ARGV[7]  the meters whose ISO-week counts are kept, space-separated (the power-user
--          meters: nothing else reads weekly counts)
-- ARGV[8]  the events' (source, id) digests, DIGEST bytes each, back to back, in event order
--          (binary: never JSON)
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
-- number of calls per account (about 15), not per event: the watermark and the dedup
-- buckets' field counts with one HMGET, each bucket's fields with one HMGET, the new digests
-- with one HSET; each period hash and the lifetime hash are read once (the read-back needs
-- them anyway), updated in Lua and written with one HSET.
--
-- Dedup marks, dense (issue 14): one hash per account and bucket (K.dedup .. bucket); its
-- fields "0".."F-1" each hold DIGEST-byte digests back to back. The fields are a linear hash:
-- a digest's field is its first three bytes modulo 2^(L+1), or modulo 2^L when that field does
-- not exist yet (L = floor(log2 F)); each time a field grows past SPLIT bytes the next field
-- in turn splits, so fields stay a few hundred bytes and a lookup is one C-level string.find
-- in one small string. F of the current and the previous bucket is kept beside the
-- watermarks (field "dc:<bucket>" of K.wm: read with the watermark, no HLEN). About DIGEST
-- bytes per id plus a share of its field's overhead, against ~60 for a hash field per id.
--
-- Upgrade: the earlier layout kept one field per id (base64 of the digest) in K.dedup_v1 ..
-- bucket. Those hashes are never written again and expire two windows after their last write;
-- until then an id in them is still a duplicate: one EXISTS per call looks for them, and only
-- when one exists are they read (HMGET of the base64 digests). Remove that check once every
-- deployment has run this script for two dedup windows (README, "Redis keys").
--
-- Returns {flags, sub, periods, life, weeks, marks, outbox}; flags has one char per event:
-- FLAG.applied, FLAG.duplicate (source, id) or FLAG.redelivered (offset already applied).
--
-- K (key suffixes), OP (meter update ops), FLAG and DIGEST come from the preamble that
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
local blob = ARGV[8] or ''
local CHUNK = 3000 -- arguments per unpack(): Lua's C stack holds 8000
local SPLIT = DIGEST * 64 -- bytes past which a dedup field makes the next one split

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

-- the first three bytes of a digest, as a number: its place in the linear hash
local function prefix(d)
  local a, b, c = string.byte(d, 1, 3)
  return (a * 256 + b) * 256 + c
end

-- the field of a prefix in a bucket of f fields (f >= 1)
local function field_of(h, f)
  if f <= 1 then return 0 end
  local size = 1
  while size * 2 <= f do size = size * 2 end -- 2^L <= f < 2^(L+1)
  local i = h % (size * 2)
  if i >= f then i = h % size end
  return i
end

-- whether digest d is one of the digests packed in field value v (at a DIGEST-aligned place)
local function has(v, d)
  if not v then return false end
  local init = 1
  while true do
    local i = string.find(v, d, init, true)
    if not i then return false end
    if (i - 1) % DIGEST == 0 then return true end
    init = i + 1
  end
end

-- One bucket: its field count and the fields the digests `hs` fall in (index -> value).
local function load(key, count, hs)
  local f = tonumber(count or '0')
  local at, names, seen, values = {}, {}, {}, {}
  if f > 0 then
    for j = 1, #hs do
      local i = field_of(hs[j], f)
      at[j] = i
      if not seen[i] then
        seen[i] = true
        names[#names + 1] = tostring(i)
      end
    end
    local got = hmget(key, names)
    for k = 1, #names do values[tonumber(names[k])] = got[k] or nil end
  end
  return {key = key, f = f, at = at, values = values}
end

local function found_in(b, j, d)
  return b.f > 0 and has(b.values[b.at[j]], d)
end

-- base64 of a digest: its field name in the earlier one-field-per-id layout
local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function b64(d)
  local out = {}
  for p = 1, #d, 3 do
    local a, b, c = string.byte(d, p, p + 2)
    local n = (a * 256 + b) * 256 + c
    for _, k in ipairs({math.floor(n / 262144), math.floor(n / 4096) % 64, math.floor(n / 64) % 64, n % 64}) do
      out[#out + 1] = string.sub(B64, k + 1, k + 1)
    end
  end
  return table.concat(out)
end

-- Appends the digests `add` (field index -> list) to bucket `b`, splitting grown fields, and
-- writes the changed fields with one HSET; returns the bucket's new field count.
local function record(b, add)
  local f, values = b.f, b.values
  if f == 0 then f = 1 end
  local changed, splits = {}, 0
  for i, t in pairs(add) do
    local v = (values[i] or '') .. table.concat(t)
    values[i] = v
    changed[i] = true
    splits = splits + math.floor(#v / SPLIT)
  end
  if splits > 64 then splits = 64 end
  for _ = 1, splits do
    -- split field s = f - 2^L into s and f (by bit L of the prefix)
    local size = 1
    while size * 2 <= f do size = size * 2 end
    local s = f - size
    local v = values[s]
    if v == nil then v = redis.call('HGET', b.key, tostring(s)) or '' end
    local keep, move = {}, {}
    for p = 1, #v, DIGEST do
      local d = string.sub(v, p, p + DIGEST - 1)
      if prefix(d) % (size * 2) == s then keep[#keep + 1] = d else move[#move + 1] = d end
    end
    values[s], values[f] = table.concat(keep), table.concat(move)
    changed[s], changed[f] = true, true
    f = f + 1
  end
  local flat = {}
  for i, _ in pairs(changed) do
    flat[#flat + 1] = tostring(i)
    flat[#flat + 1] = values[i]
  end
  call_chunked('HSET', b.key, flat)
  return f
end

-- 1. Offsets, then (source, id) digests. The watermark and the buckets' field counts in one read.
local bucket_s, prev_s = ARGV[3], tostring(bucket - 1) -- key text, converted once
local cur_count, prev_count = 'dc:' .. bucket_s, 'dc:' .. prev_s
local wm_now = redis.call('HMGET', wm_key, wm_field, cur_count, prev_count)
local watermark = tonumber(wm_now[1] or '-1')
local wm_set = {} -- fields of the watermark hash to write (one HSET at the end)
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
  local digests, hs = {}, {}
  for j = 1, #fresh do
    local i = fresh[j]
    local d = string.sub(blob, (i - 1) * DIGEST + 1, i * DIGEST)
    digests[j] = d
    hs[j] = prefix(d)
  end
  local cur = load(base .. K.dedup .. bucket_s, wm_now[2], hs)
  local prev = load(base .. K.dedup .. prev_s, wm_now[3], hs)
  -- the earlier layout, while its hashes can still exist (see Upgrade above)
  local old_cur, old_prev = base .. K.dedup_v1 .. bucket_s, base .. K.dedup_v1 .. prev_s
  local in_old_cur, in_old_prev = {}, {}
  if redis.call('EXISTS', old_cur, old_prev) > 0 then
    local names = {}
    for j = 1, #fresh do names[j] = b64(digests[j]) end
    in_old_cur, in_old_prev = hmget(old_cur, names), hmget(old_prev, names)
  end
  local seen = {}
  local add, any = {}, false
  local f = cur.f > 0 and cur.f or 1
  for j = 1, #fresh do
    local d = digests[j]
    if seen[d] or found_in(cur, j, d) or found_in(prev, j, d) or in_old_cur[j] or in_old_prev[j] then
      flags[fresh[j]] = FLAG.duplicate
    else
      seen[d] = true
      flags[fresh[j]] = FLAG.applied
      local i = field_of(hs[j], f)
      local t = add[i]
      if not t then t = {}; add[i] = t end
      t[#t + 1] = d
      any = true
    end
  end
  if any then
    local count = record(cur, add)
    if cur.f == 0 then
      redis.call('EXPIRE', cur.key, ttl)
      -- a new bucket (once per account and window): the field counts of buckets whose keys
      -- have expired go. A count stays while its bucket lives, so a caller whose clock is
      -- behind (another member's, or a step back) still finds the digests in it.
      for _, name in ipairs(redis.call('HKEYS', wm_key)) do
        if string.sub(name, 1, 3) == 'dc:' and name ~= cur_count and name ~= prev_count
          and redis.call('EXISTS', base .. K.dedup .. string.sub(name, 4)) == 0 then
          redis.call('HDEL', wm_key, name)
        end
      end
    end
    if count ~= cur.f then
      wm_set[#wm_set + 1] = cur_count
      wm_set[#wm_set + 1] = tostring(count)
    end
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

-- key and field names built once per call, not once per event (a concatenation makes and
-- interns a new string; a table lookup of an interned one does not)
local pkey_of, nfield, vfield = {}, {}, {}
for i = 1, #events do
  if flags[i] == FLAG.applied then
    local ev = events[i]
    local period, week, ts, ups = ev[2], ev[3], ev[4], ev[5]
    local pkey = pkey_of[period]
    if not pkey then
      pkey = base .. K.period .. period
      pkey_of[period] = pkey
    end
    for _, u in ipairs(ups) do
      local meter, op, arg = u[1], u[2], u[3]
      local nf, vf = nfield[meter], vfield[meter]
      if not nf then
        nf, vf = meter .. ':n', meter .. ':v'
        nfield[meter], vfield[meter] = nf, vf
      end
      add(pkey, nf, 1)
      if weekly[meter] then
        local wb = sub_table(week_bumps, base .. K.weeks .. meter)
        wb[week] = (wb[week] or 0) + 1
      end
      if op == OP.count then
        add(pkey, vf, 1)
        add(life_key, meter, 1)
      elseif op == OP.sum then
        add(pkey, vf, arg)
        add(life_key, meter, arg)
      else
        add(life_key, meter, 1)
        if op == OP.unique_count then
          local m = sub_table(members, base .. K.unique .. meter .. ':' .. period)
          m[#m + 1] = arg
        elseif op == OP.max then
          local t = sub_table(maxima, pkey)
          if not t[vf] or not int_ge(t[vf], arg) then t[vf] = arg end
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

local updated = {} -- keys update_hash has written

-- sets field to v in a flat hash whose value positions `at` knows (appended when new)
local function put(flat, at, field, v)
  local i = at[field]
  if i then
    flat[i] = v
  else
    flat[#flat + 1] = field
    flat[#flat + 1] = v
    at[field] = #flat
  end
end

-- Reads `key`, applies its gathered deltas, maxima and latest values, writes the changed
-- fields with one HSET; returns the hash as it now stands, flat (field, value, ...): the
-- HGETALL reply patched in place, so the read-back needs no second table.
local function update_hash(key)
  updated[key] = true
  local flat = redis.call('HGETALL', key)
  local at = {} -- field -> index of its value in flat
  for j = 1, #flat, 2 do at[flat[j]] = j + 1 end
  local changed = {}
  for field, n in pairs(deltas[key] or {}) do
    if n ~= 0 then
      local i = at[field]
      local cur = i and flat[i]
      if cur and #cur > 15 then
        -- beyond exact doubles: let Redis add (int64) and read the result back as a string
        redis.call('HINCRBY', key, field, string.format('%d', n))
        flat[i] = redis.call('HGET', key, field)
      else
        local v = string.format('%d', (cur and tonumber(cur) or 0) + n)
        put(flat, at, field, v)
        changed[#changed + 1] = field
        changed[#changed + 1] = v
      end
    end
  end
  for field, v in pairs(maxima[key] or {}) do
    local i = at[field]
    local cur = i and flat[i]
    if not cur or not int_ge(cur, v) then
      put(flat, at, field, v)
      changed[#changed + 1] = field
      changed[#changed + 1] = v
    end
  end
  for meter, tv in pairs(latest[key] or {}) do
    local tfield = meter .. ':t'
    local i = at[tfield]
    if tv[1] >= tonumber(i and flat[i] or '-1') then
      local t = string.format('%d', tv[1])
      put(flat, at, meter .. ':v', tv[2])
      put(flat, at, tfield, t)
      changed[#changed + 1] = meter .. ':v'
      changed[#changed + 1] = tv[2]
      changed[#changed + 1] = tfield
      changed[#changed + 1] = t
    end
  end
  if #changed > 0 then call_chunked('HSET', key, changed) end
  return flat
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
  wm_set[#wm_set + 1] = wm_field
  wm_set[#wm_set + 1] = string.format('%d', max_offset)
end
if #wm_set > 0 then redis.call('HSET', wm_key, unpack(wm_set)) end

-- 4. Read back what trigger evaluation needs.
local periods = {}
for _, period in ipairs(req.periods) do
  local values = update_hash(base .. K.period .. period)
  local uniq = {}
  for _, meter in ipairs(req.uniq) do
    uniq[#uniq + 1] = meter
    uniq[#uniq + 1] = redis.call('SCARD', base .. K.unique .. meter .. ':' .. period)
  end
  periods[#periods + 1] = {period, values, uniq}
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
        life, weeks, marks, redis.call('LRANGE', base .. K.outbox, 0, -1)}
