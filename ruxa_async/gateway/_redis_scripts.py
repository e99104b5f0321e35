"""The Lua scripts that make the gateway's shared state atomic across instances.

Key names are built by the caller and passed in ``KEYS`` (a ledger is the hash
``{ns}:ledger:{scope}:{period}`` with fields ``spent`` and ``held``). Amounts
cross the wire as decimal strings. Every write script is idempotent, so the
write-behind queue may replay a batch after a connection failure.
"""

from __future__ import annotations

from ..redis._scripts import _BUCKET, _CLOCK

__all__ = [
    "COMMIT",
    "LEASE",
    "LEDGERS",
    "REAP",
    "RELAYED",
    "RELEASE",
    "RESERVE",
    "SETTLE",
    "SPEND",
]

_LEDGER = """
local function unhold(key, amount, charge, ttl)
  local held = tonumber(redis.call('HGET', key, 'held') or '0') - amount
  if held < 1e-9 then held = 0 end
  redis.call('HSET', key, 'held', num(held))
  if charge > 0 then redis.call('HINCRBYFLOAT', key, 'spent', num(charge)) end
  redis.call('EXPIRE', key, ttl)
end
local function leave(key)
  local left = redis.call('DECR', key)
  if left <= 0 then redis.call('DEL', key) end
end
"""

# Check the in-flight cap, every budget and the user's shared create rate, then hold
# the amount, count the task, spend one token of the rate and note the user as active
# (the index of users the metrics list).
# KEYS: in-flight counter, pending hash, pending zset, rate bucket hash, users index zset,
#       ledger hashes...
# ARGV: reservation id, amount, max in flight (-1: none), hold seconds, payload,
#       ledger ttl seconds, now, rate per second (-1: none), burst, user,
#       then one limit per ledger (-1: none)
# -> {'ok', in flight, spent1, held1, ...} | {'in_flight', running} | {'budget', i, spent, held}
#    | {'rate', seconds until a token}
RESERVE = (
    _CLOCK
    + _BUCKET
    + """
local amount, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local now, rate, burst = clock(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local running = tonumber(redis.call('GET', KEYS[1]) or '0')
if cap >= 0 and running >= cap then return {'in_flight', tostring(running)} end
local n = #KEYS - 5
for i = 1, n do
  local limit = tonumber(ARGV[10 + i])
  if limit >= 0 then
    local h = redis.call('HMGET', KEYS[5 + i], 'spent', 'held')
    local spent, held = tonumber(h[1] or '0'), tonumber(h[2] or '0')
    if spent + held + amount > limit + 1e-9 then
      return {'budget', tostring(i), num(spent), num(held)}
    end
  end
end
local tokens, stamp = 0, now
if rate > 0 then
  tokens, stamp = refill(KEYS[4], rate, burst, now)
  if tokens < 1 then return {'rate', num((1 - tokens) / rate)} end
  redis.call('HSET', KEYS[4], 'tokens', num(tokens - 1), 'stamp', num(stamp))
  redis.call('EXPIRE', KEYS[4], math.ceil(burst / rate) + 60)
end
local out = {'ok', tostring(redis.call('INCR', KEYS[1]))}
for i = 1, n do
  redis.call('HINCRBYFLOAT', KEYS[5 + i], 'held', ARGV[2])
  redis.call('EXPIRE', KEYS[5 + i], ARGV[6])
  local h = redis.call('HMGET', KEYS[5 + i], 'spent', 'held')
  out[#out + 1] = h[1] or '0'
  out[#out + 1] = h[2] or '0'
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[5])
redis.call('ZADD', KEYS[3], num(now + tonumber(ARGV[4])), ARGV[1])
redis.call('ZADD', KEYS[5], num(now), ARGV[10])
return out
"""
)

# Record a created task; its reservation stops being pending. A reservation the
# reaper already booked as spent leaves the task marked ``charged``.
# KEYS: task hash, pending hash, pending zset, open zset (by creation time)
# ARGV: reservation id, task id, created, then field/value pairs   -> 1 recorded, 0 already there
COMMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local charged = '0'
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then charged = '1' end
redis.call('ZREM', KEYS[3], ARGV[1])
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], 'charged', charged, 'settled', '0', unpack(fields))
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
return 1
"""

# Drop a reservation whose create failed; optionally book it as spent.
# KEYS: pending hash, pending zset, in-flight counter, ledger hashes...
# ARGV: reservation id, amount, charge (0/1), ledger ttl   -> 1 released, 0 already gone
RELEASE = (
    _CLOCK
    + _LEDGER
    + """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
local amount = tonumber(ARGV[2])
local charge = 0
if ARGV[3] == '1' then charge = amount end
for i = 4, #KEYS do unhold(KEYS[i], amount, charge, ARGV[4]) end
leave(KEYS[3])
return 1
"""
)

# Book a finished task's cost once.
# KEYS: task hash, open zset, in-flight counter, ledger hashes...
# ARGV: task id, cost, state, final JSON ('' for none), keep seconds, ledger ttl
# -> {1, credits booked as spent} settled now, 0 settled before, -1 unknown
SETTLE = (
    _CLOCK
    + _LEDGER
    + """
local h = redis.call('HMGET', KEYS[1], 'settled', 'reserved', 'charged')
if not h[1] then return -1 end
if h[1] == '1' then return 0 end
local reserved, cost = tonumber(h[2] or '0'), tonumber(ARGV[2])
if h[3] == '1' then
  reserved, cost = 0, 0
