#!lua
-- A join's step in the room's slot (RedisBroker::join writes the order of steps):
-- the capacity check, the member's record, and `user_joined` for the others, in one
-- atomic step, so `room_users` and `user_joined` never overlap or miss a member.
-- An ordinary join starts the member's numbering again: its `seq` and mailbox go.
-- KEYS[1] room set, KEYS[2] room members hash, KEYS[3] room metadata hash,
-- KEYS[4] room seq hash, KEYS[5] the user's mailbox
-- ARGV: 1 user_id, 2 member record, 3 ttl seconds, 4 the room's channel prefix,
--       5 `J` envelope for the members, 6 max_users (0: unlimited), 7 ticket,
--       8 session_id
-- Returns { "!full" } or { "!superseded" } (nothing written), else
-- { this user's previous record here or "", member, record, member, record, ... }.
local user, ticket, session = ARGV[1], tonumber(ARGV[7]), ARGV[8]
local previous = redis.call('HGET', KEYS[2], user)
if previous then
  -- A later claim of this user already got here: this join lost the race.
  local psid, pticket = string.match(previous, '^(%S+) (%S+)')
  pticket = tonumber(pticket)
  if pticket and (pticket > ticket or (pticket == ticket and psid > session)) then
    return { '!superseded' }
  end
end
local max_users = tonumber(ARGV[6])
if max_users > 0 then
  -- A user replacing its own session takes no extra place.
  local others = redis.call('SCARD', KEYS[1]) - redis.call('SISMEMBER', KEYS[1], user)
  if others >= max_users then
    return { '!full' }
  end
end
redis.call('SADD', KEYS[1], user)
redis.call('HSET', KEYS[2], user, ARGV[2])
redis.call('HDEL', KEYS[4], user)
redis.call('DEL', KEYS[5])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
local out = { previous or '' }
local others = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if m ~= user then
    others[#others + 1] = m
  end
end
-- The others' records in one HMGET per batch, not one HGET each (every call
-- costs the script as much as the command itself); batches bound `unpack`.
for first = 1, #others, 1000 do
  local last = math.min(first + 999, #others)
  local records = redis.call('HMGET', KEYS[2], unpack(others, first, last))
  for i = first, last do
    local m, record = others[i], records[i - first + 1]
    if record then
      out[#out + 1] = m
      out[#out + 1] = record
      redis.call('PUBLISH', ARGV[4] .. m, ARGV[5])
    else
      -- Listed without a record (a key expired under it): not a member.
      redis.call('SREM', KEYS[1], m)
    end
  end
end
return out
