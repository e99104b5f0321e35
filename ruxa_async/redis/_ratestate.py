"""The rate controller's state in Redis (:class:`ruxa_async._ratestate.RateState`).

Tokens are *leased*: one atomic script call takes a small block (about
``lease_seconds`` of the current rate, at most ``max_lease``) from the fleet's
shared bucket, and this process spends it from memory, so a permit is not a
Redis round trip. Unspent tokens expire after ``lease_ttl`` and are dropped
when a gate closes. The 429 gate is answered from a local copy that every
process updates at once through pub/sub and through each lease reply (it errs
toward closed: a local close is seen before Redis is told).

When Redis is unreachable every method answers from a :class:`LocalRateState`
holding this process's share (the learned rate divided by the live members).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable

import attrs

from .._ratestate import GateScope, Kind, LearnedLimit, LocalRateState
from . import _scripts
from ._store import Store

__all__ = ["RedisRateState"]

_TICKS = 10  # accepted-request counters per second
_LAG = 3  # ticks left out at the recent end (not flushed everywhere yet)
_WINDOW = 5  # ticks summed
_MIN_SAMPLES = 20

_KINDS_OF: dict[str, tuple[Kind, ...]] = {
    "create": ("create",),
    "query": ("query",),
    "client": ("create", "query"),
}
_SCOPES_OF: dict[Kind, tuple[GateScope, GateScope]] = {
    "create": ("create", "client"),
    "query": ("query", "client"),
}


class _Lease:
    __slots__ = ("expires", "lock", "next_at", "tokens")

    def __init__(self) -> None:
        self.tokens = 0
        self.expires = 0.0
        self.next_at = 0.0  # leased tokens are spent at the rate, not in a burst
        self.lock = asyncio.Lock()


class RedisRateState:
    """A :class:`RateState` shared through Redis; made by ``RedisCoordinator``."""

    def __init__(
        self,
        store: Store,
        *,
        channel: str,
        lease_seconds: float = 0.05,
        max_lease: int = 16,
        lease_ttl: float = 0.5,
        read_ttl: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._channel = channel
        self._lease_seconds = lease_seconds
        self._max_lease = max_lease
        self._lease_ttl = lease_ttl
        self._read_ttl = read_ttl
        self._clock = clock
        self._take = store.script(_scripts.TAKE)
        self._close = store.script(_scripts.CLOSE_GATE)
        self._episode = store.script(_scripts.EPISODE)
        self._leases: dict[Kind, _Lease] = {"create": _Lease(), "query": _Lease()}
        self._gates: dict[str, float] = {}  # scope -> local monotonic deadline
        self._learned: dict[Kind, tuple[float, LearnedLimit | None]] = {}
        self._episodes: dict[Kind, int] = {"create": 0, "query": 0}
        self.local = LocalRateState(clock)
        self.members = 1
        self.leases = 0
        self.leased_tokens = 0
        self.remote_pauses = 0
        self._admitted: dict[Kind, int] = {"create": 0, "query": 0}

    def _key(self, *parts: str) -> str:
        return self._store.key("rate", *parts)

    # ---------------------------------------------------------------- learned

    async def read(self, kind: Kind) -> LearnedLimit | None:
        """See :meth:`RateState.read` (cached for ``read_ttl``)."""
        now = self._clock()
        cached = self._learned.get(kind)
        if cached is not None and now - cached[0] < self._read_ttl:
            return cached[1]
        raw = await self._store.call(lambda: self._store.redis.get(self._key("learned", kind)))
        if self._store.degraded:
            return await self.local.read(kind)
        learned = _decode(raw) if raw is not None else None
        self._learned[kind] = (now, learned)
        if learned is not None:
            await self.local.write(kind, learned)
        return learned

    async def write(self, kind: Kind, learned: LearnedLimit) -> None:
        """See :meth:`RateState.write` (last writer wins; other processes re-read at once)."""
        await self.local.write(kind, learned)
        self._learned[kind] = (self._clock(), learned)
        payload = _encode(learned)

        async def op() -> None:
            async with self._store.redis.pipeline(transaction=False) as pipe:
                pipe.set(self._key("learned", kind), payload, ex=3600)
                pipe.publish(self._channel, f"learned|{kind}")
                await pipe.execute()

        await self._store.call(op)

    def invalidate(self, kind: str) -> None:
        """Another process wrote a learned limit: read it again next time."""
        self._learned.pop(kind, None)  # type: ignore[call-overload]

    # --------------------------------------------------------------- episodes

    async def begin_episode(self, kind: Kind, seen: int) -> bool:
        """See :meth:`RateState.begin_episode` (atomic in Redis)."""
        result = await self._store.call(
            lambda: self._episode(keys=[self._key("episode", kind)], args=[seen])
        )
        if result is None:
            return await self.local.begin_episode(kind, seen)
        return bool(int(result))

    # ------------------------------------------------------------------ gates

    async def close_gate(self, scope: GateScope, seconds: float) -> None:
        """See :meth:`RateState.close_gate`; the fleet hears of it through pub/sub."""
        self._close_locally(scope, seconds)
        await self.local.close_gate(scope, seconds)
        keys = [self._key("gate", scope)] + [self._key("bucket", kind) for kind in _KINDS_OF[scope]]
        await self._store.call(
            lambda: self._close(
                keys=keys, args=[f"{seconds:.6f}", self._channel, f"gate|{scope}|", -1]
            )
        )

    def on_gate(self, scope: str, seconds: float) -> None:
        """Another process closed ``scope`` for ``seconds`` (a pub/sub message)."""
        if scope in _KINDS_OF and self._close_locally(scope, seconds):  # type: ignore[arg-type]
            self.remote_pauses += 1

    def _close_locally(self, scope: GateScope, seconds: float) -> bool:
        deadline = self._clock() + max(0.0, seconds)
        if deadline <= self._gates.get(scope, 0.0):
            return False
        self._gates[scope] = deadline
        for kind in _KINDS_OF[scope]:
            self._leases[kind].tokens = 0
        return True

    async def gate_remaining(self, scope: GateScope) -> float:
        """See :meth:`RateState.gate_remaining` (from the local copy)."""
        return max(0.0, self._gates.get(scope, 0.0) - self._clock())

    # ----------------------------------------------------------------- tokens

    async def take(self, kind: Kind, count: int, rate: float, burst: float) -> float:
        """See :meth:`RateState.take`: from the local lease, else a new block from Redis."""
        lease = self._leases[kind]
        spacing = self._spacing(lease, rate)
        if spacing > 0:
            return spacing
        if self._from_lease(lease, count, rate):
            return 0.0
        if self._store.degraded:
            share = max(1, self.members)
            return await self.local.take(kind, count, rate / share, max(1.0, burst / share))
        async with lease.lock:
            if self._from_lease(lease, count, rate):
                return 0.0
            block = max(count, min(self._max_lease, math.ceil(rate * self._lease_seconds)))
            block = min(block, max(count, int(burst)))
            gate_keys = [self._key("gate", scope) for scope in _SCOPES_OF[kind]]
            keys = [self._key("bucket", kind), *gate_keys]
            reply = await self._store.call(
                lambda: self._take(keys=keys, args=[block, count, rate, burst, -1])
            )
            if reply is None:
                share = max(1, self.members)
                return await self.local.take(kind, count, rate / share, max(1.0, burst / share))
            granted, wait = int(reply[0]), float(reply[1])
            if granted == 0:
                return wait
            self.leases += 1
            self.leased_tokens += granted
            now = self._clock()
            lease.tokens = granted - count
            lease.expires = now + self._lease_ttl
            lease.next_at = max(now, lease.next_at) + count / rate
            return 0.0

    def _spacing(self, lease: _Lease, rate: float) -> float:
        return max(0.0, lease.next_at - self._clock())

    def _from_lease(self, lease: _Lease, count: int, rate: float) -> bool:
        now = self._clock()
        if lease.tokens >= count and now < lease.expires:
            lease.tokens -= count
            lease.next_at = max(now, lease.next_at) + count / rate
            return True
        return False

    # ------------------------------------------------------ admitted counting

    def note_admitted(self, kind: Kind) -> None:
        """Count one request of ``kind`` that the service accepted (flushed in the background)."""
        self._admitted[kind] += 1

    async def flush_admitted(self) -> None:
        """Add this process's accepted requests to the fleet's per-100 ms counters."""
        counts = {kind: n for kind, n in self._admitted.items() if n}
        if not counts:
            return
        tick = int(time.time() * _TICKS)

        async def op() -> bool:
            async with self._store.redis.pipeline(transaction=False) as pipe:
                for kind, n in counts.items():
                    key = self._key("ok", kind, str(tick))
                    pipe.incrby(key, n)
                    pipe.expire(key, 10)
                await pipe.execute()
            return True

        await self._store.call(op)  # lost while Redis is down: only a measure
        for kind, n in counts.items():
            self._admitted[kind] -= n

    async def admitted_rate(self, kind: Kind) -> float | None:
        """The fleet's accepted requests per second of ``kind`` over a recent half second.

        The window ends ``_LAG`` ticks ago (every process has flushed by then);
        None when it holds fewer than ``_MIN_SAMPLES`` requests (too few to say).
        """
        await self.flush_admitted()
        tick = int(time.time() * _TICKS)
        keys = [self._key("ok", kind, str(tick - i)) for i in range(_LAG, _LAG + _WINDOW)]
        values = await self._store.call(lambda: self._store.redis.mget(keys))
        if values is None:
            return None
        total = sum(int(v) for v in values if v is not None)
        if total < _MIN_SAMPLES:
            return None
        return total * _TICKS / _WINDOW


def _encode(learned: LearnedLimit) -> str:
    return json.dumps(attrs.asdict(learned))


def _decode(raw: bytes | str) -> LearnedLimit | None:
    try:
        data = json.loads(raw)
        return LearnedLimit(**data)
    except (ValueError, TypeError):
        return None
