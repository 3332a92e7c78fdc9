#!lua
-- The frames of one mailbox after a given `seq`, oldest first: what a node reads to
-- fill a gap. Looks at the tail first (a gap is usually a few frames), the whole
-- list only when the tail does not reach back far enough.
-- KEYS[1] the member's mailbox; ARGV: 1 the last seq delivered
-- Returns the `S` envelopes with a higher seq, in order.
local last = tonumber(ARGV[1]) or 0
local function after(entries)
  local out = {}
  for _, text in ipairs(entries) do
    local n = tonumber(string.match(text, '^S (%d+) '))
    if n and n > last then
      out[#out + 1] = text
    end
  end
  return out
end
local tail = redis.call('LRANGE', KEYS[1], -32, -1)
local first = tail[1] and tonumber(string.match(tail[1], '^S (%d+) '))
if not first or first <= last + 1 or #tail < 32 then
  return after(tail)
end
return after(redis.call('LRANGE', KEYS[1], 0, -1))
