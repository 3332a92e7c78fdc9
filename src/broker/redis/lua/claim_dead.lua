#!lua
-- Claims the cleanup of one dead incarnation: marks it dead and returns its
-- sessions. The hash is not deleted here but by the claimer once every eviction
-- is done, so a claimer that fails midway leaves the list for the next sweep.
-- Two survivors may both evict: evictions are session-guarded, so only one of them
-- removes and announces each session. One slot: the node's own keys.
-- KEYS[1] heartbeat hash `node:{N}`, KEYS[2] the run's sessions hash,
-- KEYS[3] the run's dead marker
-- ARGV: 1 run id, 2 marker TTL seconds, 3 `1` when a missing heartbeat counts as
-- dead (`0` right after a Redis reconnect, when heartbeats may be missing though
-- their nodes live; a heartbeat of another run still proves this run gone)
-- Returns { 'alive' } when the run still beats (nothing written), else
-- { 'claimed', user, session, ... } with the sessions still recorded.
local beating = redis.call('HGET', KEYS[1], 'run')
if beating == ARGV[1] or (not beating and ARGV[3] ~= '1') then
  return { 'alive' }
end
-- Tells the run, should it resume, that its sessions are gone.
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
local out = { 'claimed' }
local sessions = redis.call('HGETALL', KEYS[2])
for i = 1, #sessions do
  out[#out + 1] = sessions[i]
end
return out
