-- The order's message is in the queue. Answers 0 when its reservation was released
-- meanwhile (the message will be claimed as cancelled), 1 otherwise: reserved,
-- published, or already claimed by a consumer.
local rk = k('resv', ARGV[2])
local st = redis.call('HGET', rk, ARGV[3])
if st then
  if string.sub(st, 1, 1) == 'R' then
    redis.call('HSET', rk, ARGV[3], 'P' .. string.sub(st, 2))
    redis.call('ZREM', k('unpub', ARGV[2]), ARGV[3])
  end
  return 1
end
if redis.call('SISMEMBER', k('rel', ARGV[2]), ARGV[3]) == 1 then return 0 end
return 1
