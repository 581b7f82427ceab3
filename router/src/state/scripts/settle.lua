-- Records a call's real cost: ARGV[3] call id, ARGV[4] cost, ARGV[5]
-- 'held' when the store granted the call's hold, 'unheld' when it may not
-- have (admitted from a replica's allowance while the store was
-- unreachable, its hold perhaps run but unanswered, or a cost recorded
-- without a hold), then the call's scopes. Idempotent: a call is charged
-- once. A held call's id is gone with its hold, so settling it again finds
-- nothing; the ids of unheld calls and of expired holds are remembered a day
-- (`done`), few as they are, so that their settlement, replayed, counts once.
-- Returns 1 settled a hold, 2 corrected an expired hold's charge, 3 charged
-- a call the store never held, 0 already settled.
local now = now_ms()
purge(now)
local id, cost, unheld = ARGV[3], tonumber(ARGV[4]), ARGV[5] == 'unheld'
local hold = redis.call('HGET', KEYS[2], id)
if hold then
  local amount, scopes = parse_hold(hold)
  release(scopes, amount)
  charge(scopes, cost)
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  if unheld then
    redis.call('ZADD', KEYS[4], now, id)
  end
  return 1
end
if redis.call('ZSCORE', KEYS[4], id) then
  local expired = redis.call('HGET', KEYS[5], id)
  if expired then
    local amount, scopes = parse_hold(expired)
    charge(scopes, cost - amount)
    redis.call('HDEL', KEYS[5], id)
    return 2
  end
  return 0
end
if not unheld then
  return 0
end
local scopes = {}
for i = 6, #ARGV do
  scopes[#scopes + 1] = ARGV[i]
end
charge(scopes, cost)
redis.call('ZADD', KEYS[4], now, id)
return 3
