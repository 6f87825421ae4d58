-- Hands queue entries back without moving them: each entry still pending for the group is
-- claimed for a placeholder consumer with a long idle time, so the next reclaim round of any
-- worker (XAUTOCLAIM, oldest first) takes it, ahead of entries that were never started.
-- KEYS[1] the stream
-- ARGV[1] the group, ARGV[2] the placeholder consumer, ARGV[3] the idle time to set (ms),
-- ARGV[4..] entry ids. Returns how many were handed back.
local n = 0
for i = 4, #ARGV do
  local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i],
    'IDLE', tonumber(ARGV[3]), 'JUSTID')
  n = n + #claimed
end
return n
