-- Creates a job record, files it in its project's history and the owner's active set,
-- honouring an idempotency key and the per-user limit of active exports.
-- KEYS[1] the job hash, KEYS[2] the project's history, KEYS[3] the user's active set,
-- KEYS[4] the idempotency key ('' slot unused when ARGV[6] is '')
-- ARGV[1] status, ARGV[2] record, ARGV[3] score (created, ms), ARGV[4] job id,
-- ARGV[5] the active-export limit, ARGV[6] '1' when an idempotency key is given, ARGV[7] its ttl (s)
-- Returns {1, id} when created, {2, existing id} for a repeated idempotency key,
-- {3, active count} when the user is at the limit, {0, ''} when the id exists.
if ARGV[6] == '1' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {2, existing} end
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, ''} end
local active = redis.call('SCARD', KEYS[3])
if active >= tonumber(ARGV[5]) then return {3, tostring(active)} end
redis.call('HSET', KEYS[1], 'seq', 0, 'status', ARGV[1], 'record', ARGV[2], 'fence', 0)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[4])
if ARGV[6] == '1' then redis.call('SET', KEYS[4], ARGV[4], 'EX', tonumber(ARGV[7])) end
return {1, ARGV[4]}
