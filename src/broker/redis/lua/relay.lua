#!lua
-- Membership check and publish in one round trip.
-- KEYS[1] room set, KEYS[2] target channel; ARGV: 1 target user_id, 2 envelope
-- Returns -1 when the target is not in the room, else the number of receiving nodes.
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  return -1
end
return redis.call('PUBLISH', KEYS[2], ARGV[2])
