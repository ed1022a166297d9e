-- ARGV: prefix. Answers {rebuilding 0/1, since}.
local e = redis.call('HMGET', k('epoch'), 'state', 'since')
if e[1] == 'rebuilding' then return {1, tonumber(e[2])} end
return {0, tonumber(e[2])}
