-- Commits a new version of a job record, and optionally its event, atomically.
-- KEYS[1]  the job hash
-- KEYS[2]  the job's checkpoint hash (dropped when the job ends)
-- KEYS[3]  the owner's set of active jobs (the job leaves it when it ends)
-- KEYS[4]  the archives' expiry schedule
-- KEYS[5]  the fleet's counters (jobs by status, events published, job durations)
-- KEYS[6]  the jobs not yet known to be queued (a job enters it when it becomes pending again)
-- KEYS[7…] the recent-jobs index of each user the job is filed for (its audience, or a new member)
-- ARGV[1]  the seq the writer read (compare-and-set)
-- ARGV[2]  the new status
-- ARGV[3]  the new record (MessagePack)
-- ARGV[4]  the event envelope (MessagePack), or '' for none
-- ARGV[5]  the events channel
-- ARGV[6]  the writer's lease fence, or '' for a writer without a lease (the api)
-- ARGV[7]  the cancellations channel
-- ARGV[8]  the job id
-- ARGV[9]  when the archive expires (ms), or ''
-- ARGV[10] now (ms): the score in the recent-jobs indexes
-- ARGV[11] how long a recent-jobs index remembers a job (ms)
-- ARGV[12] the duration histogram's bucket field when the job completes, or ''
-- ARGV[13] the job's processing time (ms) when it completes
-- ARGV[14] the changes channel: every commit announces the job id there, event or not
-- Returns the new seq, -1 when the job does not exist, -2 when the seq moved on,
-- -3 when the job is in a state that admits no change, -4 when the writer's lease is gone.
local cur = redis.call('HGET', KEYS[1], 'seq')
if not cur then return -1 end
if tonumber(cur) ~= tonumber(ARGV[1]) then return -2 end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'cancelled' or status == 'failed' then return -3 end
if status == 'completed' and ARGV[2] ~= 'completed' then return -3 end
if ARGV[6] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[6] then return -4 end
local seq = tonumber(cur) + 1
redis.call('HSET', KEYS[1], 'seq', seq, 'status', ARGV[2], 'record', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'event', ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[4])
  redis.call('HINCRBY', KEYS[5], 'events_published', 1)
end
redis.call('PUBLISH', ARGV[14], ARGV[8])
local new = ARGV[2]
if new ~= status then
  redis.call('HINCRBY', KEYS[5], 'jobs:' .. status, -1)
  redis.call('HINCRBY', KEYS[5], 'jobs:' .. new, 1)
  if new == 'completed' and ARGV[12] ~= '' then
    redis.call('HINCRBY', KEYS[5], ARGV[12], 1)
    redis.call('HINCRBY', KEYS[5], 'duration_ms_sum', tonumber(ARGV[13]))
  end
end
local now = tonumber(ARGV[10])
if new ~= status and status == 'pending' then redis.call('ZREM', KEYS[6], ARGV[8]) end
if new == 'pending' and status ~= 'pending' then redis.call('ZADD', KEYS[6], now, ARGV[8]) end
for i = 7, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[8])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - tonumber(ARGV[11]))
end
if new == 'completed' or new == 'failed' or new == 'cancelled' then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[8])
  -- No attempt will read the job's image set again.
  redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_expires', 'images')
  if new == 'cancelled' then redis.call('PUBLISH', ARGV[7], ARGV[8]) end
  if new == 'completed' and ARGV[9] ~= '' then redis.call('ZADD', KEYS[4], ARGV[9], ARGV[8]) end
elseif new == 'pending' then
  -- Handed back: the next worker may take it at once.
  redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_expires')
end
return seq
