-- Reads what ops dashboards need in one consistent snapshot, and forgets workers silent for long.
-- KEYS[1] the fleet's counters, KEYS[2] the queue stream, KEYS[3] worker heartbeats,
-- KEYS[4] worker hosts
-- ARGV[1] the consumer group, ARGV[2] alive since (ms), ARGV[3] forget workers silent since (ms)
-- Returns {counters (flat), id of the oldest undelivered entry or false,
--          {consumer, pending count}…, {worker, last heartbeat (ms)}… (flat), hosts of those workers,
--          stream length, entries pending in the group}
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[3])
for _, name in ipairs(gone) do
  redis.call('ZREM', KEYS[3], name)
  redis.call('HDEL', KEYS[4], name)
end
local oldest = false
local consumers = {}
local length = 0
local pending_total = 0
-- Before any worker has made the group, every entry waits: the oldest is the first.
local grouped = false
if redis.call('EXISTS', KEYS[2]) == 1 then
  length = redis.call('XLEN', KEYS[2])
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
    local name, last
    for i = 1, #group, 2 do
      if group[i] == 'name' then name = group[i + 1] end
      if group[i] == 'last-delivered-id' then last = group[i + 1] end
    end
    if name == ARGV[1] then
      grouped = true
      local next = redis.call('XRANGE', KEYS[2], '(' .. last, '+', 'COUNT', 1)
      if #next > 0 then oldest = next[1][1] end
      local pending = redis.call('XPENDING', KEYS[2], ARGV[1])
      pending_total = pending[1]
      if pending[4] then consumers = pending[4] end
    end
  end
  if not grouped then
    local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
    if #first > 0 then oldest = first[1][1] end
  end
end
local workers = redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[2], '+inf', 'WITHSCORES')
local hosts = {}
for i = 1, #workers, 2 do
  hosts[#hosts + 1] = redis.call('HGET', KEYS[4], workers[i]) or ''
end
return {redis.call('HGETALL', KEYS[1]), oldest, consumers, workers, hosts, length, pending_total}
