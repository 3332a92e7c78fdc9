#!lua
-- The frames of one mailbox after a given `seq`, oldest first: what a node reads to
-- fill a gap. Looks at the tail first (a gap is usually a few frames), the whole
-- list only when the tail does not reach back far enough.
-- KEYS[1] the member's mailbox; ARGV: 1 the last seq delivered, 2 how many seqs
-- before it to return too (the node compares those with what it delivered: after
-- a failover that lost the latest counts, they are other frames, numbered again)
-- Returns the `S` envelopes with a seq above (last - lookback), in list order.
local from = (tonumber(ARGV[1]) or 0) - (tonumber(ARGV[2]) or 0)
local function after(entries)
  local out = {}
  for _, text in ipairs(entries) do
    local n = tonumber(string.match(text, '^S (%d+) '))
    if n and n > from then
      out[#out + 1] = text
    end
  end
  return out
end
local tail = redis.call('LRANGE', KEYS[1], -64, -1)
local first = tail[1] and tonumber(string.match(tail[1], '^S (%d+) '))
if not first or first <= from + 1 or #tail < 64 then
  return after(tail)
end
return after(redis.call('LRANGE', KEYS[1], 0, -1))
