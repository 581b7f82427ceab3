-- Rate limits by the generic cell rate algorithm: each key holds the
-- theoretical arrival time (TAT) of its limit, in microseconds (whole ones
-- lose less than a microsecond a request; a millisecond would overcharge
-- small requests under large limits). ARGV per key: limit (per period),
-- period in ms, cost of this request. Either every limit admits the request
-- and all are charged, or none is. Returns {allowed, retry_ms, then per key:
-- remaining, ms until back to full}.
local function int(x)
  return string.format('%d', x)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local allowed, retry, state = 1, 0, {}
for i, key in ipairs(KEYS) do
  local limit, period, cost = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]) * 1000, tonumber(ARGV[3 * i])
  local interval = period / limit
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local new = tat + cost * interval
  if new - now > period then
    allowed = 0
    if new - now - period > retry then retry = new - now - period end
  end
  state[i] = {tat, new, interval, period}
end
local out = {allowed, int(math.ceil(retry / 1000))}
for i, key in ipairs(KEYS) do
  local tat, new, interval, period = unpack(state[i])
  local until_ = tat
  if allowed == 1 then
    until_ = new
    if new > now then
      redis.call('SET', key, int(math.floor(new)), 'PX', int(math.ceil((new - now) / 1000)))
    end
  end
  out[#out + 1] = int(math.max(0, math.floor((period - (until_ - now)) / interval + 1e-9)))
  out[#out + 1] = int(math.ceil((until_ - now) / 1000))
end
return out
