-- Adds spend kept outside the store (a single daemon's budgets.state_file)
-- to the books, once: ARGV[3] the import's id (a digest of what is
-- imported), ARGV[4] when it ran, then per scope: name, the day's amount,
-- the month's amount (the day's included). KEYS[8]: the imports made (id ->
-- when). Returns when the import was first made if it was, else ''.
local done = redis.call('HGET', KEYS[8], ARGV[3])
if done then
  return done
end
for i = 5, #ARGV, 3 do
  local scope, day, month = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  charge({scope}, day)
  charge({scope}, month - day, {KEYS[7]})
end
redis.call('HSET', KEYS[8], ARGV[3], ARGV[4])
return ''
