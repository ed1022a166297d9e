local pid, uid, key, oid = ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local qty, now, stale = tonumber(ARGV[5]), tonumber(ARGV[7]), tonumber(ARGV[8])
if rebuilding() then return {'rebuilding'} end
local ik = k('idem', pid, uid, key)
local prev = redis.call('GET', ik)
if prev then
  local st = redis.call('HGET', k('resv', pid), prev)
  if not st then return {'replay', prev} end
  local s, ts, q = parse(st)
  if s == 'P' then return {'replay', prev} end
  if now - ts <= stale then
    local t = redis.call('HMGET', k('sale', pid), 'price', 'window')
    return {'unpublished', prev, q, ts, tonumber(t[1] or '0'), tonumber(t[2] or '0')}
  end
  release(pid, prev, st)
end
local sk = k('sale', pid)
local sale = redis.call('HMGET', sk, 'remaining', 'limit', 'starts', 'ends', 'price', 'window')
if not sale[1] then return {'no_sale'} end
local remaining, limit, starts, ends = tonumber(sale[1]), tonumber(sale[2]), tonumber(sale[3]), tonumber(sale[4])
if (starts > 0 and now < starts) or (ends > 0 and now >= ends) then return {'not_active'} end
local bk = k('bought', pid, uid)
local bought = tonumber(redis.call('GET', bk) or '0')
if bought + qty > limit then return {'limit_reached'} end
if remaining < qty then return {'out_of_stock'} end
redis.call('HINCRBY', sk, 'remaining', -qty)
redis.call('HINCRBY', sk, 'pending', qty)
redis.call('INCRBY', bk, qty)
keep(bk, ends)
redis.call('SET', ik, oid, 'EX', ARGV[9])
redis.call('HSET', k('resv', pid), oid, 'R|' .. ARGV[7] .. '|' .. ARGV[5] .. '|' .. uid .. '|' .. key)
-- Unpublished reservations by time: what the reconciler's sweep reads.
redis.call('ZADD', k('unpub', pid), ARGV[7], oid)
redis.call('SET', k('ord', oid), uid .. '|' .. pid .. '|' .. ARGV[5] .. '|' .. ARGV[7], 'EX', ARGV[9])
-- The terms the order is accepted on: its unit price and payment window now.
return {'created', oid, tonumber(sale[5] or '0'), tonumber(sale[6] or '0')}
