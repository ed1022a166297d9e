-- ARGV: prefix, pid, oid, uid, qty, key, created_at, ttl.
local pid, oid, uid, key = ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local q = tonumber(ARGV[5])
if redis.call('HDEL', k('resv', pid), oid) == 1 then
  add_pending(pid, -q)
  return 1
end
if redis.call('SISMEMBER', k('rel', pid), oid) == 1 then return 0 end
-- Not reserved here: claimed before (a redelivery), or accepted before the partition
-- lost its state. Those are honoured and counted once: recorded while the partition
-- rebuilds (the rebuild adds them), applied to the sale once it has been rebuilt.
local since = tonumber(redis.call('HGET', k('epoch'), 'since') or '0')
if tonumber(ARGV[7]) >= since then return 1 end
local ck = k('counted', pid)
if redis.call('HSETNX', ck, oid, q .. '|' .. uid .. '|' .. key) == 0 then return 1 end
local sk = k('sale', pid)
if redis.call('EXISTS', sk) == 1 then
  local ends = sale_end(pid)
  keep(ck, ends)
  redis.call('HINCRBY', sk, 'remaining', -q)
  redis.call('INCRBY', k('bought', pid, uid), q)
  keep(k('bought', pid, uid), ends)
  redis.call('SET', k('idem', pid, uid, key), oid, 'EX', ARGV[8])
end
return 1
