r"""The registry's rules as Lua run inside Redis: each call is one atomic step.

Redis runs a script to the end before any other command, so a claim reads and
writes a name with nothing in between: two routers claiming one name at the
same instant are ordered, and the second sees the first's owner (rule 8 in
``router.registry.model``). Time is the server's (``TIME``), one clock for the
whole cluster. Scripts build their keys from the prefix in ARGV, so they run
on a single Redis primary (with replicas or Sentinel), not on a sharded Redis
Cluster.

Keys under the prefix P (see docs/cluster.md)::

    P name:<name>     hash: owner, generation, reserved_until (ms; 0 while held)
    P holders:<name>  hash: router id -> "<lease expiry ms> <connection id>"
    P router:<id>     set: the names this router holds (for release_router)
    P generation      counter: every change of any name's holders INCRs it; starts
                      at the server's time in microseconds (monotonic across a restart)
    P routes          pub/sub channel: "<generation> <name>" on every change

Every script takes ARGV = prefix, reservation_ms, lease_ms, then its own.
A name's two keys expire (PEXPIREAT) when its last lease plus the reservation
runs out, so Redis forgets abandoned names by itself; until then every read
first *settles* the name: lapsed leases are dropped and a name left with no
holder is reserved from the moment its last lease lapsed.
"""

from __future__ import annotations

_PRELUDE = r"""
local prefix = ARGV[1]
local reservation_ms = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function name_key(name) return prefix .. 'name:' .. name end
local function holders_key(name) return prefix .. 'holders:' .. name end
local function router_key(router) return prefix .. 'router:' .. router end

local function split(value)  -- "<expiry ms> <connection id>"
  local space = string.find(value, ' ', 1, true)
  return tonumber(string.sub(value, 1, space - 1)), string.sub(value, space + 1)
end

-- A new fencing token for the name, announced to every router's route cache.
-- A missing counter (a new or restarted, empty Redis) starts at the server's
-- time in microseconds, so tokens keep growing across a restart that lost them.
local function changed(name)
  local counter = prefix .. 'generation'
  if redis.call('EXISTS', counter) == 0 then
    redis.call('SET', counter, string.format('%.0f', now * 1000))
  end
  local generation = redis.call('INCR', counter)
  redis.call('PUBLISH', prefix .. 'routes', string.format('%.0f %s', generation, name))
  return generation
end

local function forget(name)
  changed(name)
  redis.call('DEL', name_key(name), holders_key(name))
end

-- Both keys live until the last lease plus the reservation (or the reservation) ends.
local function expire_keys(name)
  local last = tonumber(redis.call('HGET', name_key(name), 'reserved_until') or '0')
  local flat = redis.call('HGETALL', holders_key(name))
  for i = 2, #flat, 2 do
    local expires = split(flat[i])
    if expires + reservation_ms > last then last = expires + reservation_ms end
  end
  redis.call('PEXPIREAT', name_key(name), last)
  redis.call('PEXPIREAT', holders_key(name), last)
end

-- The last holder left at `since`: keep the name for its owner, or free it.
local function reserve(name, since)
  local until_ms = since + reservation_ms
  if until_ms <= now then
    forget(name)
    return 'free'
  end
  redis.call('HSET', name_key(name), 'reserved_until', until_ms,
             'generation', changed(name))
  expire_keys(name)
  return 'reserved'
end

-- Bring the name up to date at `now`; returns 'free', 'held' or 'reserved'.
local function settle(name)
  if redis.call('EXISTS', name_key(name)) == 0 then
    redis.call('DEL', holders_key(name))
    return 'free'
  end
  local flat = redis.call('HGETALL', holders_key(name))
  local live, lapsed_at = 0, 0
  for i = 1, #flat, 2 do
    local expires = split(flat[i + 1])
    if expires <= now then
      redis.call('HDEL', holders_key(name), flat[i])
      redis.call('SREM', router_key(flat[i]), name)
      if expires > lapsed_at then lapsed_at = expires end
    else
      live = live + 1
    end
  end
  if live > 0 then
    if lapsed_at > 0 then
      redis.call('HSET', name_key(name), 'generation', changed(name))
      expire_keys(name)
    end
    return 'held'
  end
  if lapsed_at > 0 then return reserve(name, lapsed_at) end
  local reserved_until = tonumber(redis.call('HGET', name_key(name), 'reserved_until') or '0')
  if reserved_until > now then return 'reserved' end
  forget(name)
  return 'free'
end

-- Remove one router's holder (known to exist) and record the change.
-- keep_reserved false: the job ended, a name left with no holder is freed at once.
local function drop_holder(name, router, keep_reserved)
  redis.call('HDEL', holders_key(name), router)
  redis.call('SREM', router_key(router), name)
  if redis.call('HLEN', holders_key(name)) == 0 then
    if keep_reserved == false then
      forget(name)
    else
      reserve(name, now)
    end
  else
    redis.call('HSET', name_key(name), 'generation', changed(name))
    expire_keys(name)
  end
end

-- Claim (or, with renewing, renew) one name for one connection on one router.
-- Returns {'ok', kind, generation, replaced connection or ''} or {'taken', state}
-- or {'superseded', ''}.
local function claim(name, owner, router, connection, renewing)
  local state = settle(name)
  if state ~= 'free' and redis.call('HGET', name_key(name), 'owner') ~= owner then
    return {'taken', state}
  end
  local previous = redis.call('HGET', holders_key(name), router)
  local kind, replaced = 'new', ''
  if previous then
    local _, was = split(previous)
    if was == connection then
      kind = 'kept'
    elseif renewing then
      return {'superseded', ''}
    else
      kind, replaced = 'replaced', was
    end
  elseif state == 'held' then
    kind = 'joined'
  end
  redis.call('HSET', holders_key(name), router,
             string.format('%.0f %s', now + lease_ms, connection))
  redis.call('SADD', router_key(router), name)
  -- every lease of this router ends by now + lease_ms, so its index may too
  redis.call('PEXPIRE', router_key(router), lease_ms)
  local generation
  if kind == 'kept' then
    generation = tonumber(redis.call('HGET', name_key(name), 'generation'))
  else
    generation = changed(name)
  end
  redis.call('HSET', name_key(name), 'owner', owner, 'reserved_until', 0,
             'generation', generation)
  expire_keys(name)
  return {'ok', kind, generation, replaced}
end
"""

