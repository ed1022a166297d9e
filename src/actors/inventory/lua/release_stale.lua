local now, stale, n = tonumber(ARGV[2]), tonumber(ARGV[3]), 0
for _, pid in ipairs(redis.call('SMEMBERS', k('sales'))) do
  local all = redis.call('HGETALL', k('resv', pid))
  for i = 1, #all, 2 do
    local s, ts = parse(all[i + 1])
    if s == 'R' and now - ts > stale then release(pid, all[i], all[i + 1]) n = n + 1 end
  end
end
return n
