local P = ARGV[1]
local function k(...) return P .. ':' .. table.concat({...}, ':') end
local function parse(st)
  local s, ts, q, u, key = string.match(st, '^(%a)|(%d+)|(%d+)|([^|]*)|(.*)$')
  return s, tonumber(ts), tonumber(q), u, key
end
local function release(pid, oid, st)
  local s, ts, q, u, key = parse(st)
  redis.call('HINCRBY', k('sale', pid), 'remaining', q)
  redis.call('DECRBY', k('bought', pid, u), q)
  redis.call('HDEL', k('resv', pid), oid)
  redis.call('SADD', k('rel', pid), oid)
  local ik = k('idem', pid, u, key)
  if redis.call('GET', ik) == oid then redis.call('DEL', ik) end
  redis.call('DEL', k('ord', oid))
end
