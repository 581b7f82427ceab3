-- Adds spend kept outside the store (a single daemon's budgets.state_file)
-- to the books: ARGV[3..], per scope: name, the day's amount, the month's
-- amount (the day's included). KEYS[8], KEYS[9]: what imports have brought
-- in for the day and for the month, by scope; only what exceeds that is
-- added, so the same file imported again adds nothing and a file that has
-- grown since adds the difference. Returns, per scope, the day's and the
-- month's amounts added.
local out = {}
for i = 3, #ARGV, 3 do
  local scope, day, month = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local add_day = math.max(0, day - tonumber(redis.call('HGET', KEYS[8], scope) or '0'))
  local add_month = math.max(0, month - tonumber(redis.call('HGET', KEYS[9], scope) or '0'))
  charge({scope}, add_day)
  charge({scope}, math.max(0, add_month - add_day), {KEYS[7]})
  if add_day > 0 then
    redis.call('HSET', KEYS[8], scope, int(day))
  end
  if add_month > 0 then
    redis.call('HSET', KEYS[9], scope, int(month))
  end
  out[#out + 1] = int(add_day)
  out[#out + 1] = int(math.max(add_day, add_month))
end
redis.call('EXPIRE', KEYS[8], ARGV[1])
redis.call('EXPIRE', KEYS[9], ARGV[2])
return out
