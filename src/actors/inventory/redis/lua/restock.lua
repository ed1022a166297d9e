-- A cancelled order's units go back to its sale, once per order. An order whose
-- reservation was released before it was persisted gave them back already.
-- Answers 'returned', 'already' (nothing to return) or 'rebuilding' (the rebuild counts the
-- cancelled orders of the shards as returned, so nothing may be added meanwhile).
local pid, oid, uid, q = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if rebuilding() then return 'rebuilding' end
if redis.call('SISMEMBER', k('rel', pid), oid) == 1 then return 'already' end
if redis.call('SADD', k('restocked', pid), oid) == 0 then return 'already' end
local ends = sale_end(pid)
keep(k('restocked', pid), ends)
redis.call('HINCRBY', k('sale', pid), 'remaining', q)
redis.call('DECRBY', k('bought', pid, uid), q)
keep(k('bought', pid, uid), ends)
return 'returned'
