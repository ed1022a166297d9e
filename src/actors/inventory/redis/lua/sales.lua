local out = {}
for _, pid in ipairs(redis.call('SMEMBERS', k('sales'))) do
  local s = redis.call('HMGET', k('sale', pid), 'stock', 'remaining', 'starts', 'ends', 'window')
  if s[1] then
    for _, v in ipairs({tonumber(pid), tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4]),
        tonumber(s[5] or '0')}) do
      out[#out + 1] = v
    end
  end
end
return out
