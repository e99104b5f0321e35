"""What one endpoint class sent and what the server admitted, on an injected clock.

A :class:`SendLog` keeps the grant times of recent sends (all of them, and
those the server admitted: any reply but a 429) and when the server's token
bucket was last known full (the end of a ``Retry-After`` pause). From these
the pace reads the rate the server admitted over a span, the rate actually
sent (a climbing pace stays near it), and a *drain*: the sends since the
bucket was last full, which :mod:`._bucketfit` turns into a rate and a burst.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable

from ._bucketfit import Drain

__all__ = ["SendLog", "rate_in"]


class SendLog:
    """Grant times of recent sends and admissions, kept for ``keep`` seconds."""

    def __init__(self, *, unit: float, keep: float, now: float) -> None:
        self.unit = unit
        self.keep = keep
        self.full_at = now  # the server's bucket is assumed full at this time
        self.drained_from = now  # ... and was before the last pause (full_at is its end)
        self.accepted: deque[float] = deque()  # grant times of admitted sends, recent, sorted
        self.sent: deque[float] = deque()  # grant times within the last unit
        self.history: deque[float] = deque()  # grant times, the last ``keep`` seconds

    def on_sent(self, now: float) -> None:
        """A request was granted at ``now``."""
        sent = self.sent
        sent.append(now)
        horizon = now - self.unit
        while sent[0] < horizon:
            sent.popleft()
        history = self.history
        history.append(now)
        horizon = now - self.keep
        while history[0] < horizon:
            history.popleft()

    def on_accepted(self, granted_at: float, now: float) -> None:
        """The request granted at ``granted_at`` was admitted (any reply but a 429)."""
        accepted = self.accepted
        if not accepted or granted_at >= accepted[-1]:
            accepted.append(granted_at)
        else:  # replies come back a little out of order: keep the grant times sorted
            bisect.insort(accepted, granted_at)
        horizon = now - self.keep
        while accepted and accepted[0] < horizon:
            accepted.popleft()

    def on_pause_end(self, reopens_at: float) -> None:
        """A ``Retry-After`` pause ends at ``reopens_at``: the server's bucket is full again."""
        if self.history and self.history[-1] >= self.full_at:  # not an extension of the pause
            self.drained_from = self.full_at
        self.full_at = reopens_at

    def admitted_rate(self, now: float, span: float) -> float:
        """The rate admitted over the last ``span`` seconds (0.0 if that reaches into a pause)."""
        start = now - span
        if start < self.full_at:
            return 0.0
        accepted = self.accepted
        return (len(accepted) - bisect.bisect_left(accepted, start)) / span

    def sent_rate(self, now: float) -> float:
        """The rate sent over the last unit, or since the last pause's end when that is nearer.

        Never over less than a quarter unit, so a fresh start does not read as a
        burst of speed.
        """
        sent = self.sent
        horizon = now - self.unit
        while sent and sent[0] < horizon:
            sent.popleft()
        span = max(0.25 * self.unit, min(self.unit, now - self.full_at))
        return len(sent) / span

    def drain(self, granted_at: float) -> Drain:
        """The sends since the server's bucket was last known full, up to ``granted_at``."""
        since = self.full_at
        times = [t for t in self.history if since <= t <= granted_at]
        if times and times[-1] == granted_at:
            times.pop()  # the refused send itself (sends granted in the same instant went first)
        return Drain(tuple(times), granted_at)

    def before_pause(self) -> tuple[float, ...]:
        """The sends between the bucket's last two full times: the last episode's drain."""
        return tuple(t for t in self.history if self.drained_from <= t < self.full_at)


def rate_in(times: Iterable[float], start: float, end: float) -> float:
    """The rate of the ``times`` in ``[start, end)``, per second (0.0 for an empty span)."""
    if end <= start:
        return 0.0
    return sum(1 for t in times if start <= t < end) / (end - start)
