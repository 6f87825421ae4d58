-- Renews a job's lease and keeps its queue entry fresh in the owner's pending list,
-- so that XAUTOCLAIM takes only entries of workers that stopped renewing.
-- KEYS[1] the job hash, KEYS[2] the stream
-- ARGV[1] fence, ARGV[2] now (ms), ARGV[3] ttl (ms), ARGV[4] group, ARGV[5] worker, ARGV[6] entry id
-- Returns 1 when renewed, 0 when the lease is gone (another fence, or the job ended).
if redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then return 0 end
if not redis.call('HGET', KEYS[1], 'lease_owner') then return 0 end
redis.call('HSET', KEYS[1], 'lease_expires', tonumber(ARGV[2]) + tonumber(ARGV[3]))
redis.call('XCLAIM', KEYS[2], ARGV[4], ARGV[5], 0, ARGV[6], 'JUSTID')
return 1
