"""A fleet's pace: one controller deciding each request over a shared :class:`RateState`.

Used when a client's coordinator shares rates (``RedisCoordinator``). Every
process runs the same rules against the same state, so they act as one sender:

* the 429 gate is shared: one process's 429 pauses every process for the
  ``Retry-After`` (or ``RateLimits.pause_without_retry_after``);
* while nothing is known about a class, a *slow start* paces it from
  ``start_rate`` doubling every ``doubling`` seconds, instead of letting every
  process fire ``max_in_flight`` requests at once;
* the first 429 of an episode (a compare-and-increment, so once for the whole
  fleet) remembers the rate it came at as the limit's upper bound and drops
  to ``backoff`` times that rate (never under ``settle`` times the accepted
  rate the fleet measured, when that measure rests on enough requests);
* while requests queue for tokens and no 429 came for ``probe_after``
  seconds, the rate climbs half way to the upper bound (a binary search that
  costs few 429 episodes), and past it by ``probe_step`` to follow a limit
  that rose.

A configured ``create_per_second``/``query_per_second`` is a ceiling.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ._config import RateLimits
from ._ratestate import GateScope, Kind, LearnedLimit, RateState

__all__ = ["FleetPacer"]

log = logging.getLogger("ruxa_async")

_QUIET_PROBES = 5  # at the bound, probe past it after this many probe intervals
_GATE_SLACK = 0.05  # a gate closed for at least the pause minus this needs no new closing


class FleetPacer:
    """Admits requests of one process against the fleet's shared state (see the module)."""

    def __init__(
        self,
        state: RateState,
        limits: RateLimits,
        *,
        start_rate: float = 10.0,
        doubling: float = 0.5,
        unlimited: float = 5000.0,
        settle: float = 0.9,
        backoff: float = 0.92,
        probe_after: float = 2.0,
        probe_step: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.state = state
        self._limits = limits
        self._start_rate = start_rate
        self._doubling = doubling
        self._unlimited = unlimited
        self._settle = settle
        self._backoff = backoff
        self._probe_after = probe_after
        self._probe_step = probe_step
        self._clock = clock
        self._sleep = sleep
        self._ramped: dict[Kind, float] = {}
        self._locks: dict[Kind, asyncio.Lock] = {"create": asyncio.Lock(), "query": asyncio.Lock()}
        self._seen: dict[Kind, tuple[LearnedLimit | None, float]] = {}
        self.rates: dict[Kind, float | None] = {"create": None, "query": None}
        self.rate_limited = 0
        self.decreases = 0

    def _scope(self, kind: Kind) -> GateScope:
        return "client" if self._limits.gate_scope == "client" else kind

    def _ceiling(self, kind: Kind) -> float | None:
        limits = self._limits
        return limits.create_per_second if kind == "create" else limits.query_per_second

    def _burst(self, kind: Kind) -> float:
        limits = self._limits
        return float(limits.create_burst if kind == "create" else limits.query_burst)

    def pace(self, kind: Kind, learned: LearnedLimit | None, now: float) -> float | None:
        """The rate to send ``kind`` at now (None: no limit yet)."""
        ceiling = self._ceiling(kind)
        if learned is not None:
            rate = learned.rate
        elif ceiling is not None:
            rate = ceiling
        else:
            # the ramp advances only while requests wait for it (demand), as TCP's does
            ramped = self._ramped.get(kind, 0.0)
            rate = self._start_rate * 2.0 ** min(60.0, ramped / self._doubling)
            if rate >= self._unlimited:
                return None
        return rate if ceiling is None else min(rate, ceiling)

    async def admit(self, kind: Kind) -> int:
        """Wait for the shared gate and a shared token; returns the episode it was admitted in."""
        state = self.state
        scope = self._scope(kind)
        async with self._locks[kind]:
            while True:
                wait = await state.gate_remaining(scope)
                if wait > 0:
                    await self._sleep(wait)
                    continue
                learned = await state.read(kind)
                now = self._clock()
                self._note(kind, learned, now)
                rate = self.pace(kind, learned, now)
                self.rates[kind] = rate
                episode = learned.episode if learned is not None else 0
                if rate is None:
                    return episode
                wait = await state.take(kind, 1, rate, self._burst(kind))
                if wait <= 0:
                    return episode
                await self._maybe_probe(kind, learned, rate, now)
                wait = min(wait, 1.0)
                if learned is None:
                    self._ramped[kind] = self._ramped.get(kind, 0.0) + wait
                await self._sleep(wait)

    def _note(self, kind: Kind, learned: LearnedLimit | None, now: float) -> None:
        seen = self._seen.get(kind)
        if seen is None or seen[0] != learned:
            self._seen[kind] = (learned, now)

    async def _maybe_probe(
        self, kind: Kind, learned: LearnedLimit | None, rate: float, now: float
    ) -> None:
        if learned is None or learned.source != "429s":
            return
        ceiling = self._ceiling(kind)
        if ceiling is not None and rate >= ceiling:
            return
        if now - self._seen[kind][1] < self._probe_after:
            return
        bound = learned.estimate
        if bound is not None and rate < bound * (1.0 - self._probe_step):
            # half way to where the last 429 came, by at most twice the step
            rate = min(rate + (bound - rate) / 2.0, rate * (1.0 + 2.0 * self._probe_step))
        elif now - self._seen[kind][1] < self._probe_after * _QUIET_PROBES:
            return  # at the bound: probe past it only now and then
        else:
            rate, bound = rate * (1.0 + self._probe_step), None
        probed = LearnedLimit(
            rate=rate,
            burst=learned.burst,
            estimate=bound,
            source=learned.source,
            episode=learned.episode,
        )
        self._seen[kind] = (probed, now)
        await self.state.write(kind, probed)

    def succeeded(self, kind: Kind) -> None:
        """A request of ``kind`` was accepted (feeds the fleet's accepted-rate measure)."""
        note = getattr(self.state, "note_admitted", None)
        if note is not None:
            note(kind)

    async def on_rate_limited(self, kind: Kind, episode: int, retry_after: float | None) -> None:
        """A request admitted in ``episode`` got a 429: close the fleet's gate, maybe decrease."""
        limits = self._limits
        self.rate_limited += 1
        pause = retry_after if retry_after is not None else limits.pause_without_retry_after
        pause = min(max(pause, 0.0), limits.max_pause)
        scope = self._scope(kind)
        if await self.state.gate_remaining(scope) < pause - _GATE_SLACK:  # else: already closed
            await self.state.close_gate(scope, pause)
        learned = await self.state.read(kind)
        if learned is not None and learned.episode > episode:
            return  # this 429 belongs to an episode already handled
        if not await self.state.begin_episode(kind, episode):
            return
        self.decreases += 1
        current = self.pace(kind, learned, self._clock())
        measure = getattr(self.state, "admitted_rate", None)
        measured = await measure(kind) if measure is not None else None
        if current is None:  # sending without a limit when the 429 came
            rate = measured * self._settle if measured is not None else self._start_rate
        elif learned is None:  # the end of the slow start: half the rate was still fine
            rate = max(current / 2.0, (measured or 0.0) * self._settle)
        else:
            rate = current * self._backoff
            if measured is not None:
                rate = max(rate, measured * self._settle)
        rate = max(limits.min_rate, rate)
        ceiling = self._ceiling(kind)
        if ceiling is not None:
            rate = min(rate, ceiling)
        new = LearnedLimit(
            rate=rate,
            burst=self._burst(kind),
            estimate=current,  # here: the rate that drew the 429, an upper bound
            source="429s",
            episode=episode + 1,
        )
        await self.state.write(kind, new)
        log.info(
            "fleet 429 on %s: rate %s -> %.3g req/s (accepted %s req/s), gate %.2f s",
            kind,
            "unknown" if current is None else f"{current:.3g}",
            rate,
            "unknown" if measured is None else f"{measured:.3g}",
            pause,
        )
