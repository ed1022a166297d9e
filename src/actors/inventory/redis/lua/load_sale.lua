if rebuilding() then return {-2, 0} end
local sk = k('sale', ARGV[2])
local old = redis.call('HMGET', sk, 'stock', 'remaining')
local sold = 0
if old[1] then sold = tonumber(old[1]) - tonumber(old[2]) end
local stock = tonumber(ARGV[3])
if stock < sold then return {-1, sold} end
redis.call('HSET', sk, 'stock', stock, 'remaining', stock - sold, 'limit', ARGV[4], 'starts', ARGV[5], 'ends', ARGV[6],
  'price', ARGV[7], 'window', ARGV[8])
if not old[1] then redis.call('HSET', sk, 'pending', 0) end
redis.call('SADD', k('sales'), ARGV[2])
return {stock, stock - sold}
