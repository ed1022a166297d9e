local s = redis.call('HMGET', k('sale', ARGV[2]), 'stock', 'remaining', 'limit', 'starts', 'ends', 'pending', 'window')
if not s[1] then return {} end
return {tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4]), tonumber(s[5]), tonumber(s[6]), tonumber(s[7] or '0')}
