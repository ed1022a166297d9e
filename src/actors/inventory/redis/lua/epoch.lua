-- Run without the common prologue.
-- ARGV: prefix, state, since, replid, replid2, now, run_id, last_run_id, last_seq.
-- Creates the partition's epoch marker unless it exists; answers {state, since}.
-- The marker keeps the replication id of the server it was last seen on: a server
-- whose previous id (replid2) is that one is a replica promoted in its place, which
-- may not have the primary's newest writes, so the partition turns rebuilding.
-- It also keeps the server process it was last seen on (run_id) and, from the first
-- connect to a new one, the write sequence that process came up with (`restored`):
-- a connecting actor that saw a later write acknowledged by an earlier process knows
-- the new one came back without it (the host crashed between fsyncs), so the
-- partition turns rebuilding.
local ek = ARGV[1] .. ':epoch'
local seq = tonumber(redis.call('GET', ARGV[1] .. ':seq') or '0')
if redis.call('EXISTS', ek) == 0 then
  redis.call('HSET', ek, 'state', ARGV[2], 'since', ARGV[3], 'replid', ARGV[4],
    'run', ARGV[7], 'restored', seq)
else
  local e = redis.call('HMGET', ek, 'state', 'replid', 'run', 'restored')
  local restored = tonumber(e[4] or '0')
  if e[3] ~= ARGV[7] then
    restored = seq
    redis.call('HSET', ek, 'run', ARGV[7], 'restored', restored)
  end
  local promoted = e[2] and e[2] ~= ARGV[4] and e[2] == ARGV[5]
  local behind = ARGV[8] ~= '' and ARGV[8] ~= ARGV[7] and tonumber(ARGV[9]) > restored
  if promoted or behind then
    -- Also while it rebuilds: what the rebuild staged may be gone too, so it starts
    -- again (a new era, its owner's steps refused).
    redis.call('HSET', ek, 'state', 'rebuilding', 'since', ARGV[6])
    redis.call('DEL', ARGV[1] .. ':rebuild:owner')
  end
  redis.call('HSET', ek, 'replid', ARGV[4])
end
local e = redis.call('HMGET', ek, 'state', 'since')
return {e[1], tonumber(e[2])}
