-- Releases reservations left unpublished for longer than `stale` ms (a crash between
-- reserving and publishing), at most `most` of them, oldest first. It reads the index
-- of unpublished reservations by time, so a sweep costs what is stale, however many
-- published reservations wait for their consumers (a worker or shard outage).
-- ARGV: prefix, now, stale, most. Answers how many it released.
-- Nothing is released while the partition rebuilds (the rebuild counts what is held).
local now, stale, most, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), 0
if rebuilding() then return 0 end
for _, pid in ipairs(redis.call('SMEMBERS', k('sales'))) do
  if n >= most then break end
  local old = redis.call('ZRANGEBYSCORE', k('unpub', pid), '-inf', '(' .. (now - stale), 'LIMIT', 0, most - n)
  for _, oid in ipairs(old) do
    local st = redis.call('HGET', k('resv', pid), oid)
    if st and string.sub(st, 1, 1) == 'R' then
      release(pid, oid, st)
      n = n + 1
    else
      redis.call('ZREM', k('unpub', pid), oid)
    end
  end
end
return n
