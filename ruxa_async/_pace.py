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
    time a probe finds the same limit again (twice when the bucket was fitted,
    the probe replaced the ramp's rough guess or found the limit it probed
    from within 3 %, up to ``_MAX_HOLD_DOUBLINGS``) and is short again after
    a change, so a stable limit costs rare probes and a changed one is
    followed within seconds. The pace settles at 0.95 of a rule of thumb's
    estimate, 0.97 of a fitted one, 0.985 of one a probe found again.
``probe``
    The pace climbs from the settled pace along ``base * 2 ** ((t / 4u) ** 2)``:
    about +5 % after one unit, +19 % after two, double after four (four times
    as fast while below an earlier, higher limit, which may come back, and no
    further than that limit's pace until the server admits it). A 429
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
(:meth:`Pace.follow`, in :mod:`._paceshare`; the controller lets queries
follow creates): it holds at the other's settled pace, takes its burst as a
guess, rises with its later findings and never sinks with them; its own first
429 ends that, and the pace it followed counts as a limit to come back to.

The estimate after a 429 comes from what the server *admitted* (:mod:`._admitted`
keeps the record), by the phase it refused; :mod:`._estimates` has the rules.
How the pace moves with demand (the ramp, a hold's end, a probe's climb and
its return to an old limit) is :mod:`._climb`; where it settles and for how
long stays here (:meth:`Pace.settle_at`).

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

import math
from collections import deque

from ._admitted import SendLog
from ._bucketfit import Drain
from ._climb import advance
from ._estimates import SETTLE, believable, learn_burst, read_refusal
from ._paceshare import adopt, follow, learned_limit, restore
from ._pacetune import (
    _CHANGED,
    _CONFIGURED_SHARE,
    _CONFIRMED,
    _HELD,
    _HINT_SHARE,
    _HISTORY_UNITS,
    _HOLD,
    _LOW_HOLD,
    _LOW_PROBES,
    _MAX_HOLD_DOUBLINGS,
    _RAMP_BURST,
    _RAMP_HOLD,
    _SETTLE_CONFIRMED,
    _SETTLE_FITTED,
    _SETTLED_BURST,
    Phase,
)
from ._ratestate import LearnedLimit, LimitSource

__all__ = ["Pace", "Phase"]


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
        self.log = SendLog(unit=unit, keep=_HISTORY_UNITS * unit, now=now)
        self.last_drain: Drain | None = None  # the sends before the last episode's 429
        self.fitted = False  # the estimate was fitted to the server's bucket
        self.confirmed = False  # a probe found the estimate again: settle closer to it
        self.followed_limit: float | None = None  # the estimate of the class followed
        self.burst_fitted = False  # the burst came from a fit of rate and burst together
        self.refused_pace: float | None = None  # a settled pace a 429 refused: caps the next fit
        self.following = False  # paced from another class's finding, nothing learned of its own
        self.guessed = False  # the estimate is the ramp's rule of thumb, no probe's finding yet
        self.found: float | None = None  # what the last probe's 429 found, until a step down
        self.returned = False  # a probe climbed back to the old limit; not yet held there

    # ------------------------------------------------------------- progression

    def advance(self, demand_seconds: float, now: float) -> None:
        """Move the phase clock by ``demand_seconds`` of demand; see :func:`._climb.advance`."""
        advance(self, demand_seconds, now)

    # ------------------------------------------------------------------ events

    def on_sent(self, now: float) -> None:
        """A request of this class was granted at ``now``."""
        self.log.on_sent(now)

    def on_accepted(self, granted_at: float, now: float) -> None:
        """The request granted at ``granted_at`` was admitted (any reply but a 429)."""
        self.log.on_accepted(granted_at, now)

    def on_refused(
        self,
        granted_at: float,
        granted_rate: float,
        now: float,
        fleet: tuple[Drain, Drain | None] | None = None,
    ) -> None:
        """A 429 that starts an episode: read it (:func:`._estimates.read_refusal`), settle.

        ``fleet``: this drain and the last episode's from a fleet's own record
        of its sends, in place of this pace's (its sends weighed by its share).
        """
        self.episodes += 1
        if not self.adaptive:
            return
        self.returned = False
        # A class that followed the other's pace held it as if it were its own estimate.
        followed = self.base / SETTLE if self.following else None
        known = self.followed_limit if self.following else self.estimate
        self.following = False
        drain = self._drain(granted_at)
        if fleet is not None:
            drain, self.last_drain = fleet[0], fleet[1] or self.last_drain
        ramp = self.phase == "ramp"
        # The pace held for a while (or probes past it): a limit worth coming back to.
        # ... or a probe found it (a drop soon after a probe's 429 still has a limit to return to).
        held = (
            self.phase == "probe"
            or (self.phase == "hold" and self.t >= _HELD * self.unit)
            or (self.found is not None and granted_rate <= self.found)
        )
        sent = drain.times if fleet is not None else None
        estimate, fitted, fitted_burst, probed, backed_off = read_refusal(
            self, drain, granted_at, granted_rate, sent
        )
        estimate = max(self.min_rate, estimate)
        if self.ceiling is not None:
            estimate = min(estimate, self.ceiling)
        if fitted_burst is not None or self.phase != "hold":
            # Not from a 429 at a held pace: that drain may have run down slowly since the
            # start (a class that followed the other's pace), its excess is no burst.
            learn_burst(self, drain, estimate, fitted_burst)
        self.last_drain = drain if drain.times else None
        previous = self.estimate if followed is None else followed
        # A probe that found the limit it probed from (its own, or the one it followed) again.
        confirmed = (
            probed
            and not self.guessed
            and known is not None
            and abs(estimate - known) <= _CONFIRMED * known
        )
        # The first finding after the ramp (or the first fit of the bucket) replaces a
        # rough guess: one to hold on to (probing again soon costs another pause), not a change.
        # So does a limit found again.
        confident = fitted_burst is not None or (self.guessed and not ramp) or confirmed
        self.guessed = ramp
        changed = not confident and (
            previous is None or abs(estimate - previous) > _CHANGED * previous
        )
        if previous is not None and estimate < previous and held:
            # A limit that held for a while went down: it may come back, probe often.
            self.high_water = max(previous, self.high_water or 0.0)
        # What a probe found (or a limit found twice, just backed off from): a 429 at a pace
        # under it soon after is a drop from a limit worth coming back to.
        self.found = estimate if (self.phase == "probe" and not ramp) or backed_off else None
        self.fitted = fitted
        self.confirmed = confirmed
        self.settle_at(estimate, "429s", changed=changed, confident=confident)
        if ramp:
            self.hold = _RAMP_HOLD * self.unit

    def follow(self, leader: Pace, now: float) -> bool:
        """Start from another class's settled pace; see :func:`._paceshare.follow`.

        The other's findings count as this class's own for how long to hold: a
        probe of its own that finds the same limit holds as long as the other does.
        """
        if not follow(self, leader, now):
            return False
        self.hold_doublings = max(self.hold_doublings, leader.hold_doublings)
        self.followed_limit = leader.estimate
        return True

    def on_pause_end(self, reopens_at: float) -> None:
        """A ``Retry-After`` pause ends at ``reopens_at``: the server's bucket is full again."""
        self.log.on_pause_end(reopens_at)

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
        restore(self, learned)

    def adopt(self, learned: LearnedLimit, *, new_episode: bool) -> None:
        """Take over a limit a sharer wrote, as the writer did; see :func:`._paceshare.adopt`."""
        adopt(self, learned, new_episode=new_episode)

    def learned(self, episode: int) -> LearnedLimit:
        """What this pace knows, to write to a :class:`RateState`."""
        return learned_limit(self, episode)

    # --------------------------------------------------------------- internals

    @property
    def history(self) -> deque[float]:
        """Grant times of the recent sends (see :class:`SendLog`)."""
        return self.log.history

    @property
    def accepted(self) -> deque[float]:
        """Grant times of the recent admitted sends, sorted."""
        return self.log.accepted

    def _believable(self, burst: float) -> bool:
        return believable(self, burst)

    def _drain(self, granted_at: float) -> Drain:
        return self.log.drain(granted_at)

    def set_burst(self, burst: float) -> None:
        """Take ``burst`` as the server's; spend at most half of it back to back."""
        if burst < 1.0:
            return
        self.estimated_burst = burst
        cap = self.configured_burst if self.ceiling is not None else math.inf
        self.burst = max(1.0, min(burst / 2.0, cap))

    def settle_share(self) -> float:
        """The share of an estimate the pace settles at: closer the better the estimate."""
        if self.confirmed:
            return _SETTLE_CONFIRMED
        return _SETTLE_FITTED if self.fitted else SETTLE

    def settle_at(
        self, estimate: float, source: LimitSource, *, changed: bool, confident: bool = False
    ) -> None:
        """Hold just under ``estimate`` (a finding of ``source``), as long as the findings say."""
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
        settled = min(
            self.top, estimate if source == "configured" else estimate * self.settle_share()
        )
        self.base = self.rate = max(self.min_rate, settled)
        self.phase = "hold"
        self.t = 0.0
