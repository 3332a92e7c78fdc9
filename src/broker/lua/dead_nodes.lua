-- Lists the registered nodes whose heartbeat key has expired (read only).
-- KEYS[1] node set; ARGV: 1 key prefix, 2 this node's id
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if n ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'node:{' .. n .. '}') == 0 then
    out[#out + 1] = n
  end
end
return out
