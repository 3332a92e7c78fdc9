-- Shared by the relay scripts (prepended to them by the engine, mod.rs).
-- The member's record is `session ticket node role joined_at stream digest
-- detached` (member_record.rs); a relay needs its stream only.
local function record_stream(record)
  return string.match(record, '^%S+ %S+ %S+ %S+ %S+ (%S+) ')
end

-- Numbers one frame for `member` and holds it in the member's mailbox: the next
-- `seq`, the `S` header (seq, stream, now), pushed to the list, trimmed to `max`
-- entries, expiring `hold_ms` after the last write. Every 16th frame also drops
-- the entries older than `hold_ms` (looking at the oldest costs a quarter of the
-- script; entries past the hold are never needed, so they may linger a little).
-- Returns the numbered text to publish, or nil when `record` is malformed.
local function number_and_hold(seq_key, mailbox, member, record, envelope, now, max, hold_ms)
  local stream = record_stream(record)
  if not stream then
    return nil
  end
  local seq = redis.call('HINCRBY', seq_key, member, 1)
  local text = 'S ' .. seq .. ' ' .. stream .. ' ' .. now .. '\n' .. envelope
  local len = redis.call('RPUSH', mailbox, text)
  if len > max then
    redis.call('LTRIM', mailbox, len - max, -1)
  end
  local oldest = now - hold_ms
  while seq % 16 == 0 do
    local head = redis.call('LINDEX', mailbox, 0)
    if not head then
      break
    end
    local stored = tonumber(string.match(head, '^S %S+ %S+ (%d+)'))
    if stored and stored >= oldest then
      break
    end
    redis.call('LPOP', mailbox)
  end
  redis.call('PEXPIRE', mailbox, hold_ms)
  return text
end
