#!lua
-- A leave's step in the user's slot, guarded by the session: the user's hash and
-- the claim's owner go only while they still belong to this session (a newer
-- session of the same user keeps them). The claim's ticket counter stays (it
-- expires with the TTL): tickets must never go back, or a join still in flight
-- with an old, higher ticket would win over every later connection of the user.
-- KEYS[1] user hash, KEYS[2] the user's claim hash; ARGV: 1 session_id
-- Returns 1 when the user hash was this session's (and is gone), else 0.
local removed = 0
if redis.call('HGET', KEYS[1], 'session_id') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  removed = 1
end
if redis.call('HGET', KEYS[2], 'session') == ARGV[1] then
  redis.call('HDEL', KEYS[2], 'ticket', 'session')
end
return removed
