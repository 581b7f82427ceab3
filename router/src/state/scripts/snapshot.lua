-- What is held and spent, per scope, for pacing and the metrics.
local now = now_ms()
purge(now)
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[6]), redis.call('HGETALL', KEYS[7])}
