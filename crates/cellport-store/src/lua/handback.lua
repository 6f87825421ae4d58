-- Hands queue entries back: each entry still pending for the group is acknowledged,
-- deleted, and added again at the end of the stream for another worker to take.
-- KEYS[1] the stream; ARGV[1] the group; ARGV[2..] entry ids. Returns how many were handed back.
local n = 0
for i = 2, #ARGV do
  local entries = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
  if #entries > 0 and redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[1], '*', unpack(entries[1][2]))
    redis.call('XDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
