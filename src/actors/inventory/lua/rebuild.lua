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
local rk = k('restocked', pid)
local function count(oid, uid, q, key)
  if seen[oid] then return end
  seen[oid] = true
  -- A cancellation is final: an order remembered as returned is never counted as
  -- sold, even by a snapshot of the shards taken before it was cancelled (the
  -- reconcilers of several pods may rebuild at once).
  if redis.call('SISMEMBER', rk, oid) == 1 then return end
  sold = sold + q
  per[uid] = (per[uid] or 0) + q
  redis.call('SET', k('idem', pid, uid, key), oid, 'EX', ARGV[7])
end
for i = 8, #ARGV, 5 do
  -- An order in the shards was claimed: a reservation of it kept by a partial loss
  -- holds nothing any more.
  redis.call('HDEL', k('resv', pid), ARGV[i])
  redis.call('ZREM', k('unpub', pid), ARGV[i])
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
-- Reservations the partition still holds (a partial loss keeps some: a promoted
-- replica, a server back without its last second) hold their units, and count in
-- their buyers' limits, until they are claimed or released.
local pending = 0
if redis.call('EXISTS', k('resv', pid)) == 1 then
  for _, st in ipairs(redis.call('HVALS', k('resv', pid))) do
    local _, _, q, u = parse(st)
    pending = pending + q
    per[u] = (per[u] or 0) + q
  end
end
redis.call('HSET', k('sale', pid), 'stock', stock, 'remaining', stock - sold - pending, 'limit', ARGV[4], 'starts', ARGV[5], 'ends', ARGV[6], 'pending', pending)
redis.call('SADD', k('sales'), pid)
for u, n in pairs(per) do
  redis.call('SET', k('bought', pid, u), n)
  keep(k('bought', pid, u), ends)
end
return sold
