-- ARGV: prefix, pid, oid, uid, qty, key, created_at, ttl.
-- Answers 'sold', 'released' (before it was persisted) or 'unknown' (never
-- reserved here, or not with these details).
local pid, oid, uid, key = ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local q = tonumber(ARGV[5])
local st = redis.call('HGET', k('resv', pid), oid)
if st then
  local _, _, rq, ru = parse(st)
  if rq ~= q or ru ~= uid then return 'unknown' end
  redis.call('HDEL', k('resv', pid), oid)
  redis.call('ZREM', k('unpub', pid), oid)
  add_pending(pid, -q)
  -- A reservation kept through a partial loss, claimed while the partition rebuilds:
  -- its order may reach its shard after the rebuild read the shards, so the rebuild
  -- counts it from here.
  if rebuilding() then
    local _, _, _, _, rkey = parse(st)
    local rec = q .. '|' .. uid .. '|' .. rkey
    redis.call('HSETNX', k('counted', pid), oid, rec)
    keep(k('counted', pid), sale_end(pid))
    redis.call('HSET', k('rbclaims', pid), oid, rec)
  end
  return 'sold'
end
if redis.call('SISMEMBER', k('rel', pid), oid) == 1 then return 'released' end
-- Not reserved here: claimed before (a redelivery: the order's record, kept as long
-- as its key, names it), or accepted before the partition lost its state. Those are
-- honoured and counted once: recorded while the partition rebuilds (the rebuild adds
-- them), applied to the sale once it has been rebuilt. Anything else never was a
-- reservation: a forged or duplicated message with other details sells nothing.
local since = tonumber(redis.call('HGET', k('epoch'), 'since') or '0')
local ck, rec, sk = k('counted', pid), q .. '|' .. uid .. '|' .. key, k('sale', pid)
if rebuilding() then
  -- Whatever the partition remembers of it, an order claimed while the partition
  -- rebuilds is counted by the rebuild unless the shards show it (rebuild.lua); a
  -- sale rebuilt already in this era sells on until the partition reopens, and an
  -- order new to it counts on it too.
  redis.call('HSET', k('rbclaims', pid), oid, rec)
  local new = redis.call('HSETNX', ck, oid, rec) == 1
  keep(ck, sale_end(pid))
  if not new or tonumber(redis.call('HGET', sk, 'rebuilt') or '-1') ~= since then
    return 'sold'
  end
else
  if redis.call('GET', k('ord', oid)) == uid .. '|' .. pid .. '|' .. ARGV[5] .. '|' .. ARGV[7] then
    return 'sold'
  end
  -- Counted as accepted before the loss, when it was accepted before it (while the
  -- partition rebuilds, whatever the clocks: the accepting pod's may be ahead of the
  -- one that noticed the loss). A partition that never lost its state has no such
  -- orders.
  if since == 0 or tonumber(ARGV[7]) >= since then return 'unknown' end
  if redis.call('HSETNX', ck, oid, rec) == 0 then return 'sold' end
  keep(ck, sale_end(pid))
end
if redis.call('EXISTS', sk) == 1 then
  local ends = sale_end(pid)
  redis.call('HINCRBY', sk, 'remaining', -q)
  redis.call('INCRBY', k('bought', pid, uid), q)
  keep(k('bought', pid, uid), ends)
  redis.call('SET', k('idem', pid, uid, key), oid, 'EX', ARGV[8])
end
return 'sold'
