local rk = k('resv', ARGV[2])
local st = redis.call('HGET', rk, ARGV[3])
if st and string.sub(st, 1, 1) == 'R' then redis.call('HSET', rk, ARGV[3], 'P' .. string.sub(st, 2)) end
return 0
