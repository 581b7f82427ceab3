-- Extends the holds of calls still running on a live replica: ARGV[3] the
-- new time to live in ms, then call ids. Returns how many were renewed.
local now = now_ms()
purge(now)
local renewed = 0
for i = 4, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[3], 'XX', 'CH', int(now + tonumber(ARGV[3])), ARGV[i])
end
return renewed
