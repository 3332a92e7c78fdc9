#!lua
-- A leave's step in the room's slot, guarded by the session: removes the member
-- only if its record here is still this session's, and tells the others. The
-- end of a grace is a leave guarded further: only a member still detached, whose
-- grace ended by then (it may have resumed, or been detached again, meanwhile).
-- KEYS[1] room set, KEYS[2] room members hash, KEYS[3] room metadata hash,
-- KEYS[4] room seq hash, KEYS[5] the user's mailbox
-- ARGV: 1 user_id, 2 session_id, 3 the room's channel prefix, 4 `L` envelope,
--       5 `0`, or for a grace's end the Unix ms it is now
-- Returns { removed 0/1, members left, metadata exists 0/1 }.
local function kept()
  return { 0, redis.call('SCARD', KEYS[1]), redis.call('EXISTS', KEYS[3]) }
end
local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record then
  return kept()
end
local session, _, _, _, _, _, _, detached =
  string.match(record, '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
if session ~= ARGV[2] then
  return kept()
end
local due = tonumber(ARGV[5])
if due > 0 then
  detached = tonumber(detached) or 0
  if detached == 0 or detached > due then
    return kept()
  end
end
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[5])
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('PUBLISH', ARGV[3] .. m, ARGV[4])
end
local left = redis.call('SCARD', KEYS[1])
if left == 0 then
  redis.call('DEL', KEYS[2], KEYS[4])
end
return { 1, left, redis.call('EXISTS', KEYS[3]) }
