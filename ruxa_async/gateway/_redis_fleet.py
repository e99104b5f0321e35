"""What gateways sharing one Redis coordinate besides state: request rates and alerts.

**Request rate.** A user's ``requests_per_second`` / ``burst`` is one token
bucket in Redis (``{ns}:rate:{user}``) for every instance. A create spends its
token inside the reservation script; a query spends one leased here: an
instance takes a small block of tokens in one script call and spends them
locally, so a query is not always a Redis round trip. A lease only ever takes
tokens the bucket holds, so the fleet never admits more than the rate; tokens
an instance leased and did not use within :data:`LEASE_TTL` are dropped (never
returned), which can only refuse a little early, never admit too much. The
block is small (a twentieth of a second of the rate, at most a quarter of the
burst, at most :data:`MAX_LEASE`), so a user moving between instances finds
the tokens in Redis. Concurrent queries of one user wait for one lease call.

**Outage: queries degrade to the local limit.** While Redis does not answer,
a query is limited by its instance's own bucket of the same rate (which every
instance applies first anyway), not refused: a query spends no credits, the
creating instance can still answer it, and failing closed would turn a Redis
blip into an outage for every polling client. N instances may then admit up
to N times a user's rate; creates still fail closed (503), so no budget is at
risk.

**Alerts once across the fleet.** :meth:`RedisFleet.claim` is ``SET NX`` on
``{ns}:alert:{mark}`` with a TTL: the first instance to claim an alert (a
budget threshold of one period) sends it; the others stay quiet.

**Spend jumps over the fleet's spend.** :class:`SharedSpendWatch` sums each
user's spend per epoch in Redis (``{ns}:spend:{user}``), written in one
pipeline by the store's upkeep every quarter second, and the script that adds
it decides the jump against the fleet-wide baseline, once per cool-down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ._alerts import COOLDOWN, EPOCH, SpendWatch
from ._config import AlertSettings
from ._policy import Denial
from ._redis_writer import GatewayRedis, Layout, text

__all__ = ["LEASE_SECONDS", "LEASE_TTL", "MAX_LEASE", "RedisFleet", "SharedSpendWatch"]

Jump = Callable[[str, float, float], None]

log = logging.getLogger("ruxa_async")

LEASE_SECONDS = 0.05  # a lease is at most this much of the rate...
MAX_LEASE = 64  # ...and at most this many tokens
LEASE_TTL = 1.0  # leased tokens unused after this many seconds are dropped
_USERS = 100_000


class _Lease:
    __slots__ = ("pending", "tokens", "until", "waiting")

    def __init__(self) -> None:
        self.tokens = 0
        self.until = 0.0
        self.waiting = 0
        self.pending: asyncio.Future[Denial | bool] | None = None


class RedisFleet:
    """The :class:`~ruxa_async.gateway.GatewayFleet` of gateways sharing one Redis namespace.

    ``lease_seconds`` and ``max_lease`` size a lease (``max_lease=1``: every
    query is one Redis call); ``clock`` is the time passed to the scripts,
    ``monotonic`` times the leases.
    """

    def __init__(
        self,
        redis: GatewayRedis,
        layout: Layout,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        lease_seconds: float = LEASE_SECONDS,
        max_lease: int = MAX_LEASE,
    ) -> None:
        self._redis = redis
        self._layout = layout
        self._clock = clock
        self._monotonic = monotonic
        self._lease_seconds = lease_seconds
        self._max_lease = max_lease
        self._leases: dict[str, _Lease] = {}
        self.lease_calls = 0
        self.spending: SharedSpendWatch | None = None

    def lease_size(self, rate: float, burst: int) -> int:
        """How many tokens one lease asks for at ``rate`` per second and ``burst``."""
        return max(1, min(self._max_lease, burst // 4, int(rate * self._lease_seconds)))

    async def request(self, user: str, rate: float, burst: int) -> Denial | None:
        """Spend one request of ``user``'s shared rate; a 429 Denial when the fleet has none.

        None (go on) while Redis does not answer: the instance's own limit stands.
        """
        lease = self._leases.get(user)
        if lease is None:
            if len(self._leases) >= _USERS:
                self._leases.clear()
            lease = self._leases[user] = _Lease()
        while True:
            if lease.tokens > 0:
                if self._monotonic() < lease.until:
                    lease.tokens -= 1
                    return None
                lease.tokens = 0
            if self._redis.degraded:
                return None
            if lease.pending is None:
                wanted = max(self.lease_size(rate, burst), lease.waiting + 1)
                lease.pending = asyncio.ensure_future(self._take(user, lease, wanted, rate, burst))
            lease.waiting += 1
            try:
                verdict = await asyncio.shield(lease.pending)
            finally:
                lease.waiting -= 1
            if isinstance(verdict, Denial):
                return verdict
            if not verdict:
                return None  # Redis did not answer (or refused): the instance's own limit stands

    async def _take(
        self, user: str, lease: _Lease, wanted: int, rate: float, burst: int
    ) -> Denial | bool:
        """Lease tokens into ``lease``: True if some came, False without an answer, or a 429."""
        self.lease_calls += 1
        try:
            reply = await self._redis.call(
                self._layout.lease(user, wanted, rate, burst, self._clock())
            )
        finally:
            lease.pending = None
        if reply is None:
            return False
        got, wait = int(reply[0]), float(text(reply[1]))
        if got < 1:
            return Denial(
                429,
                "rate",
                f"too many requests: your limit is {rate:g} per second across this gateway's "
                "instances; retry after the pause",
                retry_after=wait,
            )
        lease.tokens += got
        lease.until = self._monotonic() + LEASE_TTL
        return True

    def spend_watch(self, settings: AlertSettings, jumped: Jump) -> SharedSpendWatch:
        """The spend watch of this instance, over the fleet's spend; ``jumped(user, spend,
        baseline)`` is called for each jump (once across the fleet)."""
        self.spending = SharedSpendWatch(self, settings, jumped)
        return self.spending

    async def flush_spend(self) -> None:
        """Send the spend noted since the last flush (the store's upkeep calls this)."""
        if self.spending is not None:
            await self.spending.flush()

    async def claim(self, mark: str, ttl: float) -> bool | None:
        """True for the first instance to claim ``mark`` within ``ttl`` s; None if Redis is away."""
        return await self._redis.call(self._layout.claim(mark, ttl))


class SharedSpendWatch(SpendWatch):
    """A :class:`SpendWatch` over every instance's spend: :meth:`add` notes the credits,
    :meth:`flush` adds them up in Redis, where the jump is decided."""

    def __init__(self, fleet: RedisFleet, settings: AlertSettings, jumped: Jump) -> None:
        super().__init__(settings, fleet._clock)
        self._fleet = fleet
        self._jumped = jumped
        self._noted: dict[str, float] = {}

    def add(self, user: str, credits: float) -> tuple[float, float] | None:
        """Note ``credits`` for ``user``; None (a jump is reported by :meth:`flush`)."""
        self._noted[user] = self._noted.get(user, 0.0) + credits
        return None

    async def flush(self) -> None:
        """Add the noted spend in Redis; report each user whose spend jumped."""
        if not self._noted:
            return
        noted, self._noted = self._noted, {}
        settings = (self._factor, self._min, EPOCH, COOLDOWN, 2 * COOLDOWN)
        call = self._fleet._layout.spend(noted, self._clock(), settings)
        replies = await self._fleet._redis.call(call)
        if replies is None:  # written with the next flush
            for user, credits in noted.items():
                self._noted[user] = self._noted.get(user, 0.0) + credits
            return
        for user, reply in zip(noted, replies, strict=True):
            if not isinstance(reply, list):
                log.error("gateway state: Redis refused to add up a spend: %s", reply)
                continue
            if int(reply[0]):
                self._jumped(user, float(text(reply[1])), float(text(reply[2])))
