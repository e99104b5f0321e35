"""How a pace moves with demand: the ramp's doubling, the end of a hold, a probe's climb.

:func:`advance` moves a :class:`~._pace.Pace`'s phase clock by seconds of
demand and recomputes its rate: a ramp doubles every half unit; a hold that
has lasted its time becomes a probe; a probe climbs along
``base * 2 ** ((t / 4u) ** 2)`` (four times as fast below an earlier, higher
limit, and no further than that limit's pace until the server is seen
admitting it). A probe admitted well past the estimate raises it; one back at
the pace of an old limit (or of a configured one) while the server admits
most of it settles there without paying a 429.

A climbing pace never runs more than twice ahead of what was actually sent in
the last unit (as botocore's adaptive mode caps its bucket): a client held
back by its own CPU or connections learns nothing by raising a pace it cannot
use. Where a pace settles, and for how long, is the pace's own
(:meth:`~._pace.Pace.settle_at`).
"""

from __future__ import annotations

from typing import Protocol

from ._admitted import SendLog
from ._pacetune import (
    _BACK_AT,
    _BACK_BURST_SHARE,
    _BACK_UNITS,
    _HELD,
    _HISTORY_UNITS,
    _PROBE_SCALE,
    _RAISE_UNITS,
    _RAISED,
    _RAMP_DOUBLING,
    _SEND_CAP,
    Phase,
)
from ._ratestate import LimitSource

__all__ = ["Climbing", "advance"]


class Climbing(Protocol):
    """What the climb reads and writes of a :class:`~._pace.Pace`."""

    log: SendLog
    unit: float
    start_rate: float
    top: float
    ceiling: float | None
    phase: Phase
    t: float
    hold: float
    base: float
    rate: float
    probes: int
    estimate: float | None
    estimated_burst: float | None
    step_downs: int
    high_water: float | None
    returned: bool

    def settle_share(self) -> float:
        """The share of an estimate the pace settles at."""

    def settle_at(
        self, estimate: float, source: LimitSource, *, changed: bool, confident: bool = False
    ) -> None:
        """Settle the pace under ``estimate``."""


def advance(pace: Climbing, demand_seconds: float, now: float) -> None:
    """Move the phase clock by ``demand_seconds`` of demand and recompute the pace."""
    if demand_seconds <= 0.0 or pace.phase in ("fixed", "hinted"):
        return
    pace.t += demand_seconds
    if pace.phase == "ramp":
        rate = pace.start_rate * 2.0 ** min(pace.t / (_RAMP_DOUBLING * pace.unit), 60.0)
        pace.rate = min(rate, _send_cap(pace, now))
    elif pace.phase == "hold" and pace.t >= pace.hold and pace.base < pace.top:
        pace.phase, pace.t = "probe", pace.t - pace.hold
        pace.probes += 1
    if pace.phase == "probe":
        _probe(pace, demand_seconds, now)
    if pace.rate >= pace.top:
        pace.rate = pace.top
        if pace.phase == "probe" and pace.ceiling is not None and _back_at(pace, pace.top, now):
            _return_to(pace, pace.ceiling)
    elif pace.returned and pace.phase == "hold" and pace.t >= _HELD * pace.unit:
        pace.returned = False
        pace.high_water = None  # held there a while: the old limit is back for good


def _probe(pace: Climbing, demand_seconds: float, now: float) -> None:
    """A probe's climb, and what the server admitted on the way."""
    # Below an earlier, higher limit, climb four times as fast: it may be back.
    high_water = pace.high_water
    scale = _PROBE_SCALE if high_water is None else 0.25 * _PROBE_SCALE
    x = pace.t / (scale * pace.unit)
    climb = pace.base * 2.0 ** min(x * x, 30.0)
    pace.rate = min(climb, _send_cap(pace, now))
    if pace.rate < climb:
        pace.t = max(0.0, pace.t - demand_seconds)  # wait for the sends to catch up
    if high_water is not None:
        # ... but no further than the old limit's pace until the server is seen
        # admitting it: a climb past it draws a 429 before that is measured, and
        # that 429's drain (begun under the lower limit) reads the limit low.
        pace.rate = min(pace.rate, max(pace.base, pace.settle_share() * high_water))
    admitted = pace.log.admitted_rate(now, _RAISE_UNITS * pace.unit)
    if pace.estimate is not None and admitted > _RAISED * pace.estimate:
        # Units admitted well past the estimate, no 429: the limit went up.
        pace.estimate = admitted / _RAISED
        pace.step_downs = 0
    if high_water is not None and _back_at(
        pace, min(pace.top, pace.settle_share() * high_water), now
    ):
        # Back at the pace of the old limit with no 429: it is back. Settle there
        # rather than pay a 429 to find it again.
        _return_to(pace, high_water)


def _send_cap(pace: Climbing, now: float) -> float:
    """A margin over the rate actually sent (never below the start rate)."""
    return max(pace.start_rate, _SEND_CAP * pace.log.sent_rate(now))


def _back_at(pace: Climbing, rate: float, now: float) -> bool:
    """The pace reached ``rate`` and the server admitted most of it over the last two units.

    The pace runs ahead of the sends and the server refuses only once its
    burst is gone, so the pace alone is no proof: a limit still down admits
    at most its rate plus its burst over the span, so the burst is not counted.
    """
    if pace.rate < rate:
        return False
    burst = pace.estimated_burst or 0.0
    # Long enough that the burst is a small part of the span: over a short unit (a
    # time-compressed run) burst / span alone could exceed what the margin allows, and
    # the pace would never be found back even when the server admits all of it.
    span = max(_BACK_UNITS * pace.unit, _BACK_BURST_SHARE * burst / rate if rate > 0 else 0.0)
    span = min(span, _HISTORY_UNITS * pace.unit)
    admitted = pace.log.admitted_rate(now, span) - burst / span
    return admitted >= _BACK_AT * rate


def _return_to(pace: Climbing, limit: float) -> None:
    """A probe climbed back to an old limit (or the ceiling) with no 429: settle there.

    Not yet held there, so the old limit still counts until the pace held a
    while: a 429 soon after (the climb outran the server's refusal) finds a
    limit to come back to, and probes stay frequent.
    """
    high_water = pace.high_water
    if pace.ceiling is not None and limit >= pace.ceiling:
        pace.settle_at(pace.ceiling, "configured", changed=False)
    else:
        pace.settle_at(limit, "429s", changed=False)
    pace.high_water = high_water
    pace.returned = high_water is not None
