"""The rate controller: a 429 gate, per-kind AIMD token buckets, a shared in-flight bound.

Every request a client sends first takes a :class:`Permit` from one shared
:class:`RateController`. A caller waits, in order, for the not-before gate a
429 closed, for a token of its kind's bucket (only once that kind's rate is
known) and for one of ``max_in_flight`` slots. Waiting is FIFO per kind and at
most one waiter per kind sleeps on the clock; the rest queue on a lock, so a
crowd of waiters costs one wake-up per token, not one per waiter.

A 429 starts an *episode* unless its request was sent before the kind's last
decrease: the rate is multiplied by ``decrease_factor`` once per episode (an
unknown rate starts from the measured send rate, see
:meth:`RateController.on_rate_limited`). While callers queue for tokens and the
gate is open, the rate recovers along a CUBIC curve (as TCP CUBIC and
botocore's adaptive retry mode do): ``w_max * (1 + c * (t - K) ** 3)``, where
``w_max`` is the rate when the 429 came, ``t`` the seconds of demand since the
decrease and ``K = recovery_seconds``; ``c`` makes the curve start at the
decreased rate. So the rate is back near ``w_max`` after ``K`` seconds, stays
near it a while, then probes faster, whatever the scale of the limit (2/s or
2,000/s). It never exceeds a configured rate. Time is read lazily from the
injected clock: there is no background task and no timer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import attrs

from ._config import Kind, RateLimits

__all__ = ["Kind", "Permit", "RateController", "RateStatistics"]

_KINDS: tuple[Kind, ...] = ("create", "query")
_log = logging.getLogger("ruxa_async")

_RATE_WINDOW = 1.0  # seconds of send history behind the estimate of an unknown rate
_MIN_SPAN = 0.25  # a burst shorter than this is measured as if spread over it
_DEMAND_GRACE = 1.0  # a wait for a token counts as demand until this long after it ends
_JITTER_FRACTION = 0.03  # gate jitter: up to this share of the pause ...
_JITTER_CAP = 0.05  # ... and never more than this many seconds
_MAX_DOUBLINGS = 30
_EPSILON = 1e-9


@attrs.frozen(kw_only=True)
class RateStatistics:
    """A snapshot of the rate controller, from :meth:`RateController.statistics`.

    Rates are requests per second (``None``: unknown, not limited yet).
    ``paused_seconds`` is the time any gate was closed (the union of the
    closed intervals, up to now); ``sent_while_gated`` is a self-check that
    stays 0 unless the controller has a bug.
    """

    create_rate: float | None
    query_rate: float | None
    in_flight: int
    max_in_flight: int
    waiting: int
    rate_limited: int
    episodes: int
    paused_seconds: float
    gate_remaining: float
    sent_while_gated: int
    permits: Mapping[str, int]


class Permit:
    """Leave to send one request of ``kind``; ``granted_at`` is the clock reading at the grant."""

    __slots__ = ("granted_at", "kind")

    def __init__(self, kind: Kind, granted_at: float) -> None:
        self.kind: Kind = kind
        self.granted_at = granted_at

    def __repr__(self) -> str:
        return f"Permit(kind={self.kind!r}, granted_at={self.granted_at!r})"


class _Gate:
    __slots__ = ("closed", "closed_at", "deadline", "name", "streak")

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.deadline = now  # nothing may be sent before this clock reading
        self.closed_at = float("-inf")  # when the current (or last) pause began
        self.closed = False  # set when closed, cleared (and logged) once seen open
        self.streak = 0  # pauses in a row with no success in between


class _Lane:
    __slots__ = (
        "capacity",
        "ceiling",
        "climbed_at",
        "demand_until",
        "episode_at",
        "first_sent_at",
        "grown",
        "kind",
        "lock",
        "permits",
        "rate",
        "refilled_at",
        "sent",
        "tokens",
        "w_max",
    )

    def __init__(self, kind: Kind, ceiling: float | None, burst: int, now: float) -> None:
        self.kind: Kind = kind
        self.ceiling = ceiling
        self.rate = ceiling  # None: no bucket yet
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.refilled_at = now
        self.climbed_at = now
        self.demand_until = float("-inf")
        self.episode_at = float("-inf")  # time of the last multiplicative decrease
        self.w_max: float | None = None  # the rate when the last decrease happened
        self.grown = 0.0  # seconds of demand since the last decrease (CUBIC's t)
        self.sent: deque[float] = deque()  # grant times within the last _RATE_WINDOW
        self.first_sent_at = now
        self.permits = 0
        self.lock = asyncio.Lock()

    def forget_old_sends(self, now: float) -> None:
        horizon = now - _RATE_WINDOW
        while self.sent and self.sent[0] <= horizon:
            self.sent.popleft()


class _PermitContext(AbstractAsyncContextManager[Permit]):
    __slots__ = ("_controller", "_kind", "_permit")

    def __init__(self, controller: RateController, kind: Kind) -> None:
        self._controller = controller
        self._kind: Kind = kind
        self._permit: Permit | None = None

    async def __aenter__(self) -> Permit:
        self._permit = await self._controller._acquire(self._kind)
        return self._permit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._permit is not None:
            self._permit = None
            self._controller._release_slot()


class RateController:
    """Paces every request of one client; see the module docstring for the rules.

    ``clock`` and ``sleep`` are injectable so tests run in virtual time;
    ``rng`` (uniform in [0, 1)) draws the gate's jitter.
    """

    def __init__(
        self,
        limits: RateLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        now = clock()
        self._lanes: dict[Kind, _Lane] = {
            "create": _Lane("create", limits.create_per_second, limits.create_burst, now),
            "query": _Lane("query", limits.query_per_second, limits.query_burst, now),
        }
        if limits.gate_scope == "client":
            shared = _Gate("client", now)
            self._gates: dict[Kind, _Gate] = {"create": shared, "query": shared}
        else:
            self._gates = {kind: _Gate(kind, now) for kind in _KINDS}
        self._in_flight = 0
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._waiting = 0
        self._rate_limited = 0
        self._episodes = 0
        self._sent_while_gated = 0
        self._paused_before = 0.0  # closed time of finished pause intervals
        self._pause_start = now  # current (or last) merged pause interval
        self._pause_end = now

    def permit(self, kind: Kind) -> AbstractAsyncContextManager[Permit]:
        """Wait for the gate, a token and an in-flight slot; the slot is freed on exit."""
        return _PermitContext(self, kind)

    def on_success(self, permit: Permit) -> None:
        """Record a reply that was not a 429 (lets the rate climb and resets the pause doubling)."""
        now = self._clock()
        gate = self._gates[permit.kind]
        self._update(self._lanes[permit.kind], now)
        if gate.streak and permit.granted_at >= gate.deadline:
            gate.streak = 0

    def on_rate_limited(self, permit: Permit, retry_after: float | None) -> None:
        """Record a 429: close the gate and, once per episode, decrease the kind's rate.

        The pause is ``Retry-After`` (capped at ``max_pause``), else
        ``pause_without_retry_after`` doubled for each consecutive 429 whose
        request was sent after the gate's previous pause, plus a
        jitter of at most 3 % of the pause and 50 ms. A 429 for a request sent
        before the kind's last decrease belongs to that episode and only
        extends the gate. When the rate is still unknown, the decrease starts
        from the measured send rate: the permits of that kind granted in the
        last second (at least one), per second. With ``adaptive=False`` the
        episodes are still counted but no rate changes.
        """
        now = self._clock()
        kind = permit.kind
        lane, gate = self._lanes[kind], self._gates[kind]
        limits = self._limits
        self._rate_limited += 1
        for behind in self._lanes_behind(gate):
            self._update(behind, now)
        new_episode = permit.granted_at >= lane.episode_at
        old_rate = lane.rate
        if permit.granted_at > gate.closed_at:  # sent after the last pause began
            gate.streak += 1
        if new_episode:
            self._episodes += 1
            lane.episode_at = now
            if limits.adaptive:
                if old_rate is None:
                    lane.forget_old_sends(now)
                    span = min(_RATE_WINDOW, max(now - lane.first_sent_at, _MIN_SPAN))
                    base = max(len(lane.sent), 1) / span
                    lane.tokens = 1.0
                    lane.refilled_at = max(now, gate.deadline)
                    lane.climbed_at = now
                else:
                    base = old_rate
                rate = max(limits.min_rate, base * limits.decrease_factor)
                lane.rate = rate if lane.ceiling is None else min(rate, lane.ceiling)
                lane.w_max = base
                lane.grown = 0.0
        if retry_after is not None:
            pause = min(max(retry_after, 0.0), limits.max_pause)
        else:
            doublings = min(max(gate.streak, 1) - 1, _MAX_DOUBLINGS)
            pause = min(limits.pause_without_retry_after * 2.0**doublings, limits.max_pause)
        jitter = self._rng() * min(_JITTER_CAP, _JITTER_FRACTION * pause)
        self._close(gate, now, now + pause + jitter)
        if new_episode:
            _log.debug(
                "429 on %s: rate %s -> %s req/s, %s gate closed for %.3f s (%s)",
                kind,
                _fmt_rate(old_rate),
                _fmt_rate(lane.rate),
                gate.name,
                gate.deadline - now,
                "Retry-After" if retry_after is not None else "no Retry-After",
            )

    @property
    def max_in_flight(self) -> int:
        """The bound on requests in flight: the one owner of this number in a client."""
        return self._limits.max_in_flight

    def gate_remaining(self, kind: Kind | None = None) -> float:
        """Seconds until the gate for ``kind`` (for every kind when None) reopens; 0 if open."""
        now = self._clock()
        gates = self._gates.values() if kind is None else (self._gates[kind],)
        return max(0.0, *(gate.deadline - now for gate in gates))

    def statistics(self) -> RateStatistics:
        """Return a snapshot of rates, counters and the gate."""
        now = self._clock()
        for lane in self._lanes.values():
            self._update(lane, now)
        lanes = self._lanes
        return RateStatistics(
            create_rate=lanes["create"].rate,
            query_rate=lanes["query"].rate,
            in_flight=self._in_flight,
            max_in_flight=self._limits.max_in_flight,
            waiting=self._waiting,
            rate_limited=self._rate_limited,
            episodes=self._episodes,
            paused_seconds=self._paused_before
            + max(0.0, min(now, self._pause_end) - self._pause_start),
            gate_remaining=self.gate_remaining(),
            sent_while_gated=self._sent_while_gated,
            permits={kind: lane.permits for kind, lane in lanes.items()},
        )

    async def _acquire(self, kind: Kind) -> Permit:
        lane, gate = self._lanes[kind], self._gates[kind]
        self._waiting += 1
        try:
            async with lane.lock:
                while True:
                    now = self._clock()
                    wait = self._gate_wait(gate, now)
                    if wait > 0:
                        await self._sleep(wait)
                        continue
                    holding_token = False
                    if lane.rate is not None:
                        self._update(lane, now)
                        if lane.tokens < 1.0 - _EPSILON:
                            wait = (1.0 - lane.tokens) / lane.rate
                            lane.demand_until = max(lane.demand_until, now + wait + _DEMAND_GRACE)
                            await self._sleep(wait)
                            continue
                        lane.tokens -= 1.0
                        holding_token = True
                    try:
                        await self._take_slot()
                    except BaseException:
                        if holding_token:
                            lane.tokens = min(lane.capacity, lane.tokens + 1.0)
                        raise
                    now = self._clock()
                    if self._gate_wait(gate, now) > 0:  # a 429 closed it while we queued
                        self._release_slot()
                        continue
                    return self._grant(lane, gate, now)
        finally:
            self._waiting -= 1

    def _grant(self, lane: _Lane, gate: _Gate, now: float) -> Permit:
        if now < gate.deadline:
            self._sent_while_gated += 1
        if not lane.permits:
            lane.first_sent_at = now
        lane.permits += 1
        lane.forget_old_sends(now)
        lane.sent.append(now)
        return Permit(lane.kind, now)

    async def _take_slot(self) -> None:
        # Only the head waiter of each kind gets here, so at most two futures wait.
        while self._in_flight >= self._limits.max_in_flight:
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            finally:
                self._slot_waiters.remove(waiter)
        self._in_flight += 1

    def _release_slot(self) -> None:
        self._in_flight -= 1
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _gate_wait(self, gate: _Gate, now: float) -> float:
        remaining = gate.deadline - now
        if remaining > 0:
            return remaining
        if gate.closed:
            gate.closed = False
            _log.debug("%s gate reopened after %.3f s", gate.name, gate.deadline - gate.closed_at)
        return 0.0

    def _close(self, gate: _Gate, now: float, deadline: float) -> None:
        if deadline <= max(now, gate.deadline):
            return
        if gate.deadline <= now:
            gate.closed_at = now
        gate.deadline = deadline
        gate.closed = True
        for lane in self._lanes_behind(gate):  # no burst of saved-up tokens at reopening
            lane.tokens = min(lane.tokens, 1.0)
            lane.refilled_at = max(lane.refilled_at, deadline)
        if now <= self._pause_end:
            self._pause_end = max(self._pause_end, deadline)
        else:
            self._paused_before += self._pause_end - self._pause_start
            self._pause_start, self._pause_end = now, deadline

    def _lanes_behind(self, gate: _Gate) -> list[_Lane]:
        return [self._lanes[kind] for kind in _KINDS if self._gates[kind] is gate]

    def _update(self, lane: _Lane, now: float) -> None:
        """Bring the lane's bucket and its additive climb up to ``now``."""
        if lane.rate is None:
            lane.climbed_at = now
            return
        if now > lane.refilled_at:
            lane.tokens = min(lane.capacity, lane.tokens + (now - lane.refilled_at) * lane.rate)
            lane.refilled_at = now
        limits = self._limits
        w_max = lane.w_max
        if (
            limits.adaptive
            and w_max is not None
            and (lane.ceiling is None or lane.rate < lane.ceiling)
        ):
            # Climb only over time when the gate was open and callers queued for tokens.
            start = max(lane.climbed_at, self._gates[lane.kind].deadline)
            end = min(now, lane.demand_until)
            if end > start:
                lane.grown += end - start
                k = limits.recovery_seconds
                c = (1.0 - limits.decrease_factor) / k**3
                rate = max(limits.min_rate, w_max * (1.0 + c * (lane.grown - k) ** 3))
                lane.rate = rate if lane.ceiling is None else min(rate, lane.ceiling)
        lane.climbed_at = max(lane.climbed_at, now)


def _fmt_rate(rate: float | None) -> str:
    return "unknown" if rate is None else f"{rate:.3g}"
