-- Acknowledges finished queue entries and deletes them, so the stream holds only
-- entries that are waiting or in flight and XLEN is the queue depth.
-- KEYS[1] the stream; ARGV[1] the group; ARGV[2..] entry ids. Returns how many were acknowledged.
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
end
return n
