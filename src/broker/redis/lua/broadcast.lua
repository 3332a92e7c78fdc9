#!lua
-- Numbers, holds and publishes one envelope for every member of the room but the
-- sender (mailbox.lua is prepended). Mailboxes and channels are named from the
-- room's prefixes: every one lies in the room's slot (its hash tag).
-- KEYS[1] room set, KEYS[2] room members hash, KEYS[3] room seq hash
-- ARGV: 1 sender user_id, 2 the room's channel prefix, 3 the room's mailbox
--       prefix, 4 envelope, 5 now ms, 6 mailbox max, 7 hold ms
-- Returns the number of members it was numbered for.
local now, max, hold_ms = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local n = 0
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if m ~= ARGV[1] then
    local record = redis.call('HGET', KEYS[2], m)
    if record then
      local text = number_and_hold(KEYS[3], ARGV[3] .. m, m, record, ARGV[4], now, max, hold_ms)
      if text then
        redis.call('PUBLISH', ARGV[2] .. m, text)
        n = n + 1
      end
    end
  end
end
return n
