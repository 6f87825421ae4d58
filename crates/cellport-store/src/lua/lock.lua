-- Takes a lock for a holder, or extends it when the holder has it already.
-- KEYS[1] the lock; ARGV[1] the holder, ARGV[2] how long it is held (ms)
-- Returns 1 when the holder has the lock now, 0 when someone else has it.
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
