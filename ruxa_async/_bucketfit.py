"""Fitting a server's token bucket (rate and burst) to the sends it admitted before a 429.

A token bucket of ``rate`` per second holding at most ``burst`` tokens refuses
a request when it is empty. Take the sends a client let go since a moment the
bucket was full (the start, or the end of a ``Retry-After`` pause), up to the
one refused at ``end``. Over any window ``[t, end)`` the server admitted at
most ``burst + rate * (end - t)`` of them, and the refusal says some window
reached that bound. So for each candidate rate, the largest *excess* of sends
over a refill at that rate (:func:`excess`) is the burst the server must have
had. One refusal gives a curve of (rate, burst) pairs, falling with the rate;
two refusals whose sends had different shapes (a fast climb that drained the
bucket in a fraction of a second, a slow probe that took seconds) cross at one
point: the server's rate and burst (:func:`joint_fit`). Each excess is known
to about a token (jitter of a few milliseconds), so two drains *agree* near the
crossing, and like drains agree over a range (:func:`agreement`). With the
burst known, one refusal gives the rate (:func:`rate_for_burst`).

Pure functions on sorted grant times; no clock, no state. The callers decide
which sends a drain holds and whether a fit is believable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import attrs

__all__ = ["Drain", "agreement", "excess", "joint_fit", "rate_for_burst", "window"]

_ITERATIONS = 40  # bisection steps: 2**-40 of the interval
_DISTINCT = 1.5  # two drains' windows must differ by this factor to be fitted together
_TOLERANCE = 1.0  # tokens: two drains whose excesses differ by no more agree
_GRID = 48  # rates scanned for the lowest one where two drains agree


@attrs.frozen
class Drain:
    """The sends (sorted grant times) from a full bucket up to a refusal at ``end``."""

    times: Sequence[float]
    end: float

    @property
    def span(self) -> float:
        """Seconds from the first send to the refusal."""
        return self.end - self.times[0] if self.times else 0.0


def excess(drain: Drain, rate: float) -> float:
    """The most sends of ``drain`` beyond a refill at ``rate``, over windows ending at its end.

    Counts the refused send too (it found less than one token), so this is the
    burst a bucket refilling at ``rate`` must have had for that refusal.
    """
    return _best_window(drain, rate)[0]


def window(drain: Drain, rate: float) -> float:
    """The length of the window that gives :func:`excess` at ``rate`` (seconds)."""
    return _best_window(drain, rate)[1]


def _best_window(drain: Drain, rate: float) -> tuple[float, float]:
    best = 1.0  # the refused send alone, in a window of no length
    length = 0.0
    count = 1.0
    end = drain.end
    for t in reversed(drain.times):
        count += 1.0
        value = count - rate * (end - t)
        if value > best:
            best, length = value, end - t
    return best - 0.5, length  # the refused send needed a whole token; split the difference


def rate_for_burst(drain: Drain, burst: float, low: float, high: float) -> float | None:
    """The rate in ``[low, high]`` at which ``drain``'s excess equals ``burst``, if any."""
    if not drain.times or high <= low:
        return None
    if excess(drain, low) < burst or excess(drain, high) > burst:
        return None
    for _ in range(_ITERATIONS):
        mid = 0.5 * (low + high)
        if excess(drain, mid) > burst:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def joint_fit(first: Drain, second: Drain, low: float, high: float) -> tuple[float, float] | None:
    """The (rate, burst) in ``[low, high]`` that explains both refusals, if they pin it down.

    The rate is :func:`agreement`'s. Only drains whose bucket ran dry over
    windows of clearly different lengths there (one at least 1.5 times the
    other, e.g. a fast climb and a slow probe) pin the bucket down; for like
    drains no fit is claimed.
    """
    rate = agreement(first, second, low, high)
    if rate is None:
        return None
    spans = sorted((window(first, rate), window(second, rate)))
    if spans[1] < _DISTINCT * spans[0]:
        return None
    return rate, 0.5 * (excess(first, rate) + excess(second, rate))


def agreement(first: Drain, second: Drain, low: float, high: float) -> float | None:
    """The lowest rate in ``[low, high]`` where both refusals tell the same burst, if any.

    Each excess is known to half a token (the refused send found less than
    one) and sends reach the server a few milliseconds off their grant
    times, so two drains *agree* where their excesses are within
    :data:`_TOLERANCE` tokens, not only where the curves cross. Curves of
    like slopes may agree over a range, or cross twice in it, and a jitter of
    a few milliseconds decides which crossing a bisection finds; so the rate
    comes from the lowest range of rates where the drains agree: its first
    crossing, else the rate where they come closest.
    """
    if not first.times or not second.times or high <= low:
        return None

    def gap(rate: float) -> float:
        return excess(first, rate) - excess(second, rate)

    rates = [low + (high - low) * i / _GRID for i in range(_GRID + 1)]
    gaps = [gap(rate) for rate in rates]
    found: float | None = None
    closest = math.inf
    for i, value in enumerate(gaps):
        if i > 0 and (value > 0.0) != (gaps[i - 1] > 0.0):  # the first crossing
            return _root(gap, rates[i - 1], rates[i], gaps[i - 1] > 0.0)
        if abs(value) <= _TOLERANCE:
            if abs(value) < closest:
                found, closest = rates[i], abs(value)
        elif found is not None:
            break  # the lowest range of agreement ended without a crossing
    return found


def _root(gap: Callable[[float], float], low: float, high: float, positive_low: bool) -> float:
    for _ in range(_ITERATIONS):
        mid = 0.5 * (low + high)
        if (gap(mid) > 0.0) == positive_low:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)
