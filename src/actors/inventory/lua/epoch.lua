-- Run without the common prologue. ARGV: prefix, state, since. Creates the partition's
-- epoch marker unless it exists; answers {state, since}.
local ek = ARGV[1] .. ':epoch'
if redis.call('EXISTS', ek) == 0 then redis.call('HSET', ek, 'state', ARGV[2], 'since', ARGV[3]) end
local e = redis.call('HMGET', ek, 'state', 'since')
return {e[1], tonumber(e[2])}
