"""The Lua scripts that make the shared state atomic; time is Redis's own clock.

Every script takes its clock reading as the last argument: a negative value
means "use Redis ``TIME``" (production), a number injects a clock (tests).
Times cross the wire as decimal strings: Redis truncates Lua numbers to integers.
"""

from __future__ import annotations

__all__ = ["CLAIM", "CLOSE_GATE", "EPISODE", "LEDGER", "RESERVE", "TAKE", "TAKE_OVER"]

_CLOCK = """
local function clock(arg)
  local v = tonumber(arg)
  if v and v >= 0 then return v end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function num(s) return string.format('%.6f', s) end
"""

# A token bucket's refill (also the gateway's): a hash with fields `tokens` and `stamp`;
# a missing one is full; a stamp ahead of now (a gate closed) refills nothing before it.
# -> tokens, stamp as of now
_BUCKET = """
local function refill(key, rate, burst, now)
  local h = redis.call('HMGET', key, 'tokens', 'stamp')
  local tokens, stamp = tonumber(h[1]), tonumber(h[2])
  if not tokens then return burst, now end
  if now > stamp then return math.min(burst, tokens + (now - stamp) * rate), now end
  return math.min(burst, tokens), stamp
end
"""

# A token bucket shared by the fleet, leased in blocks.
# KEYS: bucket hash, gate of the kind, gate of the client scope[, paces hash[, ramps hash[,
#       the heartbeat's members zset[, the ledger list, the ledger's pending hash]]]]
# ARGV: wanted block, at least this many, rate, burst, now[, lookahead seconds[, member,
#       window seconds[, "ramp"[, the members the block is spread over, the member's last
#       block as it was spent]]]]
# A lease may borrow the tokens the next `lookahead` seconds refill (the bucket goes below
# zero): the block's first token may then be spent only after the returned delay, the rest
# at the rate, so a block is one round trip even when the fleet keeps the bucket near empty.
# With a member name the bucket refills at the slowest pace any member asked for in the last
# `window` seconds (the paces hash keeps each member's latest, "rate|time"): the fleet never
# sends faster than one of its members believes the limit allows, so a 429 never finds a
# member far below the rate that drew it. While every one of them is still ramping ("ramp":
# nothing learned yet, each pace a guess that doubles; the ramps hash keeps who is, apart, so
# members of an older version read the paces as before and count as not ramping) it refills
# at the fastest: the slowest would hold the fleet's climb a lease behind each member's,
# several times slower than one process's.
# -> {granted, seconds[, tokens the fleet was granted in all, the rate, members pacing[,
# members alive]]}: granted > 0, the delay until its first token (0: now), the fleet's running
# total, the refill rate used, how many members asked within twice the window (a gate's pause
# is about one window: those that leased before it still count at its end) and how many the
# heartbeat's set holds; or 0 and the wait.
# With a ledger, the fleet's own record of its sends (a member's 429 is fitted on it, LEDGER):
# each member reports the Redis times at which it spent its last block ("t1,t2,...", '' for
# none), appended to the list; the block granted now is kept in the pending hash under the
# member, as it will be spent (from its first token on at the member's part of the rate),
# until the member's next lease reports it. The reply then also carries Redis's time.
TAKE = (
    _CLOCK
    + _BUCKET
    + """
local now = clock(ARGV[5])
local ledger = KEYS[8] and ARGV[11]
if ledger then
  if ARGV[11] ~= '' then redis.call('RPUSH', KEYS[7], ARGV[11]) end
  redis.call('LTRIM', KEYS[7], -1024, -1)  -- ~40 blocks a second at most: over 20 s
  redis.call('HDEL', KEYS[8], ARGV[7])
  redis.call('PEXPIRE', KEYS[7], 3600000)
end
local wanted, least = tonumber(ARGV[1]), tonumber(ARGV[2])
local rate, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local ahead = tonumber(ARGV[6] or '0') or 0
local pacers = 1
if ARGV[7] then
  local window = tonumber(ARGV[8])
  local ramping = ARGV[9] == 'ramp' and KEYS[5] ~= nil
  redis.call('HSET', KEYS[4], ARGV[7], num(rate) .. '|' .. num(now))
  local ramps = {}
  if KEYS[5] then
    if ramping then
      redis.call('HSET', KEYS[5], ARGV[7], '1')
    else
      redis.call('HDEL', KEYS[5], ARGV[7])
    end
    local marks = redis.call('HGETALL', KEYS[5])
    for i = 1, #marks, 2 do ramps[marks[i]] = true end
    redis.call('PEXPIRE', KEYS[5], 3600000)
  end
  local paces = redis.call('HGETALL', KEYS[4])
  local slowest, fastest = rate, rate
  pacers = 0
  for i = 1, #paces, 2 do
    local v = paces[i + 1]
    local sep = string.find(v, '|', 1, true)
    local r, t
    if sep then r, t = tonumber(string.sub(v, 1, sep - 1)), tonumber(string.sub(v, sep + 1)) end
    if not (r and t) or t < now - 2 * window then
      redis.call('HDEL', KEYS[4], paces[i])
      if KEYS[5] then redis.call('HDEL', KEYS[5], paces[i]) end
    else
      pacers = pacers + 1
      if t >= now - window then
        if not ramps[paces[i]] then ramping = false end
        if r < slowest then slowest = r end
        if r > fastest then fastest = r end
      end
    end
  end
  if ramping then rate = fastest else rate = slowest end
  redis.call('PEXPIRE', KEYS[4], 3600000)
end
local gate = 0
for i = 2, 3 do
  local g = tonumber(redis.call('GET', KEYS[i]) or '0')
  if g > gate then gate = g end
end
if gate > now then return {0, num(gate - now)} end
local tokens, stamp = refill(KEYS[1], rate, burst, now)
local reach = tokens
if stamp <= now then reach = tokens + ahead * rate end  -- no borrowing before a reopening
local granted = math.min(wanted, math.floor(reach + 1e-9))
if granted < least then
  redis.call('HSET', KEYS[1], 'tokens', num(tokens), 'stamp', num(stamp))
  redis.call('PEXPIRE', KEYS[1], 3600000)
  return {0, num((stamp - now) + (least - reach) / rate)}
end
local start = 0
if tokens < 1 then start = (1 - tokens) / rate end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', num(tokens), 'stamp', num(stamp))
local total = redis.call('HINCRBY', KEYS[1], 'granted', granted)
redis.call('PEXPIRE', KEYS[1], 3600000)
local reply = {granted, num(start), total, num(rate), pacers}
if KEYS[6] then reply[6] = redis.call('ZCARD', KEYS[6]) end
if ledger then
  local mine = tonumber(ARGV[3])
  if ARGV[9] ~= 'ramp' then mine = math.min(mine, rate) end
  local spacing = tonumber(ARGV[10]) / mine
  local times = {}
  for i = 0, granted - 1 do times[#times + 1] = num(now + start + i * spacing) end
  redis.call('HSET', KEYS[8], ARGV[7], table.concat(times, ','))
  redis.call('PEXPIRE', KEYS[8], 3600000)
  reply[7] = num(now)
end
return reply
"""
)

