-- Run without the common prologue. ARGV: prefix, state, since, replid, replid2, now.
-- Creates the partition's epoch marker unless it exists; answers {state, since}.
-- The marker keeps the replication id of the server it was last seen on: a server
-- whose previous id (replid2) is that one is a replica promoted in its place, which
-- may not have the primary's newest writes, so a ready partition turns rebuilding.
local ek = ARGV[1] .. ':epoch'
if redis.call('EXISTS', ek) == 0 then
  redis.call('HSET', ek, 'state', ARGV[2], 'since', ARGV[3], 'replid', ARGV[4])
else
  local e = redis.call('HMGET', ek, 'state', 'replid')
  if e[1] == 'ready' and e[2] and e[2] ~= ARGV[4] and e[2] == ARGV[5] then
    redis.call('HSET', ek, 'state', 'rebuilding', 'since', ARGV[6])
  end
  redis.call('HSET', ek, 'replid', ARGV[4])
end
local e = redis.call('HMGET', ek, 'state', 'since')
return {e[1], tonumber(e[2])}
