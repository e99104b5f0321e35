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
from ._fleetdrains import fleet_drains
from ._gate import ClosedTime, Gate
from ._pace import Pace
from ._ratehints import RateHint
from ._ratestate import Kind, LearnedLimit, LocalRateState, RateState
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


class _Lane:
    __slots__ = (
        "advanced_at",
        "demand_until",
        "episode",
        "kind",
        "lock",
        "max_remaining",
        "max_reset",
        "not_before",
        "pace",
        "permits",
        "shared",
    )

    def __init__(self, kind: Kind, pace: Pace, now: float) -> None:
        self.kind: Kind = kind
        self.pace = pace
        self.advanced_at = now
        self.demand_until = float("-inf")
        self.episode = 0  # the last episode counter seen in the state
        self.not_before = now  # a server hint said the quota is spent until then
        self.max_remaining = 0.0
        self.max_reset = 0.0
        self.permits = 0
        self.lock = asyncio.Lock()
        self.shared: LearnedLimit | None = None  # last read from (or written to) a given state


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
        self._carried: dict[tuple[Kind, str], float] = {}  # a fleet's fractional sends, see _weight
        now = clock()
        unit = limits.recovery_seconds / 4.0
        configured = {
            "create": (limits.create_per_second, limits.create_burst),
            "query": (limits.query_per_second, limits.query_burst),
        }
        self._lanes: dict[Kind, _Lane] = {}
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
            self._lanes[kind] = _Lane(kind, pace, now)
        if limits.gate_scope == "client":
            shared = Gate("client", now)
            self._gates: dict[Kind, Gate] = {"create": shared, "query": shared}
        else:
            self._gates = {kind: Gate(kind, now) for kind in _KINDS}
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
        self._advance(lane, now)
        for _ in range(self._weight(permit.kind, "accepted")):
            lane.pace.on_accepted(permit.granted_at, now)
        gate.on_admitted(permit.granted_at)
        if hint is not None:
            await self._apply_hint(lane, hint, now)

    async def on_rate_limited(
        self, permit: Permit, retry_after: float | None, hint: RateHint | None = None
    ) -> None:
        """Record a 429: close the gate and, once per episode, settle the class's pace lower.

        The pause is ``Retry-After`` (capped at ``max_pause``), else
        ``pause_without_retry_after`` doubled for each consecutive 429 whose
        request was sent after the gate's previous pause, plus a jitter of at
        most 3 % of the pause and 50 ms. A 429 for a request granted before
        the class's last decrease belongs to that episode and only extends
        the gate. With ``adaptive=False`` the episodes are still counted but
        no pace changes.
        """
        now = self._clock()
        kind = permit.kind
        lane, gate = self._lanes[kind], self._gates[kind]
        self._rate_limited += 1
        for behind in self._lanes_behind(gate):
            self._advance(behind, now)
        pause = gate.pause(permit.granted_at, retry_after, self._limits, self._rng)
        new_episode = await self._state.begin_episode(kind, permit.episode)
        pace = lane.pace
        old_rate = pace.rate
        if new_episode:
            lane.episode = permit.episode + 1
            self._episodes += 1
            fleet = await fleet_drains(self._state, lane.kind, pace, permit.granted_at, now)
            granted_rate = permit.rate or old_rate
            refill = getattr(self._state, "refill_rate", None)
            if fleet is not None and refill is not None:
                # The fleet sent at its bucket's rate: while it ramps, its fastest member's
                # pace (a ramp's 429 read against this member's slower one read half the limit).
                granted_rate = max(granted_rate, refill(kind))
            pace.on_refused(permit.granted_at, granted_rate, now, fleet=fleet)
        else:
            lane.episode = max(lane.episode, permit.episode + 1)
        self._close(gate, now, now + pause)
        await self._state.close_gate(gate.name, pause)
        if not new_episode:
            return
        if hint is not None:
            await self._apply_hint(lane, hint, now)
        await self._publish(lane)
        followed = await self._lead(lane, now)
        _log.debug(
            "429 on %s: pace %.3g -> %.3g req/s (limit ~%s, burst ~%s, from %s), "
            "%s gate closed for %.3f s (%s)%s",
            kind,
            old_rate,
            pace.rate,
            _fmt(pace.estimate),
            _fmt(pace.estimated_burst),
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
            self._advance(lane, now)
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
                            await self._adopt(lane)
                    if wait > 0:
                        await self._sleep(wait)
                        continue
                    await self._take_slot()
                    try:
                        now = self._clock()
                        self._advance(lane, now)
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

    def _grant(self, lane: _Lane, gate: Gate, now: float) -> Permit:
        if now < gate.deadline:
            self._sent_while_gated += 1
        lane.permits += 1
        pace, weight = lane.pace, self._weight(lane.kind, "sent")
        if weight == 1:
            pace.on_sent(now)
        else:  # the fleet's sends between this one's last and now, evenly: as the server saw them
            last = pace.history[-1] if pace.history else now
            spacing = min((now - last) / weight, 1.0 / pace.rate)
            for k in range(weight - 1, -1, -1):
                pace.on_sent(now - k * spacing)
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

    def _lanes_behind(self, gate: Gate) -> list[_Lane]:
        return [self._lanes[kind] for kind in _KINDS if self._gates[kind] is gate]

    # ------------------------------------------------------------------ pace

    def _advance(self, lane: _Lane, now: float) -> None:
        """Move the class's pace on by the demand seen since the last call, gate open only."""
        start = max(lane.advanced_at, self._gates[lane.kind].deadline)
        end = min(now, lane.demand_until)
        if end > start:
            before = lane.pace.phase
            lane.pace.advance(end - start, now)
            if lane.pace.phase != before:
                _log.debug(
                    "%s pace: %s -> %s at %.3g req/s",
                    lane.kind,
                    before,
                    lane.pace.phase,
                    lane.pace.rate,
                )
        lane.advanced_at = max(lane.advanced_at, now)

    # ---------------------------------------------------------- shared state

    async def _lead(self, leader: _Lane, now: float) -> float | None:
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
        self._advance(lane, now)
        if not lane.pace.follow(leader.pace, now):
            return None
        await self._publish(lane)
        return lane.pace.rate

    async def _publish(self, lane: _Lane) -> None:
        learned = lane.shared = lane.pace.learned(lane.episode)
        await self._state.write(lane.kind, learned)

    async def _adopt(self, lane: _Lane) -> None:
        """Take over a pace another controller sharing the state wrote (its 429 episode)."""
        learned = await self._state.read(lane.kind)
        if learned is None or learned == lane.shared or learned.episode < lane.episode:
            return
        new_episode = lane.shared is None or learned.episode > lane.shared.episode
        lane.shared = learned
        lane.episode = learned.episode
        lane.pace.adopt(learned, new_episode=new_episode)

    def _weight(self, kind: Kind, counter: str) -> int:
        """Sends of every sharer per send of this controller (1 unless the state says more).

        A fleet's pace is measured against the fleet's sends: a state shared by
        several processes reports how many sends the whole fleet made per send
        of this one (``share(kind)``), so the ramp and the estimates scale.
        The fraction is carried to the next send (a share of 2.5 counts 2, 3,
        2, 3 ...): rounded, it scaled every drain by up to 25 % and the fits
        of the server's bucket with it.
        """
        share = getattr(self._state, "share", None)
        if share is None:
            return 1
        carried = self._carried.get((kind, counter), 0.0) + max(1.0, share(kind))
        weight = int(carried)
        self._carried[(kind, counter)] = carried - weight
        return weight

    async def _apply_hint(self, lane: _Lane, hint: RateHint, now: float) -> None:
        """Use what a reply's rate-limit headers said about the class's quota."""
        pace = lane.pace
        if hint.remaining is not None:
            lane.max_remaining = max(lane.max_remaining, hint.remaining)
        if hint.reset is not None:
            lane.max_reset = max(lane.max_reset, hint.reset)
        rate = hint.rate
        if rate is None and hint.limit is not None and hint.family == "x-ratelimit":
            # No window is published: the longest reset seen bounds it from below.
            rate = hint.limit / max(1.0, lane.max_reset)
        burst = lane.max_remaining + 1.0 if lane.max_remaining > 0 else None
        if pace.on_hint(rate, burst):
            await self._publish(lane)
            _log.debug(
                "%s quota from %s headers: %.3g req/s, burst ~%s; pacing at %.3g req/s",
                lane.kind,
                hint.family,
                pace.estimate or 0.0,
                _fmt(pace.estimated_burst),
                pace.rate,
            )
        if hint.remaining is not None and hint.remaining < 1.0:
            # The quota is spent: wait for one token (or the reset when the pace is unknown).
            wait = 1.0 / pace.rate if pace.phase == "hinted" else (hint.reset or 0.0)
            lane.not_before = max(lane.not_before, now + min(wait, self._limits.max_pause))


def _fmt(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3g}"
