"""What a 429 says about the limit, by the phase of the pace it refused.

The estimate comes from what the server *admitted* (the sends since its
bucket was last full, a *drain*; see :mod:`._bucketfit`):

* a ramp's 429: half the pace, at most 0.9 of the rate admitted in
  the unit before (a fast climb overshoots by a factor that grows with the
  server's burst; one refusal cannot tell rate from burst);
* a probe's 429: the token bucket (rate and burst) that explains both this
  drain and the last episode's, settled at 0.97 of that rate; else, with the
  burst known, the rate this drain gives; else the probe's pace where its
  excess over that pace adds up to a guessed burst. Never below the pace held;
* a 429 at the settled pace (or within 0.75 unit of a probe's start: the
  server's bucket was empty already, and the last probe's drain then tells
  the burst at the lower rate): a step down by 10 %, larger each time in a row
  (19 %, 27 % ...), from the rate admitted over a whole unit when there is
  one (the rate sent, when most of that unit's replies are still out); lower
  still when the drain with the known burst says so (a limit that dropped is
  found in the second episode).

:func:`read_refusal` picks the rule by the phase and returns a
:class:`Reading`. The functions read (and, for the step-down count, a refused
pace and a fitted burst, write) the pace they are given (:class:`Estimating`);
the pace decides what to do with the estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from ._admitted import SendLog, rate_in
from ._bucketfit import Drain, agreement, excess, joint_fit, rate_for_burst
from ._pacetune import _EARLY, _STALLED, Phase

__all__ = [
    "Estimating",
    "Reading",
    "believable",
    "learn_burst",
    "probe_estimate",
    "ramp_estimate",
    "read_refusal",
    "step_down",
]

RAMP_ADMITTED_SHARE = 0.9  # a ramp's estimate: at most this share of the rate admitted before
SETTLE = 0.95  # the settled pace, as a share of an estimate from the rules of thumb
_RAMP_SHARE = 0.5  # a ramp's 429 comes at up to twice the limit or more: estimate half
_BURST_PRIOR = 0.1  # units of the probe's pace taken as the server's burst until learned
_STEP_DOWN = 0.9  # a 429 at the settled pace: settle this much lower
_GUESS_HIGH = 2.5  # a ramp's burst guess may be this many times the fitted burst
_FIT_FLOOR = 0.9  # a fitted rate below this share of the pace held is not believed
_DROP_FLOOR = 0.4  # a settled pace's 429 fits a rate no lower than this share of it
_REPLIED = 0.8  # fewer replies in than this share of the unit's sends: read what was sent


class Estimating(Protocol):
    """What the rules read and write of a :class:`~._pace.Pace`."""

    log: SendLog
    unit: float
    phase: Phase
    t: float
    base: float
    estimate: float | None
    fitted: bool
    confirmed: bool
    last_drain: Drain | None
    burst_fitted: bool
    estimated_burst: float | None
    step_downs: int
    refused_pace: float | None

    def set_burst(self, burst: float) -> None:
        """Take ``burst`` as the server's."""


class Reading(NamedTuple):
    """What a 429 that starts an episode says: the estimate, and how it was found."""

    estimate: float
    fitted: bool = False  # fitted to the server's bucket (not a rule of thumb)
    fitted_burst: float | None = None  # the server's burst, when fitted with the rate
    probed: bool = False  # read as a probe's 429
    backed_off: bool = False  # refused close to a limit found twice: back to its fitted share


def read_refusal(
    pace: Estimating,
    drain: Drain,
    granted_at: float,
    granted_rate: float,
    sent: Sequence[float] | None = None,
) -> Reading:
    """Read a 429 granted at ``granted_at`` (at ``granted_rate``) by the phase it refused.

    A ramp's; a probe's (past its start and above the settled pace); one
    at a pace settled close to a limit found twice (back to the fitted
    share of the same limit first: the pace was just too close, or a late
    loop bunched its sends; a 429 there too steps down); else a step down.
    ``sent``: a ramp's sends to count, when not the pace's own (a fleet's ledger).
    """
    if pace.phase == "ramp":
        return Reading(ramp_estimate(pace, granted_at, granted_rate, sent))
    if pace.phase == "probe" and granted_rate > pace.base and pace.t >= _EARLY * pace.unit:
        estimate, fitted_burst, fitted = probe_estimate(pace, drain, granted_at, granted_rate)
        if pace.refused_pace is not None:
            # A settled pace was refused just before: a fit (a few % off, the
            # burst a little short) must not put the pace back above it.
            estimate = min(estimate, pace.refused_pace)
            pace.refused_pace = None
        pace.step_downs = 0
        return Reading(estimate, fitted, fitted_burst, probed=True)
    if pace.confirmed and pace.phase == "hold" and pace.estimate is not None:
        pace.refused_pace = granted_rate
        return Reading(pace.estimate, pace.fitted, backed_off=True)
    # Granted well under the settled pace: the client's own sends were held back (a
    # stall: replies late, the in-flight bound reached). The server had just admitted
    # the settled pace, so read the 429 as one at that pace, from the pace alone.
    stalled = granted_rate < _STALLED * pace.base
    estimate, fitted = step_down(
        pace, drain, granted_at, max(granted_rate, pace.base), measured=not stalled
    )
    last = pace.last_drain
    if pace.phase == "probe" and not stalled and last is not None and last.times:
        # The last probe's estimate was too high, so its burst too small: take the
        # burst that drain tells at this lower rate.
        burst = excess(last, estimate)
        if (pace.estimated_burst or 0.0) < burst and believable(pace, burst):
            pace.set_burst(burst)
    return Reading(estimate, fitted)


