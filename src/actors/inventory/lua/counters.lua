local s = redis.call('HMGET', k('sale', ARGV[2]), 'stock', 'remaining', 'limit', 'starts', 'ends', 'pending')
if not s[1] then return {} end
local pending = tonumber(s[6]) or scan_pending(ARGV[2])
return {tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4]), tonumber(s[5]), pending}
