local st = redis.call('HGET', k('resv', ARGV[2]), ARGV[3])
if st then release(ARGV[2], ARGV[3], st) return 1 end
return 0