# ARGV[4..7] = name, owner, router id, connection id.
CLAIM = (
    _PRELUDE
    + r"""
return claim(ARGV[4], ARGV[5], ARGV[6], ARGV[7], false)
"""
)

# ARGV[4] = router id, then (name, owner, connection id) per lease; one reply per lease.
RENEW = (
    _PRELUDE
    + r"""
local replies = {}
for i = 5, #ARGV, 3 do
  replies[#replies + 1] = claim(ARGV[i], ARGV[i + 1], ARGV[4], ARGV[i + 2], true)
end
return replies
"""
)

# ARGV[4..7] = name, router id, connection id, "1" to reserve the name if no holder is
# left ("0": the job ended, free it). Returns 1 if it held the name, else 0.
RELEASE = (
    _PRELUDE
    + r"""
local name, router, connection = ARGV[4], ARGV[5], ARGV[6]
local keep_reserved = ARGV[7] ~= '0'
if settle(name) ~= 'held' then return 0 end
local current = redis.call('HGET', holders_key(name), router)
if not current then return 0 end
local _, was = split(current)
if was ~= connection then return 0 end
drop_holder(name, router, keep_reserved)
return 1
"""
)

# ARGV[4] = router id. Returns how many names it held.
RELEASE_ROUTER = (
    _PRELUDE
    + r"""
local router = ARGV[4]
local released = 0
for _, name in ipairs(redis.call('SMEMBERS', router_key(router))) do
  if settle(name) == 'held' and redis.call('HEXISTS', holders_key(name), router) == 1 then
    drop_holder(name, router)
    released = released + 1
  end
end
redis.call('DEL', router_key(router))
return released
"""
)

# ARGV[4] = name. Returns nil if free, else {owner, generation, reserved_until, flat holders}.
LOOKUP = (
    _PRELUDE
    + r"""
local name = ARGV[4]
if settle(name) == 'free' then return nil end
local fields = redis.call('HMGET', name_key(name), 'owner', 'generation', 'reserved_until')
return {fields[1], fields[2], fields[3], redis.call('HGETALL', holders_key(name))}
"""
)
