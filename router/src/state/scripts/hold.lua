-- Admits a remote call: ARGV[3] call id, ARGV[4] its worst-case cost,
-- ARGV[5] the hold's time to live in ms, then per scope: name, day limit,
-- month limit (-1: none). Refused, with nothing written, unless for every
-- scope and period spent + held < limit and spent + held + amount <= limit. Returns {1} when held
-- (or already held: a retry), {0, scope, period, used, limit} when refused.
local now = now_ms()
purge(now)
local id, amount = ARGV[3], tonumber(ARGV[4])
if redis.call('HEXISTS', KEYS[2], id) == 1 or redis.call('ZSCORE', KEYS[4], id) then
  return {1}
end
local scopes = {}
for i = 6, #ARGV, 3 do
  local scope = ARGV[i]
  local held = tonumber(redis.call('HGET', KEYS[1], scope) or '0')
  local limits = {{'day', KEYS[6], tonumber(ARGV[i + 1])}, {'month', KEYS[7], tonumber(ARGV[i + 2])}}
  for _, limit in ipairs(limits) do
    if limit[3] >= 0 then
      local used = tonumber(redis.call('HGET', limit[2], scope) or '0') + held
      if used >= limit[3] or used + amount > limit[3] then
        return {0, scope, limit[1], int(used), int(limit[3])}
      end
    end
  end
  scopes[#scopes + 1] = scope
end
for _, scope in ipairs(scopes) do
  redis.call('HINCRBY', KEYS[1], scope, ARGV[4])
end
redis.call('HSET', KEYS[2], id, ARGV[4] .. '\t' .. table.concat(scopes, '\t'))
redis.call('ZADD', KEYS[3], int(now + tonumber(ARGV[5])), id)
return {1}
