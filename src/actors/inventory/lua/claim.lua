local rk = k('resv', ARGV[2])
if redis.call('HDEL', rk, ARGV[3]) == 1 then return 1 end
if redis.call('SISMEMBER', k('rel', ARGV[2]), ARGV[3]) == 1 then return 0 end
return 1
