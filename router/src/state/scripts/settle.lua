-- Records a call's real cost: ARGV[3] call id, ARGV[4] cost, ARGV[5]
-- 'held' when the store granted the call's hold, 'unheld' when it may not
-- have (either followed by ':past' for a settlement of an earlier day,
-- replayed from a journal: it purges nothing, as expired holds are charged
-- to the day they expire) (admitted from a replica's allowance while the store was
-- unreachable, its hold perhaps run but unanswered, or a cost recorded
-- without a hold), then the call's scopes. Idempotent: a call is charged
-- once. A held call's id is gone with its hold, so settling it again finds
-- nothing; the ids of unheld calls and of expired holds are remembered a day
-- (`done`), few as they are, so that their settlement, replayed, counts once.
-- Returns 1 settled a hold, 2 corrected an expired hold's charge, 3 charged
-- a call the store never held, 0 already settled.
local now = now_ms()
local mode = ARGV[5]
if not string.find(mode, ':past', 1, true) then
  purge(now)
end
local id, cost, unheld = ARGV[3], tonumber(ARGV[4]), string.find(mode, 'unheld', 1, true) == 1
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
    -- The correction goes to the periods the worst case was charged to;
    -- one of another period than this settlement's is left charged (the
    -- safe side).
    local hold, charged_day, charged_month = string.match(expired, '^([^\n]*)\n([^\n]*)\n([^\n]*)$')
    local amount, scopes = parse_hold(hold or expired)
    local keys = {}
    if charged_day == KEYS[6] then keys[#keys + 1] = KEYS[6] end
    if charged_month == KEYS[7] then keys[#keys + 1] = KEYS[7] end
    if #keys > 0 then
      charge(scopes, cost - amount, keys)
    end
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
