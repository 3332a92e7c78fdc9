#!lua
-- Closes a room in its slot: its set, member records and metadata go at once, so
-- no relay reaches a member afterwards. The node then tells each member's session
-- to close (kicked) and removes the members' user hashes (their slots).
-- KEYS[1] room set, KEYS[2] room members hash, KEYS[3] room metadata hash,
-- KEYS[4] room seq hash (mailboxes expire by themselves within the hold time)
-- Returns { -1 } when the room does not exist, else { 1, member, record, ... }.
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[3]) == 0 then
  return { -1 }
end
local out = { 1 }
local records = redis.call('HGETALL', KEYS[2])
for i = 1, #records, 2 do
  if redis.call('SISMEMBER', KEYS[1], records[i]) == 1 then
    out[#out + 1] = records[i]
    out[#out + 1] = records[i + 1]
  end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return out
