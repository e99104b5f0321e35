"""The rate controller's state in Redis (:class:`ruxa_async._ratestate.RateState`).

Tokens are *leased*: one atomic script call takes a small block (about
``lease_seconds`` of the current rate, at most ``max_lease``) from the fleet's
shared bucket, and this process spends it from memory, so a permit is not a
Redis round trip. A block may borrow the tokens the next ``lease_seconds``
refill (times the number of live processes, the heartbeat's count): its
first token is then due after a delay, so processes sharing a near-empty bucket
take whole blocks in turn instead of one token each. Unspent
tokens expire after ``lease_ttl`` and are dropped when a gate closes. The 429
gate is answered from a local copy that every process updates at once through
pub/sub and through each lease reply (it errs toward closed: a local close is
seen before Redis is told).

The bucket refills at the slowest pace any member asked for within the last
second (and never below the pace the fleet learned): every member runs its own
rate controller over this shared state, and a fleet that sent faster than one
member believes the limit allows would have that member's 429 underestimate
the limit. Until the fleet has learned anything (every member still ramping,
its pace a guess that doubles) it refills at the fastest member's pace instead,
so an unknown fleet finds the limit about as soon as one process does (and a
member then spends its block at its pace of the moment, not of its lease). A
member spends its block at its part of that rate (the rate over the number of
members that leased lately), so its own sends, scaled by :meth:`share`, look
like the fleet's.

Each lease reply also carries the fleet's running total of granted tokens, so
:meth:`RedisRateState.share` knows how many tokens the whole fleet took per
token of this process: the controller scales what it measures (its sends and
acceptances) by it, and learns the fleet's limit rather than its own part.

When Redis is unreachable every method answers from a :class:`LocalRateState`
holding this process's share (the learned rate divided by the live members).
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import time
from collections.abc import Callable

import attrs

from .._ratestate import GateScope, Kind, LearnedLimit, LocalRateState
from . import _scripts
from ._store import Store

__all__ = ["RedisRateState"]

# Seconds of lease history behind share(): a drain the rate controller fits spans seconds, and a
# member's tokens come in blocks, so over 2 s (5 blocks at 8 members) share() erred by 20 %.
_SHARE_WINDOW = 8.0
_MAX_SHARE = 256.0
# Leases after which share() is measured, before the window holds _SHARE_WINDOW / 4 of them:
# while a fleet starts, the first leases go to whoever asks first and a member's part may be
# half or twice its 1 / members; weighed by the member count, a member taking twice its part
# counts the fleet's sends twice, climbs faster, takes more (the fastest ramp refills the
# bucket), and its ramp's 429 reads a limit 1.5 times the server's.
_FIRST_LEASES = 3
_MIN_WAIT = 1e-6  # seconds: the script's times have six decimals
_PACE_WINDOW = 1.0  # seconds a member's pace counts toward the fleet's (the slowest wins)

_KINDS_OF: dict[str, tuple[Kind, ...]] = {
    "create": ("create",),
    "query": ("query",),
    "client": ("create", "query"),
}
_SCOPES_OF: dict[Kind, tuple[GateScope, GateScope]] = {
    "create": ("create", "client"),
    "query": ("query", "client"),
}


class _Lease:
    __slots__ = (
        "expires",
        "history",
        "lock",
        "measured",
        "mine",
        "next_at",
        "pacers",
        "pacing_since",
        "rate",
        "refill",
        "share",
        "spent",
        "tokens",
    )

    def __init__(self) -> None:
        self.tokens = 0
        self.expires = 0.0
        self.next_at = 0.0  # leased tokens are spent at the rate, not in a burst
        self.rate = 0.0  # the rate the fleet's bucket refilled at for the last block (0: unknown)
        self.refill = 0.0  # ... as the script said (while ramping, the fastest member's pace)
        self.pacers = 0  # members that leased within two pace windows, as of the last block
        self.pacing_since: float | None = None  # this process's first lease with a count
        self.lock = asyncio.Lock()
        self.mine = 0  # tokens this process leased
        self.history: collections.deque[tuple[float, int, int]] = collections.deque()
        self.share = 1.0  # fleet tokens per token of ours, over the last _SHARE_WINDOW
        self.measured = False  # share was measured (until then the live members stand in)
        self.spent: list[float] = []  # when this block's tokens went out: the ledger's

    def note(self, now: float, granted: int, total: int) -> None:
        """A lease of ``granted`` tokens; the fleet has taken ``total`` in all."""
        self.mine += granted
        history = self.history
        history.append((now, self.mine, total))
        while len(history) > 2 and history[1][0] <= now - _SHARE_WINDOW:
            history.popleft()
        start, mine, fleet = history[0]
        early = len(history) > _FIRST_LEASES  # a fleet starting: its members' parts are uneven
        if len(history) >= 2 and (early or now - start >= _SHARE_WINDOW / 4) and self.mine > mine:
            # tokens leased since the oldest sample, the first lease excluded
            self.share = min(_MAX_SHARE, max(1.0, (total - fleet) / (self.mine - mine)))
            self.measured = True


class RedisRateState:
    """A :class:`RateState` shared through Redis; made by ``RedisCoordinator``."""

    def __init__(
        self,
        store: Store,
        *,
        channel: str,
        lease_seconds: float = 0.05,
        max_lease: int = 16,
        lease_ttl: float = 0.5,
        read_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        script_clock: Callable[[], float] | None = None,
    ) -> None:
        self._store = store
        self._script_clock = script_clock  # tests: the scripts' time (else Redis's own)
        self._channel = channel
        self._lease_seconds = lease_seconds
        self._max_lease = max_lease
        self._lease_ttl = lease_ttl
        self._read_ttl = read_ttl
        self._clock = clock
        self._take = store.script(_scripts.TAKE)
        self._close = store.script(_scripts.CLOSE_GATE)
        self._episode = store.script(_scripts.EPISODE)
        self._ledger = store.script(_scripts.LEDGER)
        self._leases: dict[Kind, _Lease] = {"create": _Lease(), "query": _Lease()}
        self._gates: dict[str, float] = {}  # scope -> local monotonic deadline
        self._learned: dict[Kind, tuple[float, LearnedLimit | None]] = {}
        self._episodes: dict[Kind, int] = {"create": 0, "query": 0}
        self._generation = 0  # bumped by each invalidation: a read begun before is not cached
        self._offset = 0.0  # this process's clock minus Redis's, as of the last lease
        self.local = LocalRateState(clock)
        self.origin = ""  # this process's name in the fleet: its own gates are not remote
        self.members = 1
        self.leases = 0
        self.leased_tokens = 0
        self.remote_pauses = 0
        self.gates_closed = 0

    def _key(self, *parts: str) -> str:
        return self._store.key("rate", *parts)

    # ---------------------------------------------------------------- learned

    async def read(self, kind: Kind) -> LearnedLimit | None:
        """See :meth:`RateState.read` (cached for ``read_ttl``)."""
        now = self._clock()
        cached = self._learned.get(kind)
        if cached is not None and now - cached[0] < self._read_ttl:
            return cached[1]
        generation = self._generation
        raw = await self._store.call(lambda: self._store.redis.get(self._key("learned", kind)))
        if self._store.degraded:
            return await self.local.read(kind)
        learned = _decode(raw) if raw is not None else None
        if generation == self._generation:  # else a newer limit was announced meanwhile
            self._learned[kind] = (now, learned)
        if learned is not None:
            await self.local.write(kind, learned)
        return learned

    async def write(self, kind: Kind, learned: LearnedLimit) -> None:
        """See :meth:`RateState.write` (last writer wins; other processes re-read at once)."""
        await self.local.write(kind, learned)
        self._learned[kind] = (self._clock(), learned)
        payload = _encode(learned)

        async def op() -> None:
            async with self._store.redis.pipeline(transaction=False) as pipe:
                pipe.set(self._key("learned", kind), payload, ex=3600)
                pipe.publish(self._channel, f"learned|{kind}")
                await pipe.execute()

        await self._store.call(op)

    def invalidate(self, kind: str | None = None) -> None:
        """Another process wrote a learned limit: read it again next time (None: every kind).

        The cached limit lives ``read_ttl`` (5 s): the fleet's pub/sub message
        is what makes a new limit known at once, and a (re)subscription drops
        every cached one, as messages may have been missed.
        """
        self._generation += 1
        if kind is None:
            self._learned.clear()
        else:
            self._learned.pop(kind, None)  # type: ignore[call-overload]

    # --------------------------------------------------------------- episodes

    async def begin_episode(self, kind: Kind, seen: int) -> bool:
        """See :meth:`RateState.begin_episode` (atomic in Redis).

        While Redis is unreachable the compare is against the highest counter
        this process knows (Redis's as last seen, or its own since), so a 429
        still starts an episode and lowers the pace; a counter Redis lost
        (restarted, or behind a degraded process) is caught up the same way.
        """
        known = max(self._episodes[kind], seen)
        result = await self._store.call(
            lambda: self._episode(keys=[self._key("episode", kind)], args=[seen])
        )
        began = known == seen if result is None else bool(int(result))
        if began or result is not None:  # Redis's counter is past `seen` either way
            self._episodes[kind] = max(self._episodes[kind], seen + 1)
        return began

    # ------------------------------------------------------------------ gates

    async def close_gate(self, scope: GateScope, seconds: float) -> None:
        """See :meth:`RateState.close_gate`; the fleet hears of it through pub/sub."""
        self.gates_closed += 1
        self._close_locally(scope, seconds)
        await self.local.close_gate(scope, seconds)
        keys = [self._key("gate", scope)] + [self._key("bucket", kind) for kind in _KINDS_OF[scope]]
        message = f"gate|{scope}|{self.origin}|"  # the script appends the seconds
        await self._store.call(
            lambda: self._close(
                keys=keys, args=[f"{seconds:.6f}", self._channel, message, self._now()]
            )
        )

    def on_gate(self, scope: str, seconds: float, origin: str = "") -> None:
        """A process closed ``scope`` for ``seconds`` (a pub/sub message; this one's is known)."""
        if origin and origin == self.origin:
            return  # closed here already
        if scope in _KINDS_OF and self._close_locally(scope, seconds):  # type: ignore[arg-type]
            self.remote_pauses += 1

    def _close_locally(self, scope: GateScope, seconds: float) -> bool:
        deadline = self._clock() + max(0.0, seconds)
        if deadline <= self._gates.get(scope, 0.0):
            return False
        self._gates[scope] = deadline
        for kind in _KINDS_OF[scope]:
            self._leases[kind].tokens = 0
        return True

    async def gate_remaining(self, scope: GateScope) -> float:
        """See :meth:`RateState.gate_remaining` (from the local copy)."""
        return max(0.0, self._gates.get(scope, 0.0) - self._clock())

    # ----------------------------------------------------------------- tokens

    async def take(self, kind: Kind, count: int, rate: float, burst: float) -> float:
        """See :meth:`RateState.take`: from the local lease, else a new block from Redis.

        The shared bucket refills at the fleet's pace: the slowest a live member
        asked for in the last second, where each member asks for its own pace
        but never less than the pace last learned for the fleet (a process whose
        climb is held back by its own few sends would otherwise slow the whole
        fleet); the fastest while nothing is learned yet. This process spends
        its block at its part of that pace.
        """
        lease = self._leases[kind]
        rate = max(rate, self._fleet_rate(kind))
        spacing = lease.next_at - self._clock()
        if spacing > 0:
            return spacing
        # this process's part of the fleet's rate: its block is spent evenly beside the others'
        spread = self._spread(kind)
        ramping = self._ramping(kind)
        # ramping, at its pace now: a block spent at the pace of its lease lags a doubling pace
        own = (rate if ramping else min(rate, lease.rate or rate)) / spread
        saved = max(0.0, burst / spread - 1.0)  # its part of the burst a late caller may catch up
        if self._from_lease(lease, count, own, saved):
            return 0.0
        if self._store.degraded:
            return await self._take_locally(kind, count, rate, burst)
        async with lease.lock:
            if self._from_lease(lease, count, own, saved):
                return 0.0
            block = max(count, min(self._max_lease, math.ceil(rate * self._lease_seconds)))
            gate_keys = [self._key("gate", scope) for scope in _SCOPES_OF[kind]]
            keys = [self._key("bucket", kind), *gate_keys]
            keys += [self._key("paces", kind), self._key("ramps", kind), self._store.key("members")]
            keys += [self._key("ledger", kind), self._key("pending", kind)]
            # may borrow what the next lease_seconds refill, for each live process: every
            # member borrows as deep, so none is left behind the others' blocks
            ahead = f"{self._lease_seconds * self._members(kind):.6f}"
            args: list[object] = [block, count, rate, burst, self._now(), ahead]
            if self.origin:  # the bucket refills at the slowest pace a member asked for lately
                args += [self.origin, _PACE_WINDOW, "ramp" if ramping else "", f"{spread:.6f}"]
                args.append(",".join(f"{t - self._offset:.6f}" for t in lease.spent))
            reply = await self._store.call(lambda: self._take(keys=keys, args=args))
            if reply is None:
                return await self._take_locally(kind, count, rate, burst)
            lease.spent.clear()  # reported
            granted, wait = int(reply[0]), float(reply[1])
            if granted == 0:  # refused: a wait the reply rounded to 0 is still one
                return max(wait, _MIN_WAIT)
            self.leases += 1
            self.leased_tokens += granted
            now = self._clock()
            if len(reply) > 2:
                lease.note(now, granted, int(reply[2]))
            if len(reply) > 6:
                self._offset = now - float(reply[6])
            if len(reply) > 5 and int(reply[5]) > 0:  # fresher than this process's last beat
                self.members = int(reply[5])
            if len(reply) > 4:
                lease.pacers = int(reply[4])
                if lease.pacing_since is None:
                    lease.pacing_since = now
            if len(reply) > 3:
                lease.refill = float(reply[3])
                lease.rate = min(rate, lease.refill)
                own = (rate if ramping else lease.rate) / self._spread(kind)
            lease.expires = now + wait + self._lease_ttl + granted / own
            if wait > 0:  # borrowed: the block's first token is due in `wait` seconds
                lease.tokens = granted
                lease.next_at = now + wait
                return wait
            lease.tokens = granted - count
            lease.spent.extend([now] * count)
            lease.next_at = _due(lease.next_at, now, count, own, saved)
            return 0.0

    def refill_rate(self, kind: Kind) -> float:
        """The rate the fleet's bucket refills at, as of the last lease or ledger read (0: unknown).

        While every member ramps that is the fastest member's pace: the rate
        the fleet sent at, which a ramp's 429 is read against.
        """
        return self._leases[kind].refill

    def _now(self) -> str:
        return "-1" if self._script_clock is None else f"{self._script_clock():.6f}"

    async def fleet_sends(
        self, kind: Kind, age: float, keep: float
    ) -> tuple[list[float], float | None] | None:
        """The fleet's sends of ``kind`` over the last ``keep`` seconds, from its ledger.

        Called at a 429 that begins an episode, ``age`` seconds after the
        refused send: records that send's time as the fleet's last refusal
        and returns the one recorded before it (None: none). Every member
        reports when it spent each block it leased (with its next lease, and
        this one now), and the blocks others are spending now are there as
        they are being spent (evenly, at the member's part of the rate), so
        the times are every send of the fleet, not this member's sends
        weighed by its share. On this process's clock; None while Redis is
        unreachable.
        """
        parts = ("ledger", "pending", "refused", "paces", "ramps")
        keys = [self._key(part, kind) for part in parts]
        lease = self._leases[kind]
        spent = lease.spent
        report = ",".join(f"{t - self._offset:.6f}" for t in spent)
        args = [f"{max(0.0, age):.6f}", f"{keep:.6f}", self._now(), self.origin, report]
        args.append(f"{_PACE_WINDOW:.6f}")
        reply = await self._store.call(lambda: self._ledger(keys=keys, args=args))
        if reply is None:
            return None
        if self.origin:
            spent.clear()  # reported; the rest of the block is reported with the next lease
        shift = self._clock() - float(reply[0])  # Redis time -> this process's clock
        previous, pace = _text(reply[1]), _text(reply[2])
        if pace:  # the bucket's rate now, fresher than the last lease's (a ramp doubles)
            lease.refill = float(pace)
        times = sorted(float(t) + shift for entry in reply[3:] for t in _text(entry).split(","))
        return times, (float(previous) + shift if previous else None)

    def _spread(self, kind: Kind) -> float:
        """How many processes take turns at the bucket: this one's tokens go out that sparsely.

        Sent evenly, at its part of the fleet's rate, a process's own sends
        look like the fleet's (scaled by :meth:`share`), which the rate
        controller's estimates need; spent in bursts at the full rate, one
        block after another's, they would look like bursts the fleet never sent.
        """
        return max(1.0, min(self.share(kind), float(self._members(kind))))

    def _members(self, kind: Kind) -> int:
        """Members taking turns at ``kind``'s bucket: those that leased within two seconds.

        Counted by each lease: the heartbeat's set holds every live process,
        also those done with this kind (a batch's last creates would go out
        at a fraction of the rate). Until this process has leased for two
        seconds, members about to lease are not in the lease count yet, so the
        heartbeat's count (as the last lease read it: a fleet starting
        together would count itself late by a beat) wins when larger.
        """
        lease = self._leases[kind]
        since = lease.pacing_since
        if since is None or self._clock() - since < 2 * _PACE_WINDOW:
            return max(1, self.members, lease.pacers)
        return max(1, lease.pacers)

    def _ramping(self, kind: Kind) -> bool:
        """Nothing is learned for ``kind`` in the fleet yet (as last read): every pace is a ramp."""
        cached = self._learned.get(kind)
        return cached is not None and cached[1] is None

    def _fleet_rate(self, kind: Kind) -> float:
        cached = self._learned.get(kind)
        learned = cached[1] if cached is not None else None
        return learned.rate if learned is not None and learned.source != "slow start" else 0.0

    async def _take_locally(self, kind: Kind, count: int, rate: float, burst: float) -> float:
        """Redis is away: each live member paces its own share of the fleet's rate and burst."""
        share = max(1, self.members)
        return await self.local.take(kind, count, rate / share, max(1.0, burst / share))

    def _from_lease(self, lease: _Lease, count: int, rate: float, saved: float) -> bool:
        now = self._clock()
        if lease.tokens >= count and now < lease.expires:
            lease.tokens -= count
            lease.spent.extend([now] * count)
            lease.next_at = _due(lease.next_at, now, count, rate, saved)
            return True
        return False

    def share(self, kind: Kind) -> float:
        """Tokens the fleet took per token this process took, lately (1.0 alone).

        While Redis is unreachable every live member paces its own share of the
        fleet's rate, so the fleet sends ``members`` times what this one does;
        that is also the answer until the leases of the last ``_SHARE_WINDOW``
        measured it.
        """
        lease = self._leases[kind]
        if self._store.degraded:  # each live member paces its part
            return float(max(1, self.members))
        if not lease.measured:  # each member its part, as a prior
            return float(self._members(kind))
        return lease.share


def _due(next_at: float, now: float, count: int, rate: float, saved: float) -> float:
    """When the lease's next token is due after ``count`` are spent at ``now``.

    Tokens go out evenly at ``rate``, but a caller that comes late (an event
    loop's wake-up, a lease's round trip) by at most ``saved`` tokens' time
    catches up, as the in-process bucket spends its saved burst: were every
    late wake-up lost, one process would settle ~8 % under its pace. A lane
    idle for longer starts afresh, evenly (its block is not sent as a burst).
    """
    late = now - next_at
    start = next_at if 0.0 < late <= saved / rate else max(now, next_at)
    return start + count / rate


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _encode(learned: LearnedLimit) -> str:
    return json.dumps(attrs.asdict(learned))


def _decode(raw: bytes | str) -> LearnedLimit | None:
    try:
        data = json.loads(raw)
        known = attrs.fields_dict(LearnedLimit)  # a newer member's extra fields are ignored
        return LearnedLimit(**{k: v for k, v in data.items() if k in known})
    except (ValueError, TypeError):
        return None
