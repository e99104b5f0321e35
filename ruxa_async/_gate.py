"""The 429 gate: how long a 429 closes it, when it reopens, and how long gates were closed.

A :class:`Gate` holds back one endpoint class (or both, ``"client"``) until
its deadline. A 429 closes it for ``Retry-After`` (capped at ``max_pause``),
or for a pause that doubles with each 429 in a row whose request was sent
after the gate's previous pause, plus a small jitter. :class:`ClosedTime`
adds up the time any gate was closed, counting overlaps once. Pure
bookkeeping on clock readings the rate controller passes in: no asyncio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ._config import RateLimits
from ._ratestate import GateScope

__all__ = ["ClosedTime", "Gate"]

_log = logging.getLogger("ruxa_async")

_JITTER_FRACTION = 0.03  # gate jitter: up to this share of the pause ...
_JITTER_CAP = 0.05  # ... and never more than this many seconds
_MAX_DOUBLINGS = 30


class Gate:
    """One 429 gate: nothing behind it may be sent before ``deadline``."""

    __slots__ = ("closed", "closed_at", "deadline", "name", "paused", "streak")

    def __init__(self, name: GateScope, now: float) -> None:
        self.name: GateScope = name
        self.deadline = now  # nothing may be sent before this clock reading
        self.closed_at = float("-inf")  # when the current (or last) pause began
        self.closed = False  # set when closed, cleared (and logged) once seen open
        self.streak = 0  # pauses in a row with no success in between
        self.paused = 0.0  # closed time of the finished pauses

    def paused_until(self, now: float) -> float:
        """Seconds this gate was closed, up to ``now``."""
        if self.closed_at == float("-inf"):
            return 0.0
        return self.paused + max(0.0, min(now, self.deadline) - self.closed_at)

    def on_admitted(self, granted_at: float) -> None:
        """A request granted at ``granted_at`` was admitted: a success ends the streak of 429s."""
        if self.streak and granted_at >= self.deadline:
            self.streak = 0

    def pause(
        self,
        granted_at: float,
        retry_after: float | None,
        limits: RateLimits,
        rng: Callable[[], float],
    ) -> float:
        """Seconds a 429 for a request granted at ``granted_at`` closes this gate.

        ``Retry-After`` (capped at ``max_pause``), else
        ``pause_without_retry_after`` doubled for each consecutive 429 whose
        request was sent after the previous pause began; plus a jitter of at
        most 3 % of the pause and 50 ms, drawn from ``rng``.
        """
        if granted_at > self.closed_at:  # sent after the last pause began
            self.streak += 1
        if retry_after is not None:
            pause = min(max(retry_after, 0.0), limits.max_pause)
        else:
            doublings = min(max(self.streak, 1) - 1, _MAX_DOUBLINGS)
            pause = min(limits.pause_without_retry_after * 2.0**doublings, limits.max_pause)
        return pause + rng() * min(_JITTER_CAP, _JITTER_FRACTION * pause)

    def wait(self, now: float) -> float:
        """Seconds until the gate reopens; 0 when open (its reopening is logged once)."""
        remaining = self.deadline - now
        if remaining > 0:
            return remaining
        if self.closed:
            self.closed = False
            _log.debug("%s gate reopened after %.3f s", self.name, self.deadline - self.closed_at)
        return 0.0

    def close(self, now: float, deadline: float) -> bool:
        """Keep the gate closed until ``deadline``; False if it already was that long."""
        if deadline <= max(now, self.deadline):
            return False
        if self.deadline <= now:
            if self.closed_at != float("-inf"):
                self.paused += self.deadline - self.closed_at
            self.closed_at = now
        self.deadline = deadline
        self.closed = True
        return True


class ClosedTime:
    """The time any gate was closed: the union of the closed intervals."""

    __slots__ = ("_before", "_end", "_start")

    def __init__(self, now: float) -> None:
        self._before = 0.0  # closed time of finished (merged) intervals
        self._start = now  # current (or last) merged interval
        self._end = now

    def add(self, now: float, deadline: float) -> None:
        """A gate closed at ``now`` until ``deadline``."""
        if now <= self._end:
            self._end = max(self._end, deadline)
        else:
            self._before += self._end - self._start
            self._start, self._end = now, deadline

    def seconds(self, now: float) -> float:
        """Seconds closed, up to ``now``."""
        return self._before + max(0.0, min(now, self._end) - self._start)
