-- One page of the room index in id order, after `cursor` (exclusive), with member
-- counts. Entries whose room vanished (no members, metadata expired) are dropped.
-- KEYS[1] room index; ARGV: 1 key prefix, 2 cursor ("" for the start), 3 limit
-- Returns { next cursor or "", room, count, room, count, ... }
local prefix, limit = ARGV[1], tonumber(ARGV[3])
local start = '-'
if ARGV[2] ~= '' then
  start = '(' .. ARGV[2]
end
local out = { '' }
local found = 0
while true do
  local batch = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, limit + 1)
  if #batch == 0 then
    return out
  end
  for _, room in ipairs(batch) do
    local count = redis.call('SCARD', prefix .. 'room:{' .. room .. '}')
    if count == 0 and redis.call('EXISTS', prefix .. 'room:{' .. room .. '}:meta') == 0 then
      redis.call('ZREM', KEYS[1], room)
    elseif found == limit then
      -- A live room beyond this page: the page ends with the previous one.
      out[1] = out[#out - 1]
      return out
    else
      out[#out + 1] = room
      out[#out + 1] = tostring(count)
      found = found + 1
    end
    start = '(' .. room
  end
end
