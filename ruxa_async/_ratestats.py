"""What the rate controller reports: a snapshot, with what was learned per endpoint class.

Plain frozen records, built from a :class:`~ruxa_async._pace.Pace` and the
controller's counters by :meth:`RateController.statistics
<ruxa_async._limiter.RateController.statistics>`; split out of the
controller, they know nothing of how a pace is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

from ._pace import Pace
from ._ratestate import LimitSource

__all__ = ["ClassStatistics", "RateStatistics", "class_statistics", "reported_rate"]


@attrs.frozen(kw_only=True)
class ClassStatistics:
    """What the controller learned about one endpoint class (create or query).

    ``rate`` is the pace it sends at now and ``burst`` the saved tokens it may
    spend back to back; ``estimated_limit`` and ``estimated_burst`` are its
    estimate of the server's limit (None: not learned); ``source`` says where
    the estimate came from (``"configured"``, ``"headers"``, ``"429s"`` or
    ``"slow start"``); ``phase`` is ``ramp``, ``hold``, ``probe``, ``hinted``
    or ``fixed``; ``probes`` counts upward probes, ``episodes`` the 429
    episodes of this class; ``paused_seconds`` is the time its gate was closed.
    """

    rate: float
    burst: float
    estimated_limit: float | None
    estimated_burst: float | None
    source: LimitSource
    phase: str
    probes: int
    episodes: int
    paused_seconds: float = 0.0


@attrs.frozen(kw_only=True)
class RateStatistics:
    """A snapshot of the rate controller, from :meth:`RateController.statistics`.

    ``create_rate`` and ``query_rate`` are the current paces in requests per
    second (None while a class still ramps up with nothing learned);
    ``classes`` has the details per class. ``paused_seconds`` is the time any
    gate was closed (the union of the closed intervals, up to now);
    ``sent_while_gated`` is a self-check that stays 0 unless the controller
    has a bug.
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
    classes: Mapping[str, ClassStatistics] = attrs.field(factory=dict)


def reported_rate(pace: Pace) -> float | None:
    """The pace to report: None while it still ramps with nothing learned, or is unpaced."""
    return None if pace.phase == "ramp" or pace.rate == math.inf else pace.rate


def class_statistics(pace: Pace, paused: float) -> ClassStatistics:
    """What ``pace`` learned, with the seconds its gate was closed."""
    return ClassStatistics(
        rate=pace.rate,
        burst=pace.burst,
        estimated_limit=pace.estimate,
        estimated_burst=pace.estimated_burst,
        source=pace.source,
        phase=pace.phase,
        probes=pace.probes,
        episodes=pace.episodes,
        paused_seconds=paused,
    )
