-- Takes the lease of a job for a worker, with a new fencing token.
-- KEYS[1] the job hash; ARGV[1] worker, ARGV[2] now (ms), ARGV[3] lease ttl (ms)
-- Returns the fence (> 0), -1 when the job does not exist, -2 when another worker holds a live
-- lease, -3 when the job has ended.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'completed' or status == 'failed' or status == 'cancelled' then return -3 end
local owner = redis.call('HGET', KEYS[1], 'lease_owner')
local expires = tonumber(redis.call('HGET', KEYS[1], 'lease_expires') or '0')
if owner and owner ~= ARGV[1] and expires > tonumber(ARGV[2]) then return -2 end
local fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'lease_owner', ARGV[1], 'lease_expires', tonumber(ARGV[2]) + tonumber(ARGV[3]))
return fence