# Close a gate for some seconds from now (never shortens it); buckets behind it
# keep at most one token and do not refill before it reopens.
# KEYS: gate key, bucket hashes behind the gate...   ARGV: seconds, channel, message, now
# -> the seconds the gate stays closed.
CLOSE_GATE = (
    _CLOCK
    + """
local now = clock(ARGV[4])
local deadline = now + tonumber(ARGV[1])
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
if deadline <= old then return num(old - now) end
redis.call('SET', KEYS[1], num(deadline), 'PX', math.max(1, math.ceil((deadline - now) * 1000)))
for i = 2, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'tokens', 'stamp')
  local tokens = tonumber(h[1])
  if tokens then
    redis.call('HSET', KEYS[i], 'tokens', num(math.min(tokens, 1)),
               'stamp', num(math.max(tonumber(h[2]), deadline)))
  else
    redis.call('HSET', KEYS[i], 'tokens', '1', 'stamp', num(deadline))
    redis.call('PEXPIRE', KEYS[i], 3600000)
  end
end
redis.call('PUBLISH', ARGV[2], ARGV[3] .. num(deadline - now))
return num(deadline - now)
"""
)

# The fleet's ledger, read at a 429 that begins an episode (see TAKE).
# KEYS: ledger list, pending hash, the kind's last refusal[, paces hash, ramps hash]
# ARGV: seconds since the refused send, keep, now, member, its block as spent so far[, window]
# Records the refused send's Redis time and returns the one recorded before it; the member's
# block as spent replaces the plan (the refused send is the member's own: exact).
# -> {now, the last refusal before this one (or ''), the rate the bucket refills at now as TAKE
#     reckons it (or ''), each block ("t1,t2,...") spent or pending whose first token was
#     granted within `keep` seconds}
LEDGER = (
    _CLOCK
    + """
local now = clock(ARGV[3])
if ARGV[4] and ARGV[4] ~= '' then
  redis.call('HDEL', KEYS[2], ARGV[4])
  if ARGV[5] ~= '' then redis.call('RPUSH', KEYS[1], ARGV[5]) end
end
local previous = redis.call('GET', KEYS[3]) or ''
redis.call('SET', KEYS[3], num(now - tonumber(ARGV[1])), 'PX', 3600000)
local horizon = now - tonumber(ARGV[2])
local pace = ''
if KEYS[5] then
  local ramps, slowest, fastest, ramping = {}, nil, nil, true
  local marks = redis.call('HGETALL', KEYS[5])
  for i = 1, #marks, 2 do ramps[marks[i]] = true end
  local paces = redis.call('HGETALL', KEYS[4])
  for i = 1, #paces, 2 do
    local r, t = string.match(paces[i + 1], '^([^|]+)|(.+)$')
    r, t = tonumber(r), tonumber(t)
    if r and t and t >= now - tonumber(ARGV[6]) then
      if not ramps[paces[i]] then ramping = false end
      if not slowest or r < slowest then slowest = r end
      if not fastest or r > fastest then fastest = r end
    end
  end
  if fastest then
    if ramping then pace = num(fastest) else pace = num(slowest) end
  end
end
local reply = {num(now), previous, pace}
local function keep(entry)
  local first = tonumber(string.match(entry, '^[^,]+'))
  if first and first >= horizon then reply[#reply + 1] = entry end
end
for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do keep(entry) end
for _, entry in ipairs(redis.call('HVALS', KEYS[2])) do keep(entry) end
return reply
"""
)

