"""One endpoint class in the rate controller: its pace, its gate, and what it shares.

A :class:`Lane` is the rate controller's record of one class (create or
query). It moves the class's :class:`~._pace.Pace` on by the demand seen while
its gate was open; counts its sends and admissions as the fleet's when a
shared :class:`~._ratestate.RateState` says the fleet makes several per send
of this process (its ``share``); reads a 429 on the fleet's own ledger of
sends where there is one; takes what a reply's rate-limit headers said of the
quota; and writes what it learned to the state, or takes over what a sharer
wrote. The controller owns the waiting (locks, slots, sleeps); a lane never
waits but for the state.
"""

from __future__ import annotations

import asyncio
import logging

from ._fleetdrains import fleet_drains
from ._gate import Gate
from ._pace import Pace
from ._ratehints import RateHint
from ._ratestate import Kind, LearnedLimit, RateState

__all__ = ["Lane", "fmt_number"]

_log = logging.getLogger("ruxa_async")


class Lane:
    """One endpoint class's pace behind its gate, with what its hints and its state said."""

    __slots__ = (
        "_carried",
        "advanced_at",
        "demand_until",
        "episode",
        "gate",
        "kind",
        "lock",
        "max_remaining",
        "max_reset",
        "not_before",
        "pace",
        "permits",
        "shared",
        "state",
    )

    def __init__(self, kind: Kind, pace: Pace, gate: Gate, state: RateState, now: float) -> None:
        self.kind: Kind = kind
        self.pace = pace
        self.gate = gate
        self.state = state
        self.advanced_at = now
        self.demand_until = float("-inf")
        self.episode = 0  # the last episode counter seen in the state
        self.not_before = now  # a server hint said the quota is spent until then
        self.max_remaining = 0.0
        self.max_reset = 0.0
        self.permits = 0
        self.lock = asyncio.Lock()
        self.shared: LearnedLimit | None = None  # last read from (or written to) a given state
        self._carried: dict[str, float] = {}  # a fleet's fractional sends, see _weight

    def advance(self, now: float) -> None:
        """Move the pace on by the demand seen since the last call, gate open only."""
        start = max(self.advanced_at, self.gate.deadline)
        end = min(now, self.demand_until)
        if end > start:
            pace = self.pace
            before = pace.phase
            pace.advance(end - start, now)
            if pace.phase != before:
                _log.debug(
                    "%s pace: %s -> %s at %.3g req/s", self.kind, before, pace.phase, pace.rate
                )
        self.advanced_at = max(self.advanced_at, now)

    def on_sent(self, now: float) -> None:
        """A permit was granted at ``now``: one send, or the fleet's since this one's last."""
        self.permits += 1
        pace, weight = self.pace, self._weight("sent")
        if weight == 1:
            pace.on_sent(now)
        else:  # the fleet's sends between this one's last and now, evenly: as the server saw them
            last = pace.history[-1] if pace.history else now
            spacing = min((now - last) / weight, 1.0 / pace.rate)
            for k in range(weight - 1, -1, -1):
                pace.on_sent(now - k * spacing)

    def on_accepted(self, granted_at: float, now: float) -> None:
        """The request granted at ``granted_at`` was admitted (counted by the fleet's share)."""
        for _ in range(self._weight("accepted")):
            self.pace.on_accepted(granted_at, now)

    async def on_refused(self, granted_at: float, granted_rate: float, now: float) -> None:
        """A 429 that starts an episode: the pace reads it, on the fleet's ledger if there is one.

        ``granted_rate`` is the pace at the refused request's grant. The
        fleet sent at its bucket's rate: while it ramps, its fastest member's
        pace (a ramp's 429 read against this member's slower one read half
        the limit).
        """
        state = self.state
        fleet = await fleet_drains(state, self.kind, self.pace, granted_at, now)
        refill = getattr(state, "refill_rate", None)
        if fleet is not None and refill is not None:
            granted_rate = max(granted_rate, refill(self.kind))
        self.pace.on_refused(granted_at, granted_rate, now, fleet=fleet)

    async def publish(self) -> None:
        """Write what the pace learned to the state."""
        learned = self.shared = self.pace.learned(self.episode)
        await self.state.write(self.kind, learned)

    async def adopt(self) -> None:
        """Take over a pace another controller sharing the state wrote (its 429 episode)."""
        learned = await self.state.read(self.kind)
        if learned is None or learned == self.shared or learned.episode < self.episode:
            return
        new_episode = self.shared is None or learned.episode > self.shared.episode
        self.shared = learned
        self.episode = learned.episode
        self.pace.adopt(learned, new_episode=new_episode)

    async def apply_hint(self, hint: RateHint, now: float, max_pause: float) -> None:
        """Use what a reply's rate-limit headers said about the class's quota."""
        pace = self.pace
        if hint.remaining is not None:
            self.max_remaining = max(self.max_remaining, hint.remaining)
        if hint.reset is not None:
            self.max_reset = max(self.max_reset, hint.reset)
        rate = hint.rate
        if rate is None and hint.limit is not None and hint.family == "x-ratelimit":
            # No window is published: the longest reset seen bounds it from below.
            rate = hint.limit / max(1.0, self.max_reset)
        burst = self.max_remaining + 1.0 if self.max_remaining > 0 else None
        if pace.on_hint(rate, burst):
            await self.publish()
            _log.debug(
                "%s quota from %s headers: %.3g req/s, burst ~%s; pacing at %.3g req/s",
                self.kind,
                hint.family,
                pace.estimate or 0.0,
                fmt_number(pace.estimated_burst),
                pace.rate,
            )
        if hint.remaining is not None and hint.remaining < 1.0:
            # The quota is spent: wait for one token (or the reset when the pace is unknown).
            wait = 1.0 / pace.rate if pace.phase == "hinted" else (hint.reset or 0.0)
            self.not_before = max(self.not_before, now + min(wait, max_pause))

    def _weight(self, counter: str) -> int:
        """Sends of every sharer per send of this controller (1 unless the state says more).

        A fleet's pace is measured against the fleet's sends: a state shared by
        several processes reports how many sends the whole fleet made per send
        of this one (``share(kind)``), so the ramp and the estimates scale.
        The fraction is carried to the next send (a share of 2.5 counts 2, 3,
        2, 3 ...): rounded, it scaled every drain by up to 25 % and the fits
        of the server's bucket with it.
        """
        share = getattr(self.state, "share", None)
        if share is None:
            return 1
        carried = self._carried.get(counter, 0.0) + max(1.0, share(self.kind))
        weight = int(carried)
        self._carried[counter] = carried - weight
        return weight


def fmt_number(value: float | None) -> str:
    """``value`` for a log line: 3 significant digits, or ``unknown``."""
    return "unknown" if value is None else f"{value:.3g}"