end
for i = 4, #KEYS do unhold(KEYS[i], reserved, cost, ARGV[6]) end
leave(KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'settled', '1', 'cost', ARGV[2], 'state', ARGV[3], 'final', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {1, num(cost)}
"""
)

# Book reservations nobody committed or released in time (their gateway died
# mid-create) as spent, like an ambiguous create.
# KEYS: pending hash, pending zset   ARGV: key prefix, ledger ttl, at most this many, now
# -> {user, credits booked as spent, ...} of each reaped hold still pending
REAP = (
    _CLOCK
    + _LEDGER
    + """
local now = clock(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', num(now), 'LIMIT', 0, ARGV[3])
local booked = {}
for _, rid in ipairs(due) do
  local payload = redis.call('HGET', KEYS[1], rid)
  redis.call('HDEL', KEYS[1], rid)
  redis.call('ZREM', KEYS[2], rid)
  if payload then
    local p = cjson.decode(payload)
    for _, ledger in ipairs(p['ledgers']) do unhold(ledger, p['amount'], p['amount'], ARGV[2]) end
    leave(ARGV[1] .. 'inflight:' .. p['user'])
    booked[#booked + 1] = p['user']
    booked[#booked + 1] = num(p['amount'])
  end
end
return booked
"""
)

# Note a state relayed to the task's owner, in the task's own hash (never creates one).
# KEYS: task hash   ARGV: state   -> 1 noted, 0 no such task
RELAYED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'relayed:' .. ARGV[1], '1')
return 1
"""

# Lease up to ``wanted`` whole tokens of a user's request rate for one instance to spend
# locally. The bucket is the one RESERVE spends a create from, so creates and queries
# share it; a lease only takes tokens the bucket holds, so the fleet never admits more.
# KEYS: rate bucket hash   ARGV: wanted, rate per second, burst, now
# -> {tokens leased, seconds until a token ('0' when some were leased)}
LEASE = (
    _CLOCK
    + _BUCKET
    + """
local wanted, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = clock(ARGV[4])
local tokens, stamp = refill(KEYS[1], rate, burst, now)
local got = math.min(wanted, math.floor(tokens + 1e-9))
if got < 1 then return {0, num((1 - tokens) / rate)} end
redis.call('HSET', KEYS[1], 'tokens', num(tokens - got), 'stamp', num(stamp))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return {got, '0'}
"""
)

# Add credits to a user's spend in the current epoch and tell whether it jumped far above
# the user's baseline (an exponentially weighted mean of earlier epochs, empty ones as zero);
# a jump is flagged at most once per cool-down across every instance.
# KEYS: spend hash   ARGV: credits, now, factor, minimum, epoch seconds, cool-down, ttl
# -> {1 if it jumped now else 0, epoch spend, baseline}
SPEND = (
    _CLOCK
    + """
local credits, now = tonumber(ARGV[1]), clock(ARGV[2])
local factor, least = tonumber(ARGV[3]), tonumber(ARGV[4])
local epoch, cool = tonumber(ARGV[5]), tonumber(ARGV[6])
local h = redis.call('HMGET', KEYS[1], 'start', 'total', 'baseline', 'alerted')
local start, total = tonumber(h[1]) or now, tonumber(h[2]) or 0
local baseline, alerted = tonumber(h[3]) or 0, tonumber(h[4]) or -cool
local elapsed = now - start
if elapsed >= epoch then
  local epochs = math.floor(elapsed / epoch)
  baseline = (0.7 * baseline + 0.3 * total) * (0.7 ^ (epochs - 1))
  start = start + epochs * epoch
  total = 0
end
total = total + credits
local jumped = 0
if total >= math.max(factor * baseline, least) and now - alerted >= cool then
  alerted, jumped = now, 1
end
redis.call('HSET', KEYS[1], 'start', num(start), 'total', num(total),
  'baseline', num(baseline), 'alerted', num(alerted))
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[7])))
return {jumped, num(total), num(baseline)}
"""
)

# Read the budget ledgers the metrics show, in one call: the given users' ledgers, then
# those of the most recently active users of the index (in the default period) that have
# a ledger in it. Read only; the cost is bounded by the users given plus the limit.
# KEYS: users index zset
# ARGV: key prefix, at most this many users of the index, the default period,
#       then user, period pairs
# -> {users in the index, JSON [user, spent, held, ...] (one string: quick to decode)}
LEDGERS = """
local prefix, limit, default = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out, seen = {}, {}
for i = 4, #ARGV, 2 do
  local user = ARGV[i]
  seen[user] = true
  local h = redis.call('HMGET', prefix .. 'ledger:user:' .. user .. ':' .. ARGV[i + 1],
    'spent', 'held')
  out[#out + 1] = user
  out[#out + 1] = h[1] or '0'
  out[#out + 1] = h[2] or '0'
end
if limit > 0 then
  for _, user in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, limit - 1)) do
    if not seen[user] then
      local h = redis.call('HMGET', prefix .. 'ledger:user:' .. user .. ':' .. default,
        'spent', 'held')
      if h[1] or h[2] then
        out[#out + 1] = user
        out[#out + 1] = h[1] or '0'
        out[#out + 1] = h[2] or '0'
      end
    end
  end
end
return {redis.call('ZCARD', KEYS[1]), cjson.encode(out)}
"""
