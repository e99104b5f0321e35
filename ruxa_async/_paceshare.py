"""A pace taking over another's finding: another endpoint class's, or another controller's.

A class still ramping with no 429 of its own may *follow* another class's
finding (the controller lets queries follow creates). Controllers sharing a
:class:`~._ratestate.RateState` write what they learned (:func:`learned_limit`)
and take over each other's findings (:func:`adopt`, :func:`restore`).
"""

from __future__ import annotations

import math
from typing import Protocol

from ._admitted import SendLog
from ._bucketfit import Drain
from ._estimates import RAMP_ADMITTED_SHARE
from ._pacetune import _CHANGED, _HOLD, _MAX_HOLD_DOUBLINGS, _SETTLED_BURST, _TAIL, Phase
from ._ratestate import LearnedLimit, LimitSource

__all__ = ["Sharing", "adopt", "follow", "learned_limit", "restore"]


class Sharing(Protocol):
    """What taking over a finding reads and writes of a :class:`~._pace.Pace`."""

    adaptive: bool
    ceiling: float | None
    min_rate: float
    top: float
    unit: float
    log: SendLog
    phase: Phase
    source: LimitSource
    episodes: int
    following: bool
    t: float
    base: float
    rate: float
    burst: float
    hold: float
    hold_doublings: int
    estimate: float | None
    estimated_burst: float | None
    last_drain: Drain | None

    def settle_at(
        self, estimate: float, source: LimitSource, *, changed: bool, confident: bool = False
    ) -> None:
        """Settle the pace under ``estimate``."""


def follow(pace: Sharing, leader: Sharing, now: float) -> bool:
    """Start from another class's settled pace: a prior, never a ceiling.

    A class still ramping with no 429 of its own (queries, usually, whose
    demand starts later) takes the pace the other class settled at after
    its 429, and holds at least :data:`_HOLD` units before probing, so it
    takes the other's next finding too (a fitted bucket) instead of paying
    a ``Retry-After`` of its own to learn the same. It keeps following
    only while that raises its pace; its own first 429 ends it. Returns
    True if the pace changed.
    """
    if not pace.adaptive or leader.phase != "hold" or leader.source != "429s":
        return False
    if not (pace.phase == "ramp" and pace.episodes == 0) and not pace.following:
        return False
    # Admitted well above the other class's pace already: that is evidence of its own.
    admitted = RAMP_ADMITTED_SHARE * pace.log.admitted_rate(now, pace.unit)
    base = min(max(leader.base, admitted, pace.min_rate), pace.top)
    if pace.following and base <= pace.base:
        return False
    pace.following = True
    pace.base = pace.rate = base
    pace.phase = "hold"
    pace.t = 0.0
    pace.hold = max(leader.hold, _HOLD * pace.unit)
    if pace.ceiling is None:
        # The other class's burst is the best guess for this one's, until a fit says more.
        if leader.estimated_burst is not None:
            pace.estimated_burst = leader.estimated_burst
            pace.burst = max(1.0, leader.estimated_burst / 2.0)
        else:
            pace.burst = max(pace.burst, _SETTLED_BURST)
    return True


def restore(pace: Sharing, learned: LearnedLimit) -> None:
    """Adopt what another controller sharing the state learned."""
    if not pace.adaptive or learned.rate <= 0.0:
        return
    pace.estimate = learned.estimate
    pace.estimated_burst = learned.estimated_burst
    pace.source = learned.source
    pace.rate = pace.base = learned.rate
    pace.burst = max(1.0, learned.burst)
    if pace.phase == "ramp" or learned.source == "headers":
        pace.phase = "hinted" if learned.source == "headers" else "hold"
        pace.t = 0.0


def adopt(pace: Sharing, learned: LearnedLimit, *, new_episode: bool) -> None:
    """Take over a limit another controller sharing the state wrote, as the writer did.

    The result of a 429 episode (``new_episode``) settles this pace exactly
    as the writer's settled: a hold, as long as the writer's, before any
    probe, so the sharers do not probe one after the other.
    """
    if new_episode and pace.adaptive and learned.source == "429s" and learned.estimate:
        previous = pace.estimate
        changed = previous is None or abs(learned.estimate - previous) > _CHANGED * previous
        pace.settle_at(learned.estimate, "429s", changed=changed)
        if learned.hold is not None:  # probe when the writer does, not alone
            pace.hold = learned.hold
            doublings = round(math.log2(max(1.0, learned.hold / (_HOLD * pace.unit))))
            pace.hold_doublings = min(doublings, _MAX_HOLD_DOUBLINGS)
        # This pace's own sends before the writer's 429 drained the same bucket: kept,
        # the next 429 here fits rate and burst from both (the writer's drain stays there).
        times = pace.log.before_pause()
        if len(times) >= 2:  # refused about one spacing after the last send here
            tail = times[-_TAIL:]
            pace.last_drain = Drain(times, times[-1] + (tail[-1] - tail[0]) / (len(tail) - 1))
    elif learned.hold is not None and pace.adaptive and learned.source != "headers":
        # The writer's class followed the other's finding and holds: so does this one, else
        # it probes alone, far past the pace the fleet's bucket keeps (the writer's).
        pace.phase, pace.t, pace.hold, pace.following = "hold", 0.0, learned.hold, True
    restore(pace, learned)


def learned_limit(pace: Sharing, episode: int) -> LearnedLimit:
    """What this pace knows, to write to a :class:`RateState`."""
    return LearnedLimit(
        rate=pace.rate,
        burst=pace.burst,
        estimate=pace.estimate,
        estimated_burst=pace.estimated_burst,
        source=pace.source,
        episode=episode,
        hold=pace.hold if pace.phase == "hold" else None,
    )
