"""The phases and tunable numbers of a :class:`~._pace.Pace`, each number with its reason.

Units are the rate unit of the pace (1 s real-scale; shorter in time-compressed runs).
"""

from __future__ import annotations

from typing import Literal

Phase = Literal["ramp", "hold", "probe", "hinted", "fixed"]


_RAMP_DOUBLING = 0.5  # units of demand per doubling while ramping
_RAMP_BURST = 4.0  # saved tokens a ramping class may spend back to back
_SEND_CAP = 2.0  # a climbing pace stays within this factor of what was actually sent
_RAISE_UNITS = 3.0  # ... measured over this many units (longer than any burst lasts)
_RAISED = 1.3  # a unit sent this far past the estimate without a 429 raises it
_SETTLED_BURST = 3.0  # saved tokens allowed once settled, until the burst is learned
# The settled pace, as a share of an estimate fitted to the server's token bucket
# (0.95 of one from the rules of thumb: see ._estimates).
_SETTLE_FITTED = 0.97
# ... and of one a probe found again (within _CONFIRMED of the limit it probed from): two
# findings that agree put the limit within a few tokens a second; 0.95 of a limit that is
# there to stay costs 5 % of every second the class is what holds the batch back.
_SETTLE_CONFIRMED = 0.985
_CONFIRMED = 0.03
_TAIL = 8  # sends whose spacing says when an adopted episode's 429 came after the last
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
_STALLED = 0.9  # a 429 granted under this share of the settled pace came after a stall
_HINT_SHARE = 0.97  # pace at this share of a published quota
# Pace at this share of a configured limit: exactly at it the server's bucket never refills, so
# saved tokens the server could not save (a late wake-up) and the end of a lag on its side (its
# arrivals bunched) add up until a 429; 1 % under it refills half a burst of 10 at 50/s in 10 s.
_CONFIGURED_SHARE = 0.99
