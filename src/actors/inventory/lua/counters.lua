local s = redis.call('HMGET', k('sale', ARGV[2]), 'stock', 'remaining', 'limit', 'starts', 'ends')
if not s[1] then return {} end
local pending = 0
local all = redis.call('HVALS', k('resv', ARGV[2]))
for _, st in ipairs(all) do local _, _, q = parse(st) pending = pending + q end
return {tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4]), tonumber(s[5]), pending}
