-- Creates a job record, files it in its project's history and the owner's active set,
-- honouring an idempotency key and the per-user limit of active exports.
-- KEYS[1] the job hash, KEYS[2] the project's history, KEYS[3] the user's active set,
-- KEYS[4] the idempotency key (unused when ARGV[5] is '0'), KEYS[5] the fleet's counters,
-- KEYS[6] the jobs not yet known to be queued
-- ARGV[1] status, ARGV[2] record, ARGV[3] job id, ARGV[4] the active-export limit,
-- ARGV[5] '1' when an idempotency key is given, ARGV[6] its ttl (s), ARGV[7] now (ms),
-- ARGV[8] the job's image ids, one per line (stored once beside the record, never in it),
-- ARGV[9] '1' when the image ids are given
-- Returns {1, id} when created, {2, existing id} for a repeated idempotency key,
-- {3, active count} when the user is at the limit, {0, ''} when the id exists.
if ARGV[5] == '1' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {2, existing} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ''} end
local active = redis.call('SCARD', KEYS[3])
if active >= tonumber(ARGV[4]) then return {3, tostring(active)} end
redis.call('HSET', KEYS[1], 'seq', 0, 'status', ARGV[1], 'record', ARGV[2], 'fence', 0)
if ARGV[9] == '1' then redis.call('HSET', KEYS[1], 'images', ARGV[8]) end
-- Every member scores 0, so the history reads in id order: job ids are time-ordered (UUIDv7).
redis.call('ZADD', KEYS[2], 0, ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('HINCRBY', KEYS[5], 'jobs:' .. ARGV[1], 1)
redis.call('ZADD', KEYS[6], tonumber(ARGV[7]), ARGV[3])
if ARGV[5] == '1' then redis.call('SET', KEYS[4], ARGV[3], 'EX', tonumber(ARGV[6])) end
return {1, ARGV[3]}
