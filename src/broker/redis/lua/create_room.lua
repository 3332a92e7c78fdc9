#!lua
-- Creates a room's metadata unless the room exists (created, or with members).
-- The room index (another slot) is written by the node afterwards.
-- KEYS[1] room metadata hash, KEYS[2] room set
-- ARGV: 1 created_at, 2 argon2 password hash or "", 3 max_users or "",
--       4 moderated "0"/"1", 5 hosts (comma-separated), 6 ttl seconds
-- Returns 1 when created, 0 when the room exists.
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'created_at', ARGV[1], 'password_hash', ARGV[2],
  'max_users', ARGV[3], 'moderated', ARGV[4], 'hosts', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return 1
