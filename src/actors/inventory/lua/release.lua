-- The order's publish failed: give its units back, unless a retry with the same key
-- has published it meanwhile.
local st = redis.call('HGET', k('resv', ARGV[2]), ARGV[3])
if st and string.sub(st, 1, 1) == 'R' then release(ARGV[2], ARGV[3], st) return 1 end
return 0
