"""One endpoint class's pace: what rate to send at, and what was learned about the limit.

A :class:`Pace` is pure arithmetic on an injected clock (no asyncio, no I/O),
so its rules are tested directly. It moves through four phases:

``ramp``
    The limit is unknown and no 429 came yet: start at ``start_rate`` and
    double every half ``unit`` of demand, spaced evenly (no burst), like
    TCP's slow start. A server without a limit is reached within seconds; a
    limited one answers a 429 after a short overshoot.
``hold``
    After a 429 (or a hint) the pace settles just under the estimated limit
    and stays there for a hold time: one unit after the ramp's 429 (the next
    episode fits the bucket, better soon), else four. The hold doubles each
    time a probe finds the same limit again (twice when the bucket was fitted
    or the probe replaced the ramp's rough guess, up to
    ``_MAX_HOLD_DOUBLINGS``) and is short again after a change, so a stable
    limit costs rare probes and a changed one is followed within seconds.
``probe``
    The pace climbs from the settled pace along ``base * 2 ** ((t / 4u) ** 2)``:
    about +5 % after one unit, +19 % after two, double after four (four times
    as fast while below an earlier, higher limit, which may come back). A 429
    ends the probe (a new estimate); three units admitted 30 % past the
    estimate without a 429 show the limit went up, and the climb goes on. A
    probe that gets back to the pace of the earlier limit (or of a configured
    one) while the server admits most of it settles there without paying a
    429; that limit still counts as one to come back to until the pace held
    it a while. Below an earlier limit the hold is one unit of four again
    each time, one and a half once the lower limit was found twice.
``hinted``
    The server publishes its quota (rate-limit headers): pace at it, no probing.

A class still ramping with no 429 of its own may *follow* another's finding
(:meth:`Pace.follow`; the controller lets queries follow creates): it holds at
the other's settled pace, takes its burst as a guess, rises with its later
findings and never sinks with them; its own first 429 ends that, and the pace
it followed counts as a limit to come back to.

The estimate after a 429 comes from what the server *admitted*, by phase
(the sends since its bucket was last full, a *drain*; see :mod:`._bucketfit`):

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
  one; lower still when the drain with the known burst says so (a limit that
  dropped is found in the second episode).

A climbing pace stays within twice what was actually sent in the last unit, so
a client held back by its own CPU learns nothing false. The server's burst is
learned separately: fitted with the rate, else the ramp's drain beyond the
estimated rate. Saved tokens are spent at most half that burst at a time, so a
late event loop cannot fire a burst the server refuses. A configured rate is a
ceiling and a starting point: the pace holds 1 % under it (exactly at it the
server's bucket never refills, and scheduling jitter on either side adds up to a
429), 429s lower the pace further, probes bring it back, never above.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable
from typing import Literal

from ._bucketfit import Drain, agreement, excess, joint_fit, rate_for_burst
from ._ratestate import LearnedLimit, LimitSource

__all__ = ["Pace", "Phase"]

Phase = Literal["ramp", "hold", "probe", "hinted", "fixed"]

_RAMP_DOUBLING = 0.5  # units of demand per doubling while ramping
_RAMP_BURST = 4.0  # saved tokens a ramping class may spend back to back
_RAMP_SHARE = 0.5  # a ramp's 429 comes at up to twice the limit or more: estimate half
_RAMP_ADMITTED_SHARE = 0.9  # ... at most this share of the rate admitted in the unit before
_SEND_CAP = 2.0  # a climbing pace stays within this factor of what was actually sent
_RAISE_UNITS = 3.0  # ... measured over this many units (longer than any burst lasts)
_RAISED = 1.3  # a unit sent this far past the estimate without a 429 raises it
_BURST_PRIOR = 0.1  # units of the probe's pace taken as the server's burst until learned
_STEP_DOWN = 0.9  # a 429 at the settled pace: settle this much lower
_SETTLED_BURST = 3.0  # saved tokens allowed once settled, until the burst is learned
_SETTLE = 0.95  # the settled pace, as a share of an estimate from the rules of thumb
_SETTLE_FITTED = 0.97  # ... of an estimate fitted to the server's token bucket
_TAIL = 8  # sends whose spacing says when an adopted episode's 429 came after the last
_GUESS_HIGH = 2.5  # a ramp's burst guess may be this many times the fitted burst
_FIT_FLOOR = 0.9  # a fitted rate below this share of the pace held is not believed
_DROP_FLOOR = 0.4  # a settled pace's 429 fits a rate no lower than this share of it
_HOLD = 4.0  # units held after an episode before the first probe
_RAMP_HOLD = 1.0  # ... after the ramp's episode: the next one fits the bucket, best soon
_HELD = 2.0  # units a pace must hold before a 429 makes its estimate a limit to come back to
_MAX_HOLD_DOUBLINGS = 4  # the hold grows to _HOLD * 2**4 units while the limit stays put
_PROBE_SCALE = 4.0  # units after which a probe doubles the pace
_CHANGED = 0.2  # an estimate that moved by more than this share is a changed limit
_HISTORY_UNITS = 8.0  # seconds of send history kept, in units (longer than a probe's drain)
_LOW_PROBES = 20  # after this many settles below an old limit, forget it
# A probe's 429 this soon (units) found the server's bucket already empty: the pace held was
# past the limit (a burst learned too small makes a probe's estimate too high), a step down.
_EARLY = 0.75
_BACK_AT = 0.8  # a probe is back at an old limit once the server admitted this share of its pace
_BACK_UNITS = 2.0  # ... over this many units, beyond its burst
_BACK_BURST_SHARE = 10.0  # ... and over a span at least this many times burst / pace
_LOW_HOLD = 1.5  # ... found there twice: hold this much longer (each probe costs a pause)
_HINT_SHARE = 0.97  # pace at this share of a published quota
# Pace at this share of a configured limit: exactly at it the server's bucket never refills, so
# saved tokens the server could not save (a late wake-up) and the end of a lag on its side (its
# arrivals bunched) add up until a 429; 1 % under it refills half a burst of 10 at 50/s in 10 s.
_CONFIGURED_SHARE = 0.99


class Pace:
    """The pace of one endpoint class; see the module docstring."""

    def __init__(
        self,
        *,
        ceiling: float | None,
        burst: int,
        start_rate: float,
        min_rate: float,
        unit: float,
        adaptive: bool,
        now: float,
    ) -> None:
        self.ceiling = ceiling
        self.configured_burst = float(burst)
        self.min_rate = min_rate
        self.unit = unit
        self.adaptive = adaptive
        # The highest pace: just under a configured limit (adaptive), else the limit itself.
        self.top = (
            math.inf if ceiling is None else ceiling * (_CONFIGURED_SHARE if adaptive else 1.0)
        )
        self.start_rate = start_rate if ceiling is None else min(start_rate, ceiling)
        self.estimate: float | None = ceiling
        self.estimated_burst: float | None = float(burst) if ceiling is not None else None
        self.source: LimitSource = "configured" if ceiling is not None else "slow start"
        self.phase: Phase
        if ceiling is not None:
            self.phase = "hold" if adaptive else "fixed"
            self.base = self.top
        elif adaptive:
            self.phase = "ramp"
            self.base = self.start_rate
        else:  # nothing configured and nothing to learn: no pacing at all
            self.phase = "fixed"
            self.base = math.inf
        self.rate = self.base
        # Spend at most half the server's burst back to back: sends granted
        # evenly can still arrive bunched (a late event loop, the network).
        # Unknown: a few back to back at the start (a server's bucket starts full), then even.
        self.burst = max(1.0, burst / 2.0) if ceiling is not None else _RAMP_BURST
        self.t = 0.0  # demand seconds in the current phase
        self.hold = _HOLD * unit
        self.hold_doublings = 0
        self.high_water: float | None = None  # the estimate before a drop: probe back to it
        self.probes = 0
        self.low_probes = 0  # probes that found a limit below high_water
        self.step_downs = 0  # 429s in a row at the settled pace
        self.episodes = 0
        self.full_at = now  # the server's bucket is assumed full at this time
        self.drained_from = now  # ... and was before the last pause (full_at is its end)
        self.accepted: deque[float] = deque()  # grant times of admitted sends, recent, sorted
        self.sent: deque[float] = deque()  # grant times within the last unit
        self.history: deque[float] = deque()  # grant times, the last _HISTORY_UNITS
        self.last_drain: Drain | None = None  # the sends before the last episode's 429
        self.fitted = False  # the estimate was fitted to the server's bucket
        self.burst_fitted = False  # the burst came from a fit of rate and burst together
        self.refused_pace: float | None = None  # a settled pace a 429 refused: caps the next fit
        self.following = False  # paced from another class's finding, nothing learned of its own
        self.guessed = False  # the estimate is the ramp's rule of thumb, no probe's finding yet
        self.found: float | None = None  # what the last probe's 429 found, until a step down
        self.returned = False  # a probe climbed back to the old limit; not yet held there

    # ------------------------------------------------------------- progression

    def advance(self, demand_seconds: float, now: float) -> None:
        """Move the phase clock by ``demand_seconds`` of demand and recompute the pace.

        A climbing pace never runs more than twice ahead of what was actually
        sent in the last unit (as botocore's adaptive mode caps its bucket):
        a client held back by its own CPU or connections learns nothing by
        raising a pace it cannot use.
        """
        if demand_seconds <= 0.0 or self.phase in ("fixed", "hinted"):
            return
        self.t += demand_seconds
        if self.phase == "ramp":
            rate = self.start_rate * 2.0 ** min(self.t / (_RAMP_DOUBLING * self.unit), 60.0)
            self.rate = min(rate, self._send_cap(now))
        elif self.phase == "hold" and self.t >= self.hold and self.base < self.top:
            self.phase, self.t = "probe", self.t - self.hold
            self.probes += 1
        if self.phase == "probe":
            # Below an earlier, higher limit, climb four times as fast: it may be back.
            scale = _PROBE_SCALE if self.high_water is None else 0.25 * _PROBE_SCALE
            x = self.t / (scale * self.unit)
            self.rate = min(self.base * 2.0 ** min(x * x, 30.0), self._send_cap(now))
            if self.rate < self.base * 2.0 ** min(x * x, 30.0):
                self.t = max(0.0, self.t - demand_seconds)  # wait for the sends to catch up
            admitted = self._admitted_rate(now, _RAISE_UNITS * self.unit)
            if self.estimate is not None and admitted > _RAISED * self.estimate:
                # Units admitted well past the estimate, no 429: the limit went up.
                self.estimate = admitted / _RAISED
                self.step_downs = 0
            high_water = self.high_water
            if high_water is not None and self._back_at(
                min(self.top, self._share() * high_water), now
            ):
                # Back at the pace of the old limit with no 429: it is back. Settle there
                # rather than pay a 429 to find it again.
                self._return_to(high_water)
        if self.rate >= self.top:
            self.rate = self.top
            if self.phase == "probe" and self.ceiling is not None and self._back_at(self.top, now):
                self._return_to(self.ceiling)
        elif self.returned and self.phase == "hold" and self.t >= _HELD * self.unit:
            self.returned = False
            self.high_water = None  # held there a while: the old limit is back for good

    # ------------------------------------------------------------------ events

    def on_sent(self, now: float) -> None:
        """A request of this class was granted at ``now``."""
        sent = self.sent
        sent.append(now)
        horizon = now - self.unit
        while sent[0] < horizon:
            sent.popleft()
        history = self.history
        history.append(now)
        horizon = now - _HISTORY_UNITS * self.unit
        while history[0] < horizon:
            history.popleft()

    def on_accepted(self, granted_at: float, now: float) -> None:
        """The request granted at ``granted_at`` was admitted (any reply but a 429)."""
        accepted = self.accepted
        if not accepted or granted_at >= accepted[-1]:
            accepted.append(granted_at)
        else:  # replies come back a little out of order: keep the grant times sorted
            bisect.insort(accepted, granted_at)
        horizon = now - _HISTORY_UNITS * self.unit
        while accepted and accepted[0] < horizon:
            accepted.popleft()

    def on_refused(self, granted_at: float, granted_rate: float, now: float) -> None:
        """A 429 that starts an episode: estimate the limit from what was admitted, settle."""
        self.episodes += 1
        if not self.adaptive:
            return
        self.returned = False
        # A class that followed the other's pace held it as if it were its own estimate.
        followed = self.base / _SETTLE if self.following else None
        self.following = False
        drain = self._drain(granted_at)
        fitted_burst: float | None = None
        fitted = False
        ramp = self.phase == "ramp"
        # The pace held for a while (or probes past it): a limit worth coming back to.
        # ... or a probe found it (a drop soon after a probe's 429 still has a limit to return to).
        held = (
            self.phase == "probe"
            or (self.phase == "hold" and self.t >= _HELD * self.unit)
            or (self.found is not None and granted_rate <= self.found)
        )
        if ramp:
            estimate = _ramp_estimate(self, granted_at, granted_rate)
        elif self.phase == "probe" and granted_rate > self.base and self.t >= _EARLY * self.unit:
            estimate, fitted_burst, fitted = self._probe_estimate(drain, granted_at, granted_rate)
            if self.refused_pace is not None:
                # A settled pace was refused just before: a fit (a few % off, the
                # burst a little short) must not put the pace back above it.
                estimate = min(estimate, self.refused_pace)
                self.refused_pace = None
            self.step_downs = 0
        else:
            estimate, fitted = self._step_down(drain, granted_at, granted_rate)
            last = self.last_drain
            if self.phase == "probe" and last is not None and last.times:
                # The last probe's estimate was too high, so its burst too small: take the
                # burst that drain tells at this lower rate.
                burst = excess(last, estimate)
                if (self.estimated_burst or 0.0) < burst and self._believable(burst):
                    self._set_burst(burst)
        estimate = max(self.min_rate, estimate)
        if self.ceiling is not None:
            estimate = min(estimate, self.ceiling)
        if fitted_burst is not None or self.phase != "hold":
            # Not from a 429 at a held pace: that drain may have run down slowly since the
            # start (a class that followed the other's pace), its excess is no burst.
            self._learn_burst(drain, estimate, fitted_burst)
        self.last_drain = drain if drain.times else None
        previous = self.estimate if followed is None else followed
        # The first finding after the ramp (or the first fit of the bucket) replaces a
        # rough guess: one to hold on to (probing again soon costs another pause), not a change.
        confident = fitted_burst is not None or (self.guessed and not ramp)
        self.guessed = ramp
        changed = not confident and (
            previous is None or abs(estimate - previous) > _CHANGED * previous
        )
        if previous is not None and estimate < previous and held:
            # A limit that held for a while went down: it may come back, probe often.
            self.high_water = max(previous, self.high_water or 0.0)
        self.found = estimate if self.phase == "probe" and not ramp else None
        self.fitted = fitted
        self._settle_at(estimate, "429s", changed=changed, confident=confident)
        if ramp:
            self.hold = _RAMP_HOLD * self.unit

    def _probe_estimate(
        self, drain: Drain, granted_at: float, granted_rate: float
    ) -> tuple[float, float | None, bool]:
        """A probe's 429: the bucket fitted to this drain and the last, else the known burst.

        Returns the estimate, the server's burst when both were fitted, and
        whether the estimate was fitted (not guessed). The burst is fitted once
        (the ramp's drain and the first probe's), then used as known.
        """
        last = self.last_drain
        if last is not None and last.end < granted_at - _HISTORY_UNITS * self.unit:
            last = None  # long ago: the limit may have changed in between
        agreed = 0.0
        if last is not None and not self.burst_fitted:
            fit = joint_fit(last, drain, self.base, granted_rate)
            if fit is not None and fit[0] >= _FIT_FLOOR * self.base and self._believable(fit[1]):
                return max(self.base, fit[0]), fit[1], True
            # Like drains do not pin the bucket down, but where they agree is a better
            # floor than a guessed burst (a ramp's guess errs large, so its rate low).
            agreed = agreement(last, drain, self.base, granted_rate) or 0.0
            if agreed and not self._believable(
                0.5 * (excess(last, agreed) + excess(drain, agreed))
            ):
                agreed = 0.0  # e.g. the limit changed between the two drains
        # The probe's pace is past the limit by the time the 429 comes: the server
        # first drained its burst (known, else guessed). The rate at which this
        # drain's excess adds up to that burst is the limit.
        burst = self.estimated_burst or _BURST_PRIOR * self.unit * granted_rate
        rate = rate_for_burst(drain, burst, self.base, granted_rate)
        if rate is not None:
            if last is not None and agreed > max(self.base, rate):
                # The burst both drains tell at that rate is a better guess than the old one.
                self._set_burst(0.5 * (excess(last, agreed) + excess(drain, agreed)))
            return max(self.base, rate, agreed), None, self.burst_fitted
        admitted_rate = self._admitted_rate(granted_at, 2.0 * self.unit) or granted_rate
        return max(self.base / _SETTLE, min(granted_rate / 1.05, admitted_rate)), None, False

    def _believable(self, burst: float) -> bool:
        """A fitted burst near the one the ramp's drain suggested (2 times over, 2.5 under).

        The ramp's guess runs high: it is the drain's excess over the ramp's
        estimate, which is below the limit on purpose. A fit of about half of
        it is the usual case (19.5 guessed for a true 10), not an outlier.
        """
        if burst < 1.0:
            return False
        guess = self.estimated_burst
        return guess is None or guess / _GUESS_HIGH <= burst <= 2.0 * guess

    def _step_down(
        self, drain: Drain, granted_at: float, granted_rate: float
    ) -> tuple[float, bool]:
        """A 429 at the settled pace: the limit dropped (or the pace was a bit too fast).

        Step down by 10 %, faster each time in a row; with the burst known, the
        drain since the bucket was last full says where the new limit is, and a
        lower answer wins. Returns the estimate and whether it was fitted.
        """
        self.step_downs += 1
        self.refused_pace = granted_rate
        # A window that opens on a full bucket (right after a pause) measures the
        # saved burst more than the rate: trust only a whole unit.
        start = granted_at - self.unit
        measured = _rate_in(self.accepted, start, granted_at) if start > self.full_at else 0.0
        estimate = min(granted_rate, measured or granted_rate) * _STEP_DOWN**self.step_downs
        estimate /= _SETTLE
        if self.estimated_burst is not None:
            rate = rate_for_burst(
                drain, self.estimated_burst, _DROP_FLOOR * granted_rate, granted_rate
            )
            if rate is not None and rate < estimate:
                return rate, self.burst_fitted
        return estimate, False

    def follow(self, leader: Pace, now: float) -> bool:
        """Start from another class's settled pace: a prior, never a ceiling.

        A class still ramping with no 429 of its own (queries, usually, whose
        demand starts later) takes the pace the other class settled at after
        its 429, and holds at least :data:`_HOLD` units before probing, so it
        takes the other's next finding too (a fitted bucket) instead of paying
        a ``Retry-After`` of its own to learn the same. It keeps following
        only while that raises its pace; its own first 429 ends it. Returns
        True if the pace changed.
        """
        if not self.adaptive or leader.phase != "hold" or leader.source != "429s":
            return False
        if not (self.phase == "ramp" and self.episodes == 0) and not self.following:
            return False
        # Admitted well above the other class's pace already: that is evidence of its own.
        admitted = _RAMP_ADMITTED_SHARE * self._admitted_rate(now, self.unit)
        base = min(max(leader.base, admitted, self.min_rate), self.top)
        if self.following and base <= self.base:
            return False
        self.following = True
        self.base = self.rate = base
        self.phase = "hold"
        self.t = 0.0
        self.hold = max(leader.hold, _HOLD * self.unit)
        if self.ceiling is None:
            # The other class's burst is the best guess for this one's, until a fit says more.
            if leader.estimated_burst is not None:
                self.estimated_burst = leader.estimated_burst
                self.burst = max(1.0, leader.estimated_burst / 2.0)
            else:
                self.burst = max(self.burst, _SETTLED_BURST)
        return True

    def on_pause_end(self, reopens_at: float) -> None:
        """A ``Retry-After`` pause ends at ``reopens_at``: the server's bucket is full again."""
        if self.history and self.history[-1] >= self.full_at:  # not an extension of the pause
            self.drained_from = self.full_at
        self.full_at = reopens_at

    def on_hint(self, rate: float | None, burst: float | None) -> bool:
        """A published quota (``rate`` req/s, ``burst`` requests); True if the pace changed."""
        if rate is None or not self.adaptive:
            return False
        if self.ceiling is not None:
            rate = min(rate, self.ceiling)
        rate = max(self.min_rate, rate)
        changed = self.phase != "hinted" or self.estimate != rate
        self.estimate = rate
        self.source = "headers"
        self.phase = "hinted"
        self.base = self.rate = rate * _HINT_SHARE
        if burst is not None and burst >= 1.0:
            self.estimated_burst = burst
            self.burst = max(1.0, min(burst / 2.0, self.configured_burst))
        return changed

    def restore(self, learned: LearnedLimit) -> None:
        """Adopt what another controller sharing the state learned."""
        if not self.adaptive or learned.rate <= 0.0:
            return
        self.estimate = learned.estimate
        self.estimated_burst = learned.estimated_burst
        self.source = learned.source
        self.rate = self.base = learned.rate
        self.burst = max(1.0, learned.burst)
        if self.phase == "ramp" or learned.source == "headers":
            self.phase = "hinted" if learned.source == "headers" else "hold"
            self.t = 0.0

    def adopt(self, learned: LearnedLimit, *, new_episode: bool) -> None:
        """Take over a limit another controller sharing the state wrote, as the writer did.

        The result of a 429 episode (``new_episode``) settles this pace exactly
        as the writer's settled: a hold, as long as the writer's, before any
        probe, so the sharers do not probe one after the other.
        """
        if new_episode and self.adaptive and learned.source == "429s" and learned.estimate:
            previous = self.estimate
            changed = previous is None or abs(learned.estimate - previous) > _CHANGED * previous
            self._settle_at(learned.estimate, "429s", changed=changed)
            if learned.hold is not None:  # probe when the writer does, not alone
                self.hold = learned.hold
                doublings = round(math.log2(max(1.0, learned.hold / (_HOLD * self.unit))))
                self.hold_doublings = min(doublings, _MAX_HOLD_DOUBLINGS)
            # This pace's own sends before the writer's 429 drained the same bucket: kept,
            # the next 429 here fits rate and burst from both (the writer's drain stays there).
            times = tuple(t for t in self.history if self.drained_from <= t < self.full_at)
            if len(times) >= 2:  # refused about one spacing after the last send here
                tail = times[-_TAIL:]
                self.last_drain = Drain(times, times[-1] + (tail[-1] - tail[0]) / (len(tail) - 1))
        elif learned.hold is not None and self.adaptive and learned.source != "headers":
            # The writer's class followed the other's finding and holds: so does this one, else
            # it probes alone, far past the pace the fleet's bucket keeps (the writer's).
            self.phase, self.t, self.hold, self.following = "hold", 0.0, learned.hold, True
        self.restore(learned)

    def learned(self, episode: int) -> LearnedLimit:
        """What this pace knows, to write to a :class:`RateState`."""
        return LearnedLimit(
            rate=self.rate,
            burst=self.burst,
            estimate=self.estimate,
            estimated_burst=self.estimated_burst,
            source=self.source,
            episode=episode,
            hold=self.hold if self.phase == "hold" else None,
        )

    # --------------------------------------------------------------- internals

    def _admitted_rate(self, now: float, span: float) -> float:
        start = now - span
        if start < self.full_at:
            return 0.0
        accepted = self.accepted
        return (len(accepted) - bisect.bisect_left(accepted, start)) / span

    def _send_cap(self, now: float) -> float:
        """A margin over the rate actually sent in the last unit (never below the start rate).

        Measured since the start or the last pause's end when that is nearer, so
        a fresh client's climb is not held back by the unit before it existed.
        """
        sent = self.sent
        horizon = now - self.unit
        while sent and sent[0] < horizon:
            sent.popleft()
        span = max(0.25 * self.unit, min(self.unit, now - self.full_at))
        return max(self.start_rate, _SEND_CAP * len(sent) / span)

    def _drain(self, granted_at: float) -> Drain:
        """The sends since the server's bucket was last known full, up to ``granted_at``."""
        since = self.full_at
        times = [t for t in self.history if since <= t <= granted_at]
        if times and times[-1] == granted_at:
            times.pop()  # the refused send itself (sends granted in the same instant went first)
        return Drain(tuple(times), granted_at)

    def _learn_burst(self, drain: Drain, estimate: float, fitted: float | None) -> None:
        """The server's burst: fitted, else what this drain admitted beyond ``estimate``."""
        if fitted is not None:
            burst = fitted
            self.burst_fitted = True
        elif self.estimated_burst is not None:
            # Known from a fit, an earlier drain or the class it followed (whose drain since
            # the start, cut to the history kept, says nothing of a burst): keep it.
            return
        elif drain.times:
            burst = excess(drain, estimate)
        else:
            return
        self._set_burst(burst)

    def _set_burst(self, burst: float) -> None:
        if burst < 1.0:
            return
        self.estimated_burst = burst
        cap = self.configured_burst if self.ceiling is not None else math.inf
        self.burst = max(1.0, min(burst / 2.0, cap))

    def _return_to(self, limit: float) -> None:
        """A probe climbed back to an old limit (or the ceiling) with no 429: settle there.

        Not yet held there, so the old limit still counts until the pace held a
        while: a 429 soon after (the climb outran the server's refusal) finds a
        limit to come back to, and probes stay frequent.
        """
        high_water = self.high_water
        if self.ceiling is not None and limit >= self.ceiling:
            self._settle_at(self.ceiling, "configured", changed=False)
        else:
            self._settle_at(limit, "429s", changed=False)
        self.high_water = high_water
        self.returned = high_water is not None

    def _back_at(self, pace: float, now: float) -> bool:
        """The pace reached ``pace`` and the server admitted most of it over the last two units.

        The pace runs ahead of the sends and the server refuses only once its
        burst is gone, so the pace alone is no proof: a limit still down admits
        at most its rate plus its burst over the span, so the burst is not counted.
        """
        if self.rate < pace:
            return False
        burst = self.estimated_burst or 0.0
        # Long enough that the burst is a small part of the span: over a short unit (a
        # time-compressed run) burst / span alone could exceed what the margin allows, and
        # the pace would never be found back even when the server admits all of it.
        span = max(_BACK_UNITS * self.unit, _BACK_BURST_SHARE * burst / pace if pace > 0 else 0.0)
        span = min(span, _HISTORY_UNITS * self.unit)
        admitted = self._admitted_rate(now, span) - burst / span
        return admitted >= _BACK_AT * pace

    def _share(self) -> float:
        return _SETTLE_FITTED if self.fitted else _SETTLE

    def _settle_at(
        self, estimate: float, source: LimitSource, *, changed: bool, confident: bool = False
    ) -> None:
        self.estimate = estimate
        self.source = source
        if self.high_water is not None and self.step_downs == 0:
            # A probe's (or a hint's) finding: back near the old limit, or given up on it.
            self.low_probes += 1
            if estimate >= (1.0 - _CHANGED) * self.high_water or self.low_probes > _LOW_PROBES:
                self.high_water, self.low_probes = None, 0
        if changed:
            self.hold_doublings = 0
        elif self.high_water is None:
            # Found unchanged: probe less often, much less when the bucket was fitted.
            step = 2 if self.fitted or confident else 1
            self.hold_doublings = min(self.hold_doublings + step, _MAX_HOLD_DOUBLINGS)
        # While below an earlier, higher limit, keep probing often: it may come back.
        if self.high_water is None:
            self.hold = _HOLD * self.unit * 2.0**self.hold_doublings
        else:
            self.hold = _HOLD * self.unit * (_LOW_HOLD if self.low_probes >= 2 else 1.0)
        if self.estimated_burst is None and self.ceiling is None:
            # Until the burst is learned keep a few tokens: with room for one only, every
            # late wake-up of the event loop is a send lost for good.
            self.burst = max(self.burst, _SETTLED_BURST)
        settled = min(self.top, estimate if source == "configured" else estimate * self._share())
        self.base = self.rate = max(self.min_rate, settled)
        self.phase = "hold"
        self.t = 0.0


def _rate_in(times: Iterable[float], start: float, end: float) -> float:
    """The rate of the ``times`` in ``[start, end)``, per second (0.0 for an empty span)."""
    if end <= start:
        return 0.0
    return sum(1 for t in times if start <= t < end) / (end - start)


def _ramp_estimate(pace: Pace, granted_at: float, granted_rate: float) -> float:
    """A ramp's 429: half the pace, or most of the rate admitted in the unit before.

    The climb overshoots by a factor that grows with the server's burst, and
    one refusal cannot tell rate from burst; the next episode fits both.
    Every send before the first refusal was admitted, replied to or not.
    """
    admitted = _rate_in(pace.history, max(granted_at - pace.unit, pace.full_at), granted_at)
    estimate = granted_rate * _RAMP_SHARE
    return min(estimate, _RAMP_ADMITTED_SHARE * admitted) if admitted > 0.0 else estimate
