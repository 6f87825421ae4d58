-- Commits a new version of a job record, and optionally its event, atomically.
-- KEYS[1]  the job hash
-- ARGV[1]  the seq the writer read (compare-and-set)
-- ARGV[2]  the new status
-- ARGV[3]  the new record (MessagePack)
-- ARGV[4]  the event envelope (MessagePack), or '' for none
-- ARGV[5]  the events channel
-- Returns the new seq, -1 when the job does not exist, -2 when the seq moved on,
-- -3 when the job is already in a state that admits no change.
local cur = redis.call('HGET', KEYS[1], 'seq')
if not cur then return -1 end
if tonumber(cur) ~= tonumber(ARGV[1]) then return -2 end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'cancelled' or status == 'failed' then return -3 end
if status == 'completed' and ARGV[2] ~= 'completed' then return -3 end
local seq = tonumber(cur) + 1
redis.call('HSET', KEYS[1], 'seq', seq, 'status', ARGV[2], 'record', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'event', ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[4])
end
return seq