def ramp_estimate(
    pace: Estimating, granted_at: float, granted_rate: float, sent: Sequence[float] | None = None
) -> float:
    """A ramp's 429: half the pace, or most of the rate admitted in the unit before.

    The climb overshoots by a factor that grows with the server's burst, and
    one refusal cannot tell rate from burst; the next episode fits both.
    Every send before the first refusal was admitted, replied to or not.
    ``sent``: the sends to count, when not the pace's own (a fleet's ledger).
    """
    log = pace.log
    times = log.history if sent is None else sent
    admitted = rate_in(times, max(granted_at - pace.unit, log.full_at), granted_at)
    estimate = granted_rate * _RAMP_SHARE
    return min(estimate, RAMP_ADMITTED_SHARE * admitted) if admitted > 0.0 else estimate


def probe_estimate(
    pace: Estimating, drain: Drain, granted_at: float, granted_rate: float
) -> tuple[float, float | None, bool]:
    """A probe's 429: the bucket fitted to this drain and the last, else the known burst.

    Returns the estimate, the server's burst when both were fitted, and
    whether the estimate was fitted (not guessed). The burst is fitted once
    (the ramp's drain and the first probe's), then used as known.
    """
    last = pace.last_drain
    if last is not None and last.end < granted_at - pace.log.keep:
        last = None  # long ago: the limit may have changed in between
    agreed = 0.0
    if last is not None and not pace.burst_fitted:
        fit = joint_fit(last, drain, pace.base, granted_rate)
        if fit is not None and fit[0] >= _FIT_FLOOR * pace.base and believable(pace, fit[1]):
            return max(pace.base, fit[0]), fit[1], True
        # Like drains do not pin the bucket down, but where they agree is a better
        # floor than a guessed burst (a ramp's guess errs large, so its rate low).
        agreed = agreement(last, drain, pace.base, granted_rate) or 0.0
        if agreed and not believable(pace, 0.5 * (excess(last, agreed) + excess(drain, agreed))):
            agreed = 0.0  # e.g. the limit changed between the two drains
    # The probe's pace is past the limit by the time the 429 comes: the server
    # first drained its burst (known, else guessed). The rate at which this
    # drain's excess adds up to that burst is the limit.
    burst = pace.estimated_burst or _BURST_PRIOR * pace.unit * granted_rate
    rate = rate_for_burst(drain, burst, pace.base, granted_rate)
    if rate is not None:
        if last is not None and agreed > max(pace.base, rate):
            # The burst both drains tell at that rate is a better guess than the old one.
            pace.set_burst(0.5 * (excess(last, agreed) + excess(drain, agreed)))
        return max(pace.base, rate, agreed), None, pace.burst_fitted
    admitted_rate = pace.log.admitted_rate(granted_at, 2.0 * pace.unit) or granted_rate
    return max(pace.base / SETTLE, min(granted_rate / 1.05, admitted_rate)), None, False


def believable(pace: Estimating, burst: float) -> bool:
    """A fitted burst near the one the ramp's drain suggested (2 times over, 2.5 under).

    The ramp's guess runs high: it is the drain's excess over the ramp's
    estimate, which is below the limit on purpose. A fit of about half of
    it is the usual case (19.5 guessed for a true 10), not an outlier.
    """
    if burst < 1.0:
        return False
    guess = pace.estimated_burst
    return guess is None or guess / _GUESS_HIGH <= burst <= 2.0 * guess


def step_down(
    pace: Estimating, drain: Drain, granted_at: float, granted_rate: float, *, measured: bool = True
) -> tuple[float, bool]:
    """A 429 at the settled pace: the limit dropped (or the pace was a bit too fast).

    Step down by 10 %, faster each time in a row; with the burst known, the
    drain since the bucket was last full says where the new limit is, and a
    lower answer wins. Returns the estimate and whether it was fitted. Not
    ``measured``: the sends before the 429 were held back on the client's
    side (a stall), so what was admitted meanwhile and the drain say nothing
    of the limit; the step down is from ``granted_rate`` alone.
    """
    pace.step_downs += 1
    pace.refused_pace = granted_rate
    if not measured:
        return granted_rate * _STEP_DOWN**pace.step_downs / SETTLE, False
    # A window that opens on a full bucket (right after a pause) measures the
    # saved burst more than the rate: trust only a whole unit.
    log = pace.log
    start = granted_at - pace.unit
    admitted = rate_in(log.accepted, start, granted_at) if start > log.full_at else 0.0
    sent = rate_in(log.history, start, granted_at) if admitted else 0.0
    if admitted < _REPLIED * sent:
        # Most of the unit's replies are still out (a server stall): every send granted
        # before the refused one was admitted, replied to or not; read the rate sent.
        admitted = sent
    estimate = min(granted_rate, admitted or granted_rate) * _STEP_DOWN**pace.step_downs
    estimate /= SETTLE
    if pace.estimated_burst is not None:
        rate = rate_for_burst(drain, pace.estimated_burst, _DROP_FLOOR * granted_rate, granted_rate)
        if rate is not None and rate < estimate:
            return rate, pace.burst_fitted
    return estimate, False


def learn_burst(pace: Estimating, drain: Drain, estimate: float, fitted: float | None) -> None:
    """The server's burst: fitted, else what this drain admitted beyond ``estimate``."""
    if fitted is not None:
        burst = fitted
        pace.burst_fitted = True
    elif pace.estimated_burst is not None:
        # Known from a fit, an earlier drain or the class it followed (whose drain since
        # the start, cut to the history kept, says nothing of a burst): keep it.
        return
    elif drain.times:
        burst = excess(drain, estimate)
    else:
        return
    pace.set_burst(burst)
