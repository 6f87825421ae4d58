-- Records a finished item of a job, if the writer still holds the job's lease.
-- KEYS[1] the job hash, KEYS[2] the checkpoint hash, KEYS[3] the fleet's counters
-- ARGV[1] fence, ARGV[2] item, ARGV[3] value
-- Returns 1, or 0 when the lease is gone.
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
-- An ended (or handed-back) job has no lease owner: items finishing late are not recorded.
if not redis.call('HGET', KEYS[1], 'lease_owner') then return 0 end
-- An item redone after a takeover is counted once.
if redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[3], 'items_processed', 1)
end
return 1
