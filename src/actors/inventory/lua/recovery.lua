-- ARGV: prefix, finish (1 to end a rebuild). Answers {rebuilding 0/1, since}.
if ARGV[2] == '1' then redis.call('HSET', k('epoch'), 'state', 'ready') end
local e = redis.call('HMGET', k('epoch'), 'state', 'since')
if e[1] == 'rebuilding' then return {1, tonumber(e[2])} end
return {0, tonumber(e[2])}
