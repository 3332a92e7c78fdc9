#!lua
-- A resume's step in the room's slot: checks that the token is the member's
-- current one, its grace has not ended, `last_seq` is not past the member's last
-- `seq` and the mailbox still holds every frame after it; then the record names
-- the new session, node and token digest, attached. Nobody is told.
-- KEYS[1] room set, KEYS[2] room members hash, KEYS[3] room metadata hash,
-- KEYS[4] room seq hash, KEYS[5] the user's mailbox
-- ARGV: 1 user_id, 2 presented digest, 3 last_seq, 4 new session_id, 5 node_id,
--       6 new digest, 7 now (Unix ms), 8 ttl seconds
-- Returns { "!refused" } (nothing written), else
-- { "ok", previous record, member count, member, record, ..., frame, frame, ... }
-- with the held frames after last_seq in order.
local user = ARGV[1]
local refused = { '!refused' }
if redis.call('SISMEMBER', KEYS[1], user) == 0 then
  return refused
end
local record = redis.call('HGET', KEYS[2], user)
if not record then
  return refused
end
local session, ticket, node, role, joined_at, stream, digest, detached =
  string.match(record, '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$')
if not session or digest ~= ARGV[2] then
  return refused
end
local now = tonumber(ARGV[7])
detached = tonumber(detached) or 0
if detached > 0 and detached <= now then
  return refused
end
local last = tonumber(ARGV[3])
local seq = tonumber(redis.call('HGET', KEYS[4], user)) or 0
if not last or last > seq then
  return refused
end
local replay = {}
local expected = last + 1
for _, text in ipairs(redis.call('LRANGE', KEYS[5], 0, -1)) do
  local n = tonumber(string.match(text, '^S (%d+) '))
  if n and n >= expected then
    if n ~= expected then
      return refused
    end
    replay[#replay + 1] = text
    expected = expected + 1
  end
end
if expected ~= seq + 1 then
  return refused
end
redis.call('HSET', KEYS[2], user, table.concat(
  { ARGV[4], ticket, ARGV[5], role, joined_at, stream, ARGV[6], '0' }, ' '))
for i = 1, 4 do
  redis.call('EXPIRE', KEYS[i], ARGV[8])
end
local members = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if m ~= user then
    local r = redis.call('HGET', KEYS[2], m)
    if r then
      members[#members + 1] = m
      members[#members + 1] = r
    end
  end
end
local out = { 'ok', record, #members }
for _, v in ipairs(members) do
  out[#out + 1] = v
end
for _, v in ipairs(replay) do
  out[#out + 1] = v
end
return out
