-- A conversation's tier only rises: KEYS[1] where its previous turn was
-- remembered, KEYS[2] where this one is; ARGV[1] this turn's tier, ARGV[2]
-- how long it is remembered (ms). Returns the tier remembered.
local tier = tonumber(ARGV[1])
for i = 1, 2 do
  local seen = tonumber(redis.call('GET', KEYS[i]) or '-1')
  if seen > tier then tier = seen end
end
redis.call('SET', KEYS[2], tier, 'PX', ARGV[2])
return tier
