#!lua
-- Detaches a member in its room's slot, guarded by the session: the record stays
-- (the member stays in the room, nobody is told) with the Unix ms its grace ends.
-- KEYS[1] room members hash
-- ARGV: 1 user_id, 2 session_id, 3 the grace's end (Unix ms)
-- Returns 1 when detached, 0 when the record is another session's (or gone).
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then
  return 0
end
local session, ticket, node, role, joined_at, stream, digest =
  string.match(record, '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
if session ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], table.concat(
  { session, ticket, node, role, joined_at, stream, digest, ARGV[3] }, ' '))
return 1
