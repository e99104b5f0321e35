"""A fleet member's 429 read on the fleet's own ledger of sends, not on its own count.

A member's own record holds its sends, each counted ``share`` times and
spread back to its previous send: over the short windows a bucket fit turns
on, that is known to about one share (4-8 sends at 4-8 members), while two
drains must agree within a send. A rate state that keeps the fleet's ledger
(Redis) knows every block granted and how it was spent, so a refusal's drains
come from there. Split out of the rate controller; it knows nothing of gates
or permits.
"""

from __future__ import annotations

from ._bucketfit import Drain
from ._config import Kind
from ._pace import Pace
from ._ratestate import RateState

__all__ = ["fleet_drains"]

_FLEET_SHARE = 1.5  # fleet sends per own send from which a 429 is fitted on the fleet's ledger
_SAME_SEND = 0.002  # seconds a ledger's send may sit after the grant it stands for
_LEDGER_SHORT = 0.8  # a ledger with fewer sends than this share of the member's count misses some


async def fleet_drains(
    state: RateState, kind: Kind, pace: Pace, granted_at: float, now: float
) -> tuple[Drain, Drain | None] | None:
    """The fleet's drains before this 429 and before the last one, from its own ledger.

    None alone (a share of 1), while unreachable, without a ledger, or when
    the ledger holds clearly fewer sends than this member counted (a member
    of an older version keeps none): the pace then uses its own.
    """
    sends = getattr(state, "fleet_sends", None)
    if sends is None or not pace.adaptive:
        return None
    log = pace.log
    got = await sends(kind, now - granted_at, 2.0 * log.keep)
    share = getattr(state, "share", None)
    if got is None or share is None or share(kind) < _FLEET_SHARE:
        return None  # alone, its own sends are exact (the refusal is recorded all the same)
    times, previous = got
    drain = _cut(times, log.full_at, granted_at)
    own = log.drain(granted_at).times
    since = max(drain.times[0], own[0]) if drain.times and own else granted_at
    counted = sum(1 for t in drain.times if t >= since)
    if counted < _LEDGER_SHORT * sum(1 for t in own if t >= since):
        # Members that keep no ledger (an older version) or took while Redis was away.
        return None
    last = None
    if previous is not None and log.drained_from <= previous <= log.full_at:
        last = _cut(times, log.drained_from, previous)
        if not last.times:  # older than the ledger keeps
            last = None
    return drain, last


def _cut(times: list[float], start: float, end: float) -> Drain:
    """The sends in ``[start, end)`` as a drain ending at a refusal at ``end``.

    The refused send is in the ledger too (where its block planned it, at
    or a little before its grant): the one nearest ``end`` is left out.
    """
    inside = [t for t in times if start <= t <= end + _SAME_SEND]
    if inside:
        del inside[min(range(len(inside)), key=lambda i: abs(inside[i] - end))]
    return Drain(tuple(t for t in inside if t < end), end)
