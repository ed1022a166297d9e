-- Rebuilds the sales of a partition that lost its state, a bounded step at a time,
-- from durable truth: each sale's persisted orders in the shards and the orders
-- claimed while it rebuilds (`rbclaims`, kept by claim.lua). One reconciler owns the
-- rebuild, under a lease that every one of its steps renews; the steps of any other
-- are refused, and a new owner starts from scratch. Per sale, the owner feeds the
-- persisted orders in chunks (`orders`), then its buyers' units (`buyers`), then
-- the sale itself (`sale`), which adds what was claimed meanwhile and the
-- reservations still held; `finish` reopens the partition.
-- ARGV: prefix, owner, since (the loss the rebuild is of), lease_ms, step, then the
-- step's own (below).
-- Answers {0, ...} once done, {-1} when the partition is no longer rebuilding
-- (another reconciler finished: this one's snapshot of the shards is stale and must
-- not overwrite what was sold since), {-2} when another reconciler owns it or the
-- partition lost its state again since the rebuild began.
if not rebuilding() then return {-1} end
local owner, lease, step = ARGV[2], ARGV[4], ARGV[5]
if redis.call('HGET', k('epoch'), 'since') ~= ARGV[3] then return {-2} end
local OWNER, STAGED = k('rebuild', 'owner'), k('rebuild', 'sales')
-- What a rebuild stages for a sale, dropped when it finishes or changes owner: the
-- persisted sold orders counted (`rbseen`), and each buyer's units among them
-- (`rbsum`).
local function drop_staged(also_claims)
  for _, pid in ipairs(redis.call('SMEMBERS', STAGED)) do
    redis.call('UNLINK', k('rbseen', pid), k('rbsum', pid))
    if also_claims then redis.call('UNLINK', k('rbclaims', pid)) end
  end
end

if step == 'own' then
  if redis.call('SET', OWNER, owner, 'NX', 'PX', lease) then
    drop_staged(false)
    return {0}
  end
end
if redis.call('GET', OWNER) ~= owner then return {-2} end
redis.call('PEXPIRE', OWNER, lease)
if step == 'own' then return {0} end

if step == 'orders' then
  -- ARGV from 6: pid, ends, ttl, then oid, uid, qty, key, s(old) or c(ancelled), ...
  local pid, ends = ARGV[6], tonumber(ARGV[7])
  redis.call('SADD', STAGED, pid)
  local seen, rk, ck = k('rbseen', pid), k('restocked', pid), k('counted', pid)
  local returned = {0}
  for i = 9, #ARGV, 5 do
    local oid, uid, q, key = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    -- An order in the shards was claimed: a reservation of it kept by a partial
    -- loss holds nothing any more.
    redis.call('HDEL', k('resv', pid), oid)
    redis.call('ZREM', k('unpub', pid), oid)
    if ARGV[i + 4] == 'c' then
      redis.call('SADD', rk, oid)
      redis.call('SREM', seen, oid)
    elseif redis.call('SISMEMBER', rk, oid) == 1 then
      -- A cancellation is final: an order remembered as returned is never counted
      -- as sold, even by a snapshot of the shards read before it was cancelled.
      returned[#returned + 1] = oid
    else
      redis.call('SADD', seen, oid)
      -- A redelivery of it is recognised: claimed once, counted once.
      redis.call('HSETNX', ck, oid, q .. '|' .. uid .. '|' .. key)
      redis.call('SET', k('idem', pid, uid, key), oid, 'EX', ARGV[8])
    end
  end
  keep(rk, ends)
  keep(ck, ends)
  keep(seen, ends)
  return returned
end

if step == 'buyers' then
  -- ARGV from 6: pid, ends, then uid, units, ...
  local pid, ends = ARGV[6], tonumber(ARGV[7])
  redis.call('SADD', STAGED, pid)
  for i = 8, #ARGV, 2 do
    redis.call('HSET', k('rbsum', pid), ARGV[i], ARGV[i + 1])
    redis.call('SET', k('bought', pid, ARGV[i]), ARGV[i + 1])
    keep(k('bought', pid, ARGV[i]), ends)
  end
  keep(k('rbsum', pid), ends)
  return {0}
end

if step == 'sale' then
  -- ARGV from 6: pid, stock, limit, starts, ends, ttl, units sold by the persisted
  -- orders, unit price, payment window (s, 0 for none).
  local pid, stock, ends, sold = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[10]), tonumber(ARGV[12])
  local seen, rk = k('rbseen', pid), k('restocked', pid)
  local extra = {}
  -- Orders claimed while the partition rebuilds that the shards did not show.
  local claims = redis.call('HGETALL', k('rbclaims', pid))
  for i = 1, #claims, 2 do
    local oid = claims[i]
    if redis.call('SISMEMBER', seen, oid) == 0 and redis.call('SISMEMBER', rk, oid) == 0 then
      local q, u, key = string.match(claims[i + 1], '^(%d+)|([^|]*)|(.*)$')
      sold = sold + tonumber(q)
      extra[u] = (extra[u] or 0) + tonumber(q)
      redis.call('SET', k('idem', pid, u, key), oid, 'EX', ARGV[11])
    end
  end
  -- Reservations the partition still holds (a partial loss keeps some: a promoted
  -- replica, a server back without its last second) hold their units, and count in
  -- their buyers' limits, until they are claimed or released.
  local pending = 0
  if redis.call('EXISTS', k('resv', pid)) == 1 then
    for _, st in ipairs(redis.call('HVALS', k('resv', pid))) do
      local _, _, q, u = parse(st)
      pending = pending + q
      extra[u] = (extra[u] or 0) + q
    end
  end
  for u, n in pairs(extra) do
    local base = tonumber(redis.call('HGET', k('rbsum', pid), u) or '0')
    redis.call('SET', k('bought', pid, u), base + n)
    keep(k('bought', pid, u), ends)
  end
  -- `rebuilt`: claims from now on count on the sale itself (claim.lua).
  redis.call('HSET', k('sale', pid), 'stock', stock, 'remaining', stock - sold - pending,
    'limit', ARGV[8], 'starts', ARGV[9], 'ends', ARGV[10], 'pending', pending, 'rebuilt', ARGV[3],
    'price', ARGV[13], 'window', ARGV[14])
  redis.call('SADD', k('sales'), pid)
  return {0, sold}
end

if step == 'finish' then
  redis.call('HSET', k('epoch'), 'state', 'ready')
  drop_staged(true)
  redis.call('DEL', STAGED, OWNER)
  return {0}
end
return redis.error_reply('ERR unknown rebuild step ' .. tostring(step))
