-- Rebuilds one sale after the partition lost its state, from durable truth: the
-- sale's persisted orders in the shards (ARGV from 8: oid, uid, qty, key, s(old) or
-- c(ancelled), ...) and the orders of that era claimed since (the `counted` hash).
-- Sold units, each buyer's units and the orders' idempotency keys come back; what was
-- sold is kept. A cancelled order's units are back in the sale: it is remembered as
-- restocked, so that no later restock returns them again.
-- ARGV: prefix, pid, stock, limit, starts, ends, ttl, orders...
-- Answers the units sold, or -1 when the partition is no longer rebuilding: another
-- pod's reconciler finished the rebuild and the sale has reopened, so this snapshot of
-- the shards is stale and must not overwrite what was sold since.
if not rebuilding() then return -1 end
local pid, stock, ends = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[6])
local ck = k('counted', pid)
local sold, per, seen = 0, {}, {}
local function count(oid, uid, q, key)
  if seen[oid] then return end
  seen[oid] = true
  sold = sold + q
  per[uid] = (per[uid] or 0) + q
  redis.call('SET', k('idem', pid, uid, key), oid, 'EX', ARGV[7])
end
local rk = k('restocked', pid)
for i = 8, #ARGV, 5 do
  if ARGV[i + 4] == 'c' then
    seen[ARGV[i]] = true
    redis.call('SADD', rk, ARGV[i])
  end
end
for i = 8, #ARGV, 5 do
  if ARGV[i + 4] == 's' then
    count(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3])
    redis.call('HSETNX', ck, ARGV[i], ARGV[i + 2] .. '|' .. ARGV[i + 1] .. '|' .. ARGV[i + 3])
  end
end
keep(rk, ends)
local all = redis.call('HGETALL', ck)
for i = 1, #all, 2 do
  local q, u, key = string.match(all[i + 1], '^(%d+)|([^|]*)|(.*)$')
  count(all[i], u, tonumber(q), key)
end
keep(ck, ends)
redis.call('HSET', k('sale', pid), 'stock', stock, 'remaining', stock - sold, 'limit', ARGV[4], 'starts', ARGV[5], 'ends', ARGV[6], 'pending', scan_pending(pid))
redis.call('SADD', k('sales'), pid)
for u, n in pairs(per) do
  redis.call('SET', k('bought', pid, u), n)
  keep(k('bought', pid, u), ends)
end
return sold
