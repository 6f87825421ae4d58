-- Creates a job record and files it in its project's history.
-- KEYS[1] the job hash, KEYS[2] the project's history sorted set
-- ARGV[1] status, ARGV[2] record (MessagePack), ARGV[3] score (created, ms), ARGV[4] job id
-- Returns 1, or 0 when a job with this id already exists.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'seq', 0, 'status', ARGV[1], 'record', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
