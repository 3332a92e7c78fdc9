#!lua
-- Numbers, holds and publishes one envelope per member, each sealed by the node
-- for that member's channel (PAYLOAD_ENCRYPTION_KEY binds a sealed envelope to its
-- channel, so one text cannot serve every member as in broadcast.lua). A member
-- that left since the node listed the room is skipped (mailbox.lua is prepended).
-- KEYS[1] room set, KEYS[2] room members hash, KEYS[3] room seq hash,
-- KEYS[2 + 2i] member i's channel, KEYS[3 + 2i] member i's mailbox
-- ARGV: 1 now ms, 2 mailbox max, 3 hold ms,
--       ARGV[2 + 2i] member i's user_id, ARGV[3 + 2i] member i's envelope
-- Returns the number of members it was numbered for.
local now, max, hold_ms = ARGV[1], ARGV[2], ARGV[3]
local n = 0
local i = 1
while KEYS[2 + 2 * i] do
  local member, envelope = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  if redis.call('SISMEMBER', KEYS[1], member) == 1 then
    local record = redis.call('HGET', KEYS[2], member)
    if record then
      local text = number_and_hold(KEYS[3], KEYS[3 + 2 * i], member, record, envelope, now, max, hold_ms)
      if text then
        redis.call('PUBLISH', KEYS[2 + 2 * i], text)
        n = n + 1
      end
    end
  end
  i = i + 1
end
return n
