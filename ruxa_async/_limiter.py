"""The rate controller: a 429 gate, a discovered pace per endpoint class, an in-flight bound.

Every request a client sends first takes a :class:`Permit` from one shared
:class:`RateController`. A caller waits, in order, for the gate a 429 closed,
for one of ``max_in_flight`` slots, and for a token of its class's bucket,
refilled at the class's pace. Waiting is FIFO per class and at most one waiter
per class sleeps on the clock; the rest queue on a lock, so a crowd of waiters
costs one wake-up per token, not one per waiter.

The pace of each class (create, query) is a :class:`~ruxa_async._pace.Pace`:
it ramps up while the limit is unknown, settles just under the rate the
server admitted before a 429, holds there, and probes upward rarely; a
server's rate-limit headers replace all of that with the published quota.
Queries that have learned nothing of their own start from the pace the
creates settled at after their first 429 (every task needs a query, so they
must keep up), instead of paying a ``Retry-After`` of their own to find it.
A 429 starts an *episode* unless its request was granted before the class's
last decrease, so a burst of 429s lowers the pace once. Every 429 closes the
gate for ``Retry-After`` (capped at ``max_pause``), or a doubling pause when
there is none: the gate of its endpoint class by default, one gate for both
with ``gate_scope="client"``. The learned state and the gate live behind a
:class:`~ruxa_async._ratestate.RateState` (in-process by default), so a fleet
of clients can share them. Time is read lazily from the injected clock: there
is no background task and no timer.

This module keeps the waiting and the order of events; each class's pace,
hints and sharing are a :class:`~ruxa_async._lane.Lane`, the gate's
arithmetic is :mod:`~ruxa_async._gate`, and the snapshot's records are in
:mod:`~ruxa_async._ratestats`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from ._config import RateLimits
from ._gate import ClosedTime, Gate
from ._lane import Lane, fmt_number
from ._pace import Pace
from ._ratehints import RateHint
from ._ratestate import Kind, LocalRateState, RateState
from ._ratestats import ClassStatistics, RateStatistics, class_statistics, reported_rate

__all__ = ["ClassStatistics", "Kind", "Permit", "RateController", "RateStatistics"]

_KINDS: tuple[Kind, ...] = ("create", "query")
_log = logging.getLogger("ruxa_async")

_DEMAND_GRACE = 1.0  # a wait for a token counts as demand until this long after it ends
_START_RATE = 40.0  # requests/s per class while ramping, before scaling by the unit
_EPSILON = 1e-9


class Permit:
    """Leave to send one request of ``kind``; ``granted_at`` is the clock reading at the grant."""

    __slots__ = ("episode", "granted_at", "kind", "rate")

    def __init__(self, kind: Kind, granted_at: float, rate: float = 0.0, episode: int = 0) -> None:
        self.kind: Kind = kind
        self.granted_at = granted_at
        self.rate = rate  # the class's pace at the grant
        self.episode = episode  # the class's episode counter at the grant

    def __repr__(self) -> str:
        return f"Permit(kind={self.kind!r}, granted_at={self.granted_at!r})"


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
    ``rng`` (uniform in [0, 1)) draws the gate's jitter; ``state`` holds what
    is learned (a fresh in-process :class:`LocalRateState` by default).
    """

    def __init__(
        self,
        limits: RateLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        state: RateState | None = None,
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._state: RateState = state if state is not None else LocalRateState(clock)
        self._shared = state is not None  # a given state may be shared: adopt what others learn
        now = clock()
        unit = limits.recovery_seconds / 4.0
        configured = {
            "create": (limits.create_per_second, limits.create_burst),
            "query": (limits.query_per_second, limits.query_burst),
        }
        if limits.gate_scope == "client":
            shared = Gate("client", now)
            self._gates: dict[Kind, Gate] = {"create": shared, "query": shared}
        else:
            self._gates = {kind: Gate(kind, now) for kind in _KINDS}
        self._lanes: dict[Kind, Lane] = {}
        for kind in _KINDS:
            ceiling, burst = configured[kind]
            pace = Pace(
                ceiling=ceiling,
                burst=burst,
                start_rate=max(limits.min_rate, _START_RATE / unit),
                min_rate=limits.min_rate,
                unit=unit,
                adaptive=limits.adaptive,
                now=now,
            )
            self._lanes[kind] = Lane(kind, pace, self._gates[kind], self._state, now)
        self._in_flight = 0
        self._slot_waiters: list[asyncio.Future[None]] = []
        self._waiting = 0
        self._rate_limited = 0
        self._episodes = 0
        self._sent_while_gated = 0
        self._closed_time = ClosedTime(now)

    @property
    def state(self) -> RateState:
        """Where the learned paces, the gate and the episode counters live."""
        return self._state

    def permit(self, kind: Kind) -> AbstractAsyncContextManager[Permit]:
        """Wait for the gate, a slot and a token; the slot is freed on exit."""
        return _PermitContext(self, kind)

    async def on_success(self, permit: Permit, hint: RateHint | None = None) -> None:
        """Record a reply that was not a 429, with the rate-limit hint its headers carried."""
        now = self._clock()
        lane, gate = self._lanes[permit.kind], self._gates[permit.kind]
        lane.advance(now)
        lane.on_accepted(permit.granted_at, now)
        gate.on_admitted(permit.granted_at)
        if hint is not None:
            await lane.apply_hint(hint, now, self._limits.max_pause)

    async def on_rate_limited(
        self, permit: Permit, retry_after: float | None, hint: RateHint | None = None
    ) -> None:
        """Record a 429: close the gate and, once per episode, settle the class's pace lower.

        The pause is ``Retry-After`` (capped at ``max_pause``), else a
        doubling one, plus a small jitter (:meth:`Gate.pause
        <ruxa_async._gate.Gate.pause>`). A 429 for a request granted before
        the class's last decrease belongs to that episode and only extends
        the gate. With ``adaptive=False`` the episodes are still counted but
        no pace changes.
        """
        now = self._clock()
        kind = permit.kind
        lane, gate = self._lanes[kind], self._gates[kind]
        self._rate_limited += 1
        for behind in self._lanes_behind(gate):
            behind.advance(now)
        pause = gate.pause(permit.granted_at, retry_after, self._limits, self._rng)
        new_episode = await self._state.begin_episode(kind, permit.episode)
        pace = lane.pace
        old_rate = pace.rate
        if new_episode:
            lane.episode = permit.episode + 1
            self._episodes += 1
            await lane.on_refused(permit.granted_at, permit.rate or old_rate, now)
        else:
            lane.episode = max(lane.episode, permit.episode + 1)
        self._close(gate, now, now + pause)
        await self._state.close_gate(gate.name, pause)
        if not new_episode:
            return
        if hint is not None:
            await lane.apply_hint(hint, now, self._limits.max_pause)
        await lane.publish()
        followed = await self._lead(lane, now)
        _log.debug(
            "429 on %s: pace %.3g -> %.3g req/s (limit ~%s, burst ~%s, from %s), "
            "%s gate closed for %.3f s (%s)%s",
            kind,
            old_rate,
            pace.rate,
            fmt_number(pace.estimate),
            fmt_number(pace.estimated_burst),
            pace.source,
            gate.name,
            gate.deadline - now,
            "Retry-After" if retry_after is not None else "no Retry-After",
            f"; queries follow at {followed:.3g} req/s" if followed else "",
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

    def query_budget(self) -> float | None:
        """The queries per second the pace allows now; None while unknown (ramping, unpaced)."""
        return reported_rate(self._lanes["query"].pace)

    def statistics(self) -> RateStatistics:
        """Return a snapshot of paces, what was learned, counters and the gate."""
        now = self._clock()
        for lane in self._lanes.values():
            lane.advance(now)
        lanes = self._lanes
        classes: dict[str, ClassStatistics] = {
            kind: class_statistics(lane.pace, self._gates[kind].paused_until(now))
            for kind, lane in lanes.items()
        }
        return RateStatistics(
            create_rate=reported_rate(lanes["create"].pace),
            query_rate=reported_rate(lanes["query"].pace),
            in_flight=self._in_flight,
            max_in_flight=self._limits.max_in_flight,
            waiting=self._waiting,
            rate_limited=self._rate_limited,
            episodes=self._episodes,
            paused_seconds=self._closed_time.seconds(now),
            gate_remaining=self.gate_remaining(),
            sent_while_gated=self._sent_while_gated,
            permits={kind: lane.permits for kind, lane in lanes.items()},
            classes=classes,
        )

    # -------------------------------------------------------------- acquiring

    async def _acquire(self, kind: Kind) -> Permit:
        lane, gate = self._lanes[kind], self._gates[kind]
        state = self._state
        self._waiting += 1
        try:
            async with lane.lock:
                while True:
                    now = self._clock()
                    wait = max(gate.wait(now), lane.not_before - now)
                    if wait <= 0:
                        wait = await state.gate_remaining(gate.name)
                        if wait > 0:  # another sharer of the state closed it: mirror it here
                            self._close(gate, now, now + wait)
                        elif self._shared:
                            await lane.adopt()
                    if wait > 0:
                        await self._sleep(wait)
                        continue
                    await self._take_slot()
                    try:
                        now = self._clock()
                        lane.advance(now)
                        pace = lane.pace
                        wait = 0.0
                        if pace.rate != math.inf:
                            wait = await state.take(kind, 1, pace.rate, pace.burst)
                    except BaseException:
                        self._release_slot()
                        raise
                    if wait > 0:
                        self._release_slot()
                        lane.demand_until = max(lane.demand_until, now + wait + _DEMAND_GRACE)
                        await self._sleep(wait)
                        continue
                    if gate.wait(now) > 0:  # a 429 closed it while we queued
                        self._release_slot()
                        continue
                    return self._grant(lane, gate, now)
        finally:
            self._waiting -= 1

    def _grant(self, lane: Lane, gate: Gate, now: float) -> Permit:
        if now < gate.deadline:
            self._sent_while_gated += 1
        lane.on_sent(now)
        return Permit(lane.kind, now, lane.pace.rate, lane.episode)

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

    # ------------------------------------------------------------------- gate

    def _close(self, gate: Gate, now: float, deadline: float) -> None:
        if not gate.close(now, deadline):
            return
        for lane in self._lanes_behind(gate):
            lane.pace.on_pause_end(deadline)
        self._closed_time.add(now, deadline)

    def _lanes_behind(self, gate: Gate) -> list[Lane]:
        return [lane for lane in self._lanes.values() if lane.gate is gate]

    # ---------------------------------------------------------- shared state

    async def _lead(self, leader: Lane, now: float) -> float | None:
        """Offer a create 429's finding to queries while they learned nothing of their own.

        Every task needs at least one query, so queries must keep up with the
        creates: the create pace is a fair start for them (never a ceiling;
        they probe on). Not the other way round: create limits are the tight
        ones, and a query limit says little about them. Returns the query
        pace when it followed.
        """
        if leader.kind != "create":
            return None
        lane = self._lanes["query"]
        lane.advance(now)
        if not lane.pace.follow(leader.pace, now):
            return None
        await lane.publish()
        return lane.pace.rate
