-- Shared by the budget scripts. KEYS: 1 held (scope -> nano-USD held by
-- calls in flight), 2 holds (call id -> "amount\tscope\t..."), 3 deadlines
-- (call id -> expiry ms), 4 done (call id -> ms it was settled or expired),
-- 5 expired (call id -> its hold, charged at expiry), 6 the day's spend,
-- 7 the month's spend (scope -> nano-USD). ARGV[1], ARGV[2]: the day's and
-- the month's keys' time to live, in seconds. Amounts are integers, passed
-- to Redis as decimal strings (Lua's default number format would write large
-- ones with an exponent).

local function int(x)
  return string.format('%d', x)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function parse_hold(text)
  local amount, scopes = nil, {}
  for field in string.gmatch(text, '[^\t]+') do
    if amount == nil then amount = tonumber(field) else scopes[#scopes + 1] = field end
  end
  return amount, scopes
end

-- Adds `amount` (possibly negative) to each scope's spend in `keys` (by
-- default the day's and the month's), never below zero.
local function charge(scopes, amount, keys)
  if amount == 0 then return end
  keys = keys or {KEYS[6], KEYS[7]}
  for _, scope in ipairs(scopes) do
    for _, key in ipairs(keys) do
      if redis.call('HINCRBY', key, scope, int(amount)) < 0 then
        redis.call('HSET', key, scope, '0')
      end
    end
  end
  redis.call('EXPIRE', KEYS[6], ARGV[1])
  redis.call('EXPIRE', KEYS[7], ARGV[2])
end

local function release(scopes, amount)
  for _, scope in ipairs(scopes) do
    if redis.call('HINCRBY', KEYS[1], scope, int(-amount)) <= 0 then
      redis.call('HDEL', KEYS[1], scope)
    end
  end
end

-- Holds whose replica stopped renewing them (it died mid-call) are charged
-- their worst case, as a call that ends without a known cost is; a later
-- settlement of one corrects the charge (its id is remembered a day, in
-- `done` and `expired`). Bounded work per call: every script call purges a
-- little.
local function purge(now)
  local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 64)
  for _, id in ipairs(ids) do
    local hold = redis.call('HGET', KEYS[2], id)
    if hold then
      local amount, scopes = parse_hold(hold)
      release(scopes, amount)
      charge(scopes, amount)
      -- With the day and month it was charged to, for a later correction.
      redis.call('HSET', KEYS[5], id, hold .. '\n' .. KEYS[6] .. '\n' .. KEYS[7])
      redis.call('ZADD', KEYS[4], now, id)
      redis.call('HDEL', KEYS[2], id)
    end
    redis.call('ZREM', KEYS[3], id)
  end
  local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - 86400000, 'LIMIT', 0, 256)
  for _, id in ipairs(old) do
    redis.call('HDEL', KEYS[5], id)
    redis.call('ZREM', KEYS[4], id)
  end
end
