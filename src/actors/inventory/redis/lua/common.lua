local P = ARGV[1]
local function k(...) return P .. ':' .. table.concat({...}, ':') end
local function parse(st)
  local s, ts, q, u, key = string.match(st, '^(%a)|(%d+)|(%d+)|([^|]*)|(.*)$')
  return s, tonumber(ts), tonumber(q), u, key
end
-- A sale's bookkeeping (per-user counts, released and restocked orders) lives a week
-- past the sale's end; a sale without an end keeps it.
local function keep(key, ends)
  if ends > 0 then redis.call('PEXPIREAT', key, ends + 604800000) end
end
local function sale_end(pid)
  return tonumber(redis.call('HGET', k('sale', pid), 'ends') or '0')
end
-- The units reserved and not yet claimed, kept in the sale's `pending` field so that
-- reading them costs the same whatever the sale's size.
local function add_pending(pid, q)
  redis.call('HINCRBY', k('sale', pid), 'pending', q)
end
local function release(pid, oid, st)
  local s, ts, q, u, key = parse(st)
  local ends = sale_end(pid)
  redis.call('HINCRBY', k('sale', pid), 'remaining', q)
  add_pending(pid, -q)
  redis.call('DECRBY', k('bought', pid, u), q)
  keep(k('bought', pid, u), ends)
  redis.call('HDEL', k('resv', pid), oid)
  redis.call('ZREM', k('unpub', pid), oid)
  redis.call('SADD', k('rel', pid), oid)
  keep(k('rel', pid), ends)
  local ik = k('idem', pid, u, key)
  if redis.call('GET', ik) == oid then redis.call('DEL', ik) end
  redis.call('DEL', k('ord', oid))
end
-- A partition whose state is gone (a restart without persistence, a flush) answers
-- nothing from it: the actor fails, and its restart finds the state gone and rebuilds.
local EPOCH = redis.call('HGET', P .. ':epoch', 'state')
if not EPOCH then
  return redis.error_reply('LOST the partition state is gone')
end
local function rebuilding()
  return EPOCH == 'rebuilding'
end
