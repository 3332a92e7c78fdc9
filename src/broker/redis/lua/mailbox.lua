-- Shared by the relay scripts (prepended to them by the engine, mod.rs).
-- The member's record is `session ticket node role joined_at stream digest
-- detached` (member_record.rs); a relay needs its stream only.
local function record_stream(record)
  return string.match(record, '^%S+ %S+ %S+ %S+ %S+ (%S+) ')
end

-- Drops the entries at the head of `mailbox` stored before `now - hold_ms`
-- (entries past the hold are never needed, so they may linger a little).
local function drop_expired(mailbox, now, hold_ms)
  local oldest = tonumber(now) - tonumber(hold_ms)
  while true do
    local head = redis.call('LINDEX', mailbox, '0')
    if not head then
      return
    end
    local stored = tonumber(string.match(head, '^S %S+ %S+ (%d+)'))
    if stored and stored >= oldest then
      return
    end
    redis.call('LPOP', mailbox)
  end
end

-- Numbers `envelopes` (in order) for `member`, whose numbering stream is
-- `stream`, and holds them in its mailbox: the next `seq` numbers, the `S`
-- header (seq, stream, now) on each, pushed to the list in one call, trimmed to
-- `max` entries, expiring `hold_ms` after the last write. Whenever the numbers
-- pass a multiple of 16 the entries older than `hold_ms` are dropped too
-- (looking at the oldest costs more than the rest of a relay).
-- `now`, `max` and `hold_ms` are the strings the node sent: a Lua number passed
-- to Redis or joined to a string is formatted with sprintf, which costs as much
-- as a command. Returns the numbered texts to publish, in order.
local function number_and_hold_all(seq_key, mailbox, member, stream, envelopes, now, max, hold_ms)
  local k = #envelopes
  local last = redis.call('HINCRBY', seq_key, member, string.format('%d', k))
  local tail = ' ' .. stream .. ' ' .. now .. '\n'
  local texts = {}
  for j = 1, k do
    texts[j] = 'S ' .. string.format('%d', last - k + j) .. tail .. envelopes[j]
  end
  local len = redis.call('RPUSH', mailbox, unpack(texts))
  if len > tonumber(max) then
    redis.call('LTRIM', mailbox, '-' .. max, '-1')
  end
  if math.floor(last / 16) ~= math.floor((last - k) / 16) then
    drop_expired(mailbox, now, hold_ms)
  end
  redis.call('PEXPIRE', mailbox, hold_ms)
  return texts
end

-- One frame for `member` (see number_and_hold_all). Returns the numbered text
-- to publish, or nil when `record` is malformed.
local function number_and_hold(seq_key, mailbox, member, record, envelope, now, max, hold_ms)
  local stream = record_stream(record)
  if not stream then
    return nil
  end
  return number_and_hold_all(seq_key, mailbox, member, stream, { envelope }, now, max, hold_ms)[1]
end
