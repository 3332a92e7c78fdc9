#!lua
-- A sender's burst of relays in one call (mailbox.lua is prepended): directed
-- messages and broadcasts, in the order the sender sent them. Each member's
-- frames of the burst are numbered, held and published together, in that
-- order, so a burst costs one script call and, per member, one counter update
-- and one push, however many frames it holds. Mailboxes and channels are named
-- from the room's prefixes: every one lies in the room's slot (its hash tag).
-- KEYS[1] room set, KEYS[2] room members hash, KEYS[3] room seq hash, then
-- each directed target's mailbox and channel (named here from the prefixes;
-- declared so that Redis Cluster redirects the call while their slot migrates)
-- ARGV: 1 now ms, 2 mailbox max, 3 hold ms, 4 the room's channel prefix,
--       5 the room's mailbox prefix, 6 sender user_id, then per item i (from 1)
--       ARGV[5 + 2i] its target's user_id ('' for a broadcast), ARGV[6 + 2i]
--       its envelope.
-- Returns one integer per item: a directed relay's receiving nodes (0: held for
-- a detached member, or nobody holds it) or -1 when the target is not in the
-- room; a broadcast's number of members it was numbered for.
local now, max, hold_ms = ARGV[1], ARGV[2], ARGV[3]
local channels, mailboxes, sender = ARGV[4], ARGV[5], ARGV[6]

-- member -> its stream, or false when it is not a member (or its record is
-- malformed); read once per burst.
local streams = {}
local function stream_of(member)
  local stream = streams[member]
  if stream == nil then
    stream = false
    if redis.call('SISMEMBER', KEYS[1], member) == 1 then
      local record = redis.call('HGET', KEYS[2], member)
      stream = record and record_stream(record) or false
    end
    streams[member] = stream
  end
  return stream
end

-- member -> { item indexes }, { envelopes }, in the burst's order; `order`
-- lists members as first met.
local queued, order = {}, {}
local function queue(member, item, envelope)
  local q = queued[member]
  if not q then
    q = { items = {}, envelopes = {} }
    queued[member] = q
    order[#order + 1] = member
  end
  q.items[#q.items + 1] = item
  q.envelopes[#q.envelopes + 1] = envelope
end

local results, directed = {}, {}
local members
local i = 1
while ARGV[6 + 2 * i] do
  local target, envelope = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  if target == '' then
    members = members or redis.call('SMEMBERS', KEYS[1])
    results[i] = 0
    for _, m in ipairs(members) do
      if m ~= sender and stream_of(m) then
        queue(m, i, envelope)
      end
    end
  elseif stream_of(target) then
    results[i] = 0
    directed[i] = true
    queue(target, i, envelope)
  else
    results[i] = -1
  end
  i = i + 1
end

for _, m in ipairs(order) do
  local q = queued[m]
  local texts = number_and_hold_all(KEYS[3], mailboxes .. m, m, streams[m], q.envelopes, now, max, hold_ms)
  local channel = channels .. m
  for j, text in ipairs(texts) do
    local receivers = redis.call('PUBLISH', channel, text)
    local item = q.items[j]
    if directed[item] then
      results[item] = receivers
    else
      results[item] = results[item] + 1
    end
  end
end
return results
