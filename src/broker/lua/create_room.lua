-- Creates a room's metadata unless the room exists (created, or with members).
-- KEYS[1] room metadata hash, KEYS[2] room set, KEYS[3] room index
-- ARGV: 1 room_id, 2 created_at, 3 argon2 password hash or "", 4 max_users or "",
--       5 moderated "0"/"1", 6 hosts (comma-separated), 7 ttl seconds
-- Returns 1 when created, 0 when the room exists.
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'created_at', ARGV[2], 'password_hash', ARGV[3],
  'max_users', ARGV[4], 'moderated', ARGV[5], 'hosts', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return 1
