-- The order's publish failed: give its units back, unless a retry with the same key
-- has published it meanwhile. While the partition rebuilds, nothing moves: the
-- rebuild counts the reservation as held, and the reconciler's sweep releases it once
-- the partition is whole.
if rebuilding() then return 0 end
local st = redis.call('HGET', k('resv', ARGV[2]), ARGV[3])
if st and string.sub(st, 1, 1) == 'R' then release(ARGV[2], ARGV[3], st) return 1 end
return 0
