#!lua
-- A directed relay in one round trip: membership check, the target's next `seq`,
-- its mailbox, the publish (mailbox.lua is prepended).
-- KEYS[1] room set, KEYS[2] room members hash, KEYS[3] room seq hash,
-- KEYS[4] target's mailbox, KEYS[5] target's channel
-- ARGV: 1 target user_id, 2 envelope, 3 now ms, 4 mailbox max, 5 hold ms,
-- 6 (optional) a floor: the target's node already delivered up to this `seq`
-- (Redis lost its latest counts in a failover), so the counter is raised to it
-- first and the frame numbered above it.
-- Returns -1 when the target is not in the room, else the number of receiving
-- nodes (0: held for a detached member, or nobody holds it).
local target = ARGV[1]
if redis.call('SISMEMBER', KEYS[1], target) == 0 then
  return -1
end
local record = redis.call('HGET', KEYS[2], target)
if not record then
  return -1
end
local floor = tonumber(ARGV[6] or '0') or 0
if floor > 0 and (tonumber(redis.call('HGET', KEYS[3], target) or '0') or 0) < floor then
  redis.call('HSET', KEYS[3], target, floor)
end
local text = number_and_hold(KEYS[3], KEYS[4], target, record, ARGV[2],
  ARGV[3], ARGV[4], ARGV[5])
if not text then
  return -1
end
return redis.call('PUBLISH', KEYS[5], text)