# Compare-and-increment of a kind's episode counter.  KEYS: counter  ARGV: seen
# A counter behind what the caller saw (it expired in an idle fleet, Redis restarted, or
# the caller counted episodes while Redis was unreachable) catches up from it.
EPISODE = """
local seen = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if current > seen then return 0 end
redis.call('SET', KEYS[1], tostring(seen + 1), 'PX', 86400000)
return 1
"""

# An idempotency claim.  KEYS: claim key  ARGV: owner, ttl ms, alive-key prefix
# Values: "claimed|owner", "sending|owner", "created|task id", "ambiguous|owner".
# -> {status, detail}: owner | created task | in_progress owner | ambiguous owner
CLAIM = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'claimed|' .. ARGV[1], 'PX', ARGV[2])
  return {'owner', ''}
end
local sep = string.find(v, '|', 1, true)
local state, who = string.sub(v, 1, sep - 1), string.sub(v, sep + 1)
if state == 'created' then return {'created', who} end
if state == 'ambiguous' then return {'ambiguous', who} end
if who ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. who) == 0 then
  if state == 'claimed' then
    redis.call('SET', KEYS[1], 'claimed|' .. ARGV[1], 'PX', ARGV[2])
    return {'owner', ''}
  end
  redis.call('SET', KEYS[1], 'ambiguous|' .. who, 'PX', ARGV[2])
  return {'ambiguous', who}
end
return {'in_progress', who}
"""

# Take an ambiguous claim over (ambiguous_creates="retry").  KEYS: claim  ARGV: owner, ttl ms
TAKE_OVER = """
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 10) ~= 'ambiguous|' then return 0 end
redis.call('SET', KEYS[1], 'claimed|' .. ARGV[1], 'PX', ARGV[2])
return 1
"""

# Reserve credits in the current budget window.
# KEYS: none   ARGV: key prefix, amount, budget, window seconds, now
# -> {1, window key} when reserved, {0, spent so far} when it would exceed the budget.
RESERVE = (
    _CLOCK
    + """
local now = clock(ARGV[5])
local key = ARGV[1] .. math.floor(now / tonumber(ARGV[4]))
local amount, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local spent = tonumber(redis.call('GET', key) or '0')
if spent + amount > budget + 1e-9 then return {0, num(spent)} end
redis.call('INCRBYFLOAT', key, ARGV[2])
redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[4]) * 2))
return {1, key}
"""
)
