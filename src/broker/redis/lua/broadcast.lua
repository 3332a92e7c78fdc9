#!lua
-- Publishes one envelope to every member of the room but the sender.
-- KEYS[1] room set; ARGV: 1 sender user_id, 2 the room's channel prefix, 3 envelope
-- Returns the number of deliveries.
local n = 0
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if m ~= ARGV[1] then
    n = n + redis.call('PUBLISH', ARGV[2] .. m, ARGV[3])
  end
end
return n
