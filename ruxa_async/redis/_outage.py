"""The fleet's outage gate in Redis: one process noticing an outage pauses all, one probes.

``RedisCoordinator.outage`` is a :class:`RedisOutage`; every client built with
that coordinator gets a :class:`~ruxa_async._fleet_outage.SharedOutageGate`
from it. Per base URL (``K`` is a short hash of it):

* ``NS:outage:K`` (a hash): the outage on record, ``start`` in Redis's own
  clock (milliseconds, so processes with different clocks agree on its age)
  and the ``probes`` granted so far. Every prober's turn keeps it alive; with
  no process waiting for ``record_ttl()`` seconds it expires, so a record that
  outlived its outage (its recovery unannounced, a fleet that died) cannot
  make a later outage look older than it is;
* ``NS:outage:K:probe``: the probe lease, ``SET PX`` with the current backoff
  step (``probe_initial`` doubling to ``probe_max``): while it lives no other
  process probes. The record and the lease change only in Lua scripts, so two
  processes never both take one lease;
* ``outage|down|K|ORIGIN|CONTACTED|CAUSE`` and ``outage|up|K|ORIGIN`` on the
  coordinator's pub/sub channel tell every process at once; a process that
  missed a message learns the news at its prober's next turn.

Every call goes through the coordinator's :class:`Store`: bounded by its
timeout, and when Redis cannot be reached the gates fall back to the
in-process rules (the store logs one WARNING per Redis outage).
"""

from __future__ import annotations

from .._config import OutagePolicy
from .._fleet_outage import OutageShare, Turn, record_ttl
from ._store import Store

__all__ = ["RedisOutage", "RedisOutageLink"]

_DOWN = """
-- KEYS[1] the outage record, KEYS[2] the probe lease
-- ARGV[1] ms before the first probe, ARGV[2] record ttl ms, ARGV[3] channel, ARGV[4] message
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'start', now, 'probes', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], '', 'PX', ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

_TURN = """
-- KEYS[1] the outage record, KEYS[2] the probe lease
-- ARGV[1] holder, ARGV[2] probe_initial ms, ARGV[3] probe_max ms, ARGV[4] record ttl ms
-- returns {verdict, wait ms, age ms}: 1 probe now, 0 wait, 2 no outage on record
local start = redis.call('HGET', KEYS[1], 'start')
if not start then return {2, 0, 0} end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local age = now - tonumber(start)
local left = redis.call('PTTL', KEYS[2])
if left > 0 then return {0, left, age} end
local n = redis.call('HINCRBY', KEYS[1], 'probes', 1)
local delay = math.min(tonumber(ARGV[2]) * 2 ^ n, tonumber(ARGV[3]))
redis.call('SET', KEYS[2], ARGV[1], 'PX', math.max(1, math.floor(delay)))
return {1, 0, age}
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisOutageLink:
    """The :class:`~ruxa_async._fleet_outage.OutageLink` kept in Redis (see the module)."""

    def __init__(self, store: Store, *, channel: str) -> None:
        self._store = store
        self._channel = channel
        self._down = store.script(_DOWN)
        self._turn = store.script(_TURN)

    def _keys(self, key: str) -> list[str]:
        return [self._store.key("outage", key), self._store.key("outage", key, "probe")]

    async def announce_down(
        self, key: str, *, origin: str, cause: str, contacted: bool, policy: OutagePolicy
    ) -> None:
        """Record the outage (unless one is on record) and publish it, in one script."""
        message = "|".join(("outage", "down", key, origin, "1" if contacted else "0", cause))
        args = [_ms(policy.probe_initial), _ms(record_ttl(policy)), self._channel, message]
        await self._store.call(lambda: self._down(keys=self._keys(key), args=args))

    async def announce_up(self, key: str, *, origin: str) -> None:
        """Clear the record and the lease, and publish the recovery."""
        store = self._store

        async def op() -> None:
            async with store.redis.pipeline(transaction=True) as pipe:
                pipe.delete(*self._keys(key))
                pipe.publish(self._channel, "|".join(("outage", "up", key, origin)))
                await pipe.execute()

        await store.call(op)

    async def turn(self, key: str, holder: str, policy: OutagePolicy) -> Turn | None:
        """Take the probe lease if it is free; None when Redis cannot be reached."""
        ttl = _ms(record_ttl(policy))
        args = [holder, _ms(policy.probe_initial), _ms(policy.probe_max), ttl]
        reply = await self._store.call(lambda: self._turn(keys=self._keys(key), args=args))
        if reply is None:
            return None
        verdict, wait_ms, age_ms = (int(part) for part in reply)
        if verdict == 2:
            return Turn(probe=True)
        wait = wait_ms / 1000 if verdict == 0 else 0.0
        return Turn(probe=verdict == 1, wait=wait, age=age_ms / 1000)


class RedisOutage(OutageShare):
    """A coordinator's outage sharing: gates for its clients, and its channel's outage news."""

    def __init__(self, store: Store, *, channel: str) -> None:
        super().__init__(RedisOutageLink(store, channel=channel), close_timeout=store.timeout)

    def on_message(self, text: str) -> None:
        """An ``outage|...`` message from the coordinator's channel, without its ``outage|``.

        Raises ValueError on a malformed one (the coordinator logs and ignores it).
        """
        kind, _, rest = text.partition("|")
        if kind == "down":
            key, origin, contacted, cause = rest.split("|", 3)
            self.deliver_down(key, origin=origin, cause=cause, contacted=contacted == "1")
        elif kind == "up":
            key, origin = rest.split("|", 1)
            self.deliver_up(key, origin=origin)
        else:
            raise ValueError(f"unknown outage message {kind!r}")
