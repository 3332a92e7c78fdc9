#!lua
-- Drops a session that left from its run's sessions hash, only if the entry is
-- still that session's (a newer session of the same user may have replaced it).
-- KEYS[1] the run's sessions hash; ARGV: 1 user_id, 2 session_id
-- Returns 1 when removed.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
