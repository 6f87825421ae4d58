-- Drops a second queue entry of a job whose run holds the lease from another entry.
-- KEYS[1] the job hash, KEYS[2] the stream
-- ARGV[1] the run's fence, ARGV[2] the group, ARGV[3] the worker, ARGV[4] the run's entry,
-- ARGV[5] the duplicate entry
-- Returns 1 when the duplicate is gone. Returns 0, changing nothing, unless the run still holds
-- the lease and its own entry still exists (claimed back to the worker here, as a renewal
-- would): the job is never left without an entry.
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'lease_owner') ~= ARGV[3] then return 0 end
local kept = redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'JUSTID')
if #kept == 0 then return 0 end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[5])
redis.call('XDEL', KEYS[2], ARGV[5])
return 1
