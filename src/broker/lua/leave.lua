-- Removes a session's membership, only if the user hash still belongs to it, and
-- tells the remaining members. An emptied set disappears by itself.
-- KEYS[1] room set, KEYS[2] user hash
-- ARGV: 1 user_id, 2 session_id, 3 key prefix, 4 user_left envelope
-- Returns 1 when removed, 0 when the hash belongs to another session (or is gone).
if redis.call('HGET', KEYS[2], 'session_id') ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], ARGV[1])
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('PUBLISH', ARGV[3] .. 'ch:user:' .. m, ARGV[4])
end
return 1
