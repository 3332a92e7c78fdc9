#!lua
-- Publishes one envelope per member, each sealed by the node for that member's
-- channel (PAYLOAD_ENCRYPTION_KEY binds a sealed envelope to its channel, so one
-- text cannot serve every member as in broadcast.lua). A member that left since
-- the node listed the room is skipped.
-- KEYS[1] room set, KEYS[1 + i] member i's channel
-- ARGV[2i - 1] member i's user_id, ARGV[2i] member i's envelope
-- Returns the number of deliveries.
local n = 0
for i = 2, #KEYS do
  local member, envelope = ARGV[2 * i - 3], ARGV[2 * i - 2]
  if redis.call('SISMEMBER', KEYS[1], member) == 1 then
    n = n + redis.call('PUBLISH', KEYS[i], envelope)
  end
end
return n
