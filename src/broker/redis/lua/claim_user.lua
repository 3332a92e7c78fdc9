#!lua
-- A join's step in the user's slot: the user's one live session becomes this one,
-- unless a later claim (higher ticket, ties broken by session id) got here first.
-- KEYS[1] user hash, KEYS[2] the user's claim hash (ticket counter and owner)
-- ARGV: 1 ticket, 2 session_id, 3 room_id, 4 joined_at, 5 role, 6 node_id, 7 ttl seconds
-- Returns { "!superseded" } (nothing written), else the previous owner's
-- { room_id or "", session_id or "", node_id or "" }.
local ticket, session = tonumber(ARGV[1]), ARGV[2]
local owner = redis.call('HMGET', KEYS[2], 'ticket', 'session')
local oticket = tonumber(owner[1])
if oticket and (oticket > ticket or (oticket == ticket and owner[2] > session)) then
  return { '!superseded' }
end
local old = redis.call('HMGET', KEYS[1], 'room_id', 'session_id', 'node_id')
redis.call('HSET', KEYS[1], 'room_id', ARGV[3], 'joined_at', ARGV[4], 'role', ARGV[5],
  'node_id', ARGV[6], 'session_id', session)
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('HSET', KEYS[2], 'ticket', ARGV[1], 'session', session)
redis.call('EXPIRE', KEYS[2], ARGV[7])
return { old[1] or '', old[2] or '', old[3] or '' }
