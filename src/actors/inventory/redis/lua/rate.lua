local rk = k('rl', ARGV[2])
local c = redis.call('INCR', rk)
if c == 1 then redis.call('PEXPIRE', rk, ARGV[3]) end
local ttl = redis.call('PTTL', rk)
if ttl < 0 then redis.call('PEXPIRE', rk, ARGV[3]) ttl = tonumber(ARGV[3]) end
return {c, ttl}
