"""Where the rate controller keeps what it learned: one small interface, one in-process store.

The controller (:mod:`ruxa_async._limiter`) decides *what* to send and *when*;
a :class:`RateState` remembers the things several senders of one account would
want to share: the learned pace per endpoint class, the token bucket it is
spent from, the 429 gate, and the decrease-episode counter. Everything else
(counters for ``statistics()``, the estimator's send history) stays local to
one controller.

Times crossing this interface are *relative seconds*, never clock readings:
monotonic clocks of two processes cannot be compared, while "closed for 1.5 s
from now" means the same thing in a Redis ``PX`` and in a local dict.

Implementations:

* :class:`LocalRateState`: the default, one process, plain attributes.
* A shared one (e.g. Redis) implements the same six methods. It may lease
  tokens in blocks behind :meth:`RateState.take`, and answer
  :meth:`RateState.gate_remaining` from a briefly cached copy, as long as it
  errs toward a closed gate (a request sent before a ``Retry-After`` deadline
  is the one mistake the controller must never make).

Every method may be awaited on the hot path (``take`` and ``gate_remaining``
once per permit), so an implementation should answer from memory when it can.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

import attrs

from ._config import Kind

__all__ = [
    "GateScope",
    "Kind",
    "LearnedLimit",
    "LimitSource",
    "LocalRateState",
    "RateState",
]

GateScope = Literal["create", "query", "client"]
"""A gate's name: one endpoint class, or ``"client"`` for both at once."""

LimitSource = Literal["configured", "headers", "429s", "slow start"]
"""Where a learned pace came from: the caller's ``RateLimits``, the server's
rate-limit headers, the admitted rate measured before 429s, or the start-up
ramp (no 429 seen yet)."""

_KINDS_OF: dict[str, tuple[Kind, ...]] = {
    "create": ("create",),
    "query": ("query",),
    "client": ("create", "query"),
}


@attrs.frozen(kw_only=True)
class LearnedLimit:
    """What is known about one endpoint class's limit.

    Attributes:
        rate: the pace to send at, in requests per second (settled just under
            ``estimate`` when there is one).
        burst: how many saved tokens may go out back to back (at least 1).
        estimate: the server's sustainable rate as estimated, requests per
            second; None while nothing has been learned.
        estimated_burst: the server's bucket size as estimated; None if unknown.
        source: where ``estimate`` came from (see :data:`LimitSource`).
        episode: how many 429 episodes this class has had; a version number
            that :meth:`RateState.begin_episode` compares and bumps.
        hold: seconds of demand the writer holds its pace before probing
            again; sharers adopting the episode hold as long. None: unknown.
    """

    rate: float
    burst: float = 1.0
    estimate: float | None = None
    estimated_burst: float | None = None
    source: LimitSource = "slow start"
    episode: int = 0
    hold: float | None = None


@runtime_checkable
class RateState(Protocol):
    """The controller's learned state, per endpoint class; see the module docstring."""

    async def read(self, kind: Kind) -> LearnedLimit | None:
        """The last :class:`LearnedLimit` written for ``kind``, or None if none was."""

    async def write(self, kind: Kind, learned: LearnedLimit) -> None:
        """Replace what is known about ``kind`` (last writer wins)."""

    async def begin_episode(self, kind: Kind, seen: int) -> bool:
        """Start a 429 episode for ``kind`` if its episode counter still equals ``seen``.

        Returns True (and bumps the counter) for the first caller; False when
        another request (or process) already started one since ``seen`` was
        read: that 429 belongs to the running episode and must not decrease
        the rate again. An atomic compare-and-increment.
        """

    async def close_gate(self, scope: GateScope, seconds: float) -> None:
        """Forbid sending behind ``scope`` for ``seconds`` from now (never shortens a gate).

        Closing also sets the saved tokens of the classes behind the gate to
        one, with no refill before the gate reopens: one request may go at the
        reopening, and nothing bursts.
        """

    async def gate_remaining(self, scope: GateScope) -> float:
        """Seconds until the gate ``scope`` reopens; 0.0 when open."""

    async def take(self, kind: Kind, count: int, rate: float, burst: float) -> float:
        """Take ``count`` tokens from ``kind``'s bucket, refilled at ``rate`` up to ``burst``.

        Returns 0.0 when the tokens were taken, else the seconds until they
        would be there (and takes nothing). ``rate`` and ``burst`` are the
        caller's current pace; the bucket refills at the rate of each call.
        """


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class LocalRateState:
    """A :class:`RateState` in this process's memory, read through an injectable clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._learned: dict[Kind, LearnedLimit] = {}
        self._episodes: dict[Kind, int] = {"create": 0, "query": 0}
        self._gates: dict[str, float] = {}
        self._buckets: dict[Kind, _Bucket] = {}

    def __repr__(self) -> str:
        return f"<LocalRateState {sorted(self._learned)}>"

    async def read(self, kind: Kind) -> LearnedLimit | None:
        """See :meth:`RateState.read`."""
        return self._learned.get(kind)

    async def write(self, kind: Kind, learned: LearnedLimit) -> None:
        """See :meth:`RateState.write`."""
        self._learned[kind] = learned

    async def begin_episode(self, kind: Kind, seen: int) -> bool:
        """See :meth:`RateState.begin_episode`."""
        return self.begin_episode_now(kind, seen)

    async def close_gate(self, scope: GateScope, seconds: float) -> None:
        """See :meth:`RateState.close_gate`."""
        self.close_gate_now(scope, seconds)

    async def gate_remaining(self, scope: GateScope) -> float:
        """See :meth:`RateState.gate_remaining`."""
        return self.gate_remaining_now(scope)

    async def take(self, kind: Kind, count: int, rate: float, burst: float) -> float:
        """See :meth:`RateState.take`."""
        return self.take_now(kind, count, rate, burst)

    # Synchronous twins: the in-process controller calls these directly and
    # saves a coroutine per request. A shared store has only the async methods.

    def episode_now(self, kind: Kind) -> int:
        """The episode counter of ``kind``."""
        return self._episodes[kind]

    def begin_episode_now(self, kind: Kind, seen: int) -> bool:
        """:meth:`begin_episode` without the coroutine."""
        if self._episodes[kind] != seen:
            return False
        self._episodes[kind] = seen + 1
        return True

    def close_gate_now(self, scope: GateScope, seconds: float) -> None:
        """:meth:`close_gate` without the coroutine."""
        now = self._clock()
        deadline = now + max(0.0, seconds)
        if deadline <= self._gates.get(scope, now):
            return
        self._gates[scope] = deadline
        for kind in _KINDS_OF[scope]:
            bucket = self._buckets.get(kind)
            if bucket is not None:
                bucket.tokens = 1.0
                bucket.stamp = max(bucket.stamp, deadline)

    def gate_remaining_now(self, scope: GateScope) -> float:
        """:meth:`gate_remaining` without the coroutine."""
        return max(0.0, self._gates.get(scope, 0.0) - self._clock())

    def take_now(self, kind: Kind, count: int, rate: float, burst: float) -> float:
        """:meth:`take` without the coroutine."""
        now = self._clock()
        bucket = self._buckets.get(kind)
        if bucket is None:
            bucket = self._buckets[kind] = _Bucket(burst, now)
        if now > bucket.stamp:
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
        else:
            bucket.tokens = min(burst, bucket.tokens)
        if bucket.tokens >= count - 1e-9:
            bucket.tokens -= count
            return 0.0
        return (bucket.stamp - now) + (count - bucket.tokens) / rate
