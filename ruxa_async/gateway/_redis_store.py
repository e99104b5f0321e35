"""A :class:`StateStore` in Redis, so several gateway instances share one state.

Budgets and in-flight caps are decided by one Lua script per create
(:meth:`RedisStore.areserve`), so two instances can never both spend the last
credit. Ownership records are written before the task id is returned
(:meth:`RedisStore.acommit`), so every instance answers the owner at once.
Everything else (releases, settlements, relay claims, audit records) is
written behind, in order, by one background writer that pipelines batches and
replays them after a Redis failure; each of those scripts is idempotent.

Fail closed: while Redis does not answer, a create gets 503 (nothing is created
without a reservation) and a query for a task this instance does not hold in
memory gets 503. Request rates then fall back to each instance's own limit and
alerts are sent without the fleet-wide claim (see ``_redis_fleet``). A
background probe ends the outage as soon as Redis answers.

Keys (``{ns}`` is the namespace): ``{ns}:task:{id}`` (hash; open tasks never
expire, a settled one expires ``keep_settled`` seconds after settlement, then
its id answers 404 like an unknown one), ``{ns}:open`` (unsettled ids by creation time),
``{ns}:ledger:{scope}:{period}`` (hash ``spent``/``held``; expires
``ledger_ttl`` seconds after its last change), ``{ns}:users`` (every user by
the time of its last reservation, for the metrics; trimmed after ``ledger_ttl``),
``{ns}:inflight:{user}``,
``{ns}:pending`` + ``{ns}:pending:z`` (reservations whose create is under way;
one left over by a gateway that died mid-create is booked as spent after
``hold_seconds``, like an ambiguous create) and the audit stream ``{ns}:audit``
(capped at about ``audit_maxlen`` entries). A task hash also notes the states
relayed to its owner (fields ``relayed:{state}``). ``{ns}:rate:{user}`` is a
user's request-rate bucket, ``{ns}:alert:{mark}`` an alert already sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .._tasks import stop
from ._metrics import LISTED_USERS, FleetLedgers
from ._policy import Denial
from ._redis_fleet import MAX_LEASE, RedisFleet
from ._redis_writer import GatewayRedis, Layout, WriteBehind, text
from ._store import Reservation, Scope, StateUnavailableError, TaskRecord

__all__ = ["RedisStore"]

log = logging.getLogger("ruxa_async")

_CACHE = 50_000
_PROBE_EVERY = 0.25
_MAINTAIN_EVERY = 10.0
_RETRY_AFTER = 2.0
_UNAVAILABLE = (
    "the gateway's shared state (Redis) did not answer properly, so no budget could be checked; "
    "nothing was created; retry shortly"
)
_UNAVAILABLE_QUERY = (
    "the gateway's shared state (Redis) did not answer, so this task's owner could not be "
    "checked; retry shortly"
)


@attrs.frozen
class _Held(Reservation):
    """A reservation as Redis knows it, with its id."""

    rid: str = ""


def _lru_put(cache: OrderedDict[str, TaskRecord], record: TaskRecord) -> None:
    cache[record.task_id] = record
    cache.move_to_end(record.task_id)
    if len(cache) > _CACHE:
        cache.popitem(last=False)


class RedisStore:
    """A :class:`StateStore` shared by every gateway naming the same Redis and namespace.

    ``url`` is a ``redis://`` URL; ``timeout`` bounds every Redis call.
    Decisions that must be exact across instances (budget and in-flight
    reservation, ownership) are awaited; the rest is written behind. A
    settled task's record is kept ``keep_settled`` seconds; a reservation
    nobody committed or released within ``hold_seconds`` (its gateway died
    mid-create) is booked as spent. A query's permit of the user's request rate is
    leased in blocks of at most ``rate_lease``. Needs the ``redis`` extra
    (``pip install "ruxa-async[gateway,redis]"``).
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "ruxa-gateway",
        timeout: float = 1.0,
        keep_settled: float = 30 * 86_400.0,
        ledger_ttl: float = 40 * 86_400.0,
        hold_seconds: float = 3_600.0,
        audit_maxlen: int = 1_000_000,
        rate_lease: int = MAX_LEASE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout <= 0 or keep_settled <= 0 or ledger_ttl <= 0 or hold_seconds <= 0:
            raise ValueError("timeout, keep_settled, ledger_ttl and hold_seconds must be > 0")
        self._redis = GatewayRedis(url, namespace=namespace, timeout=timeout)
        self._layout = Layout(
            self._redis,
            keep=keep_settled,
            ledger_ttl=ledger_ttl,
            hold=hold_seconds,
            audit_maxlen=audit_maxlen,
        )
        self._writer = WriteBehind(self._redis)
        self._fleet = RedisFleet(self._redis, self._layout, clock=clock, max_lease=rate_lease)
        self.namespace = namespace
        self._clock = clock
        self._hold = hold_seconds
        self._instance = uuid.uuid4().hex[:12]
        self._seq = 0
        self._open: dict[str, TaskRecord] = {}
        self._settled: OrderedDict[str, TaskRecord] = OrderedDict()
        self._fetched: OrderedDict[str, TaskRecord] = OrderedDict()
        self._usage: dict[tuple[str, str], tuple[float, float]] = {}
        self._inflight: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._ledger_ttl = ledger_ttl
        self._listed = FleetLedgers(ledgers={}, indexed=0, read_at=None, fresh=False)
        #: Credits reserved by creates through this instance, by user.
        self.reserved_here: defaultdict[str, float] = defaultdict(float)
        #: Credits this instance booked as spent in the shared ledgers, by user: each credit
        #: is booked by exactly one instance (the scripts say which), so these add up.
        self.spent_here: defaultdict[str, float] = defaultdict(float)

    def __repr__(self) -> str:
        return f"<RedisStore {self._redis.shown_url} namespace={self.namespace!r}>"

    @property
    def available(self) -> bool:
        """False while Redis is not answering (creates then answer 503)."""
        return not self._redis.degraded

    async def wait_available(self) -> None:
        """Return once Redis answers again (at once when it is not away)."""
        await self._writer.wait_available()

    def fleet(self) -> RedisFleet:
        """The request rates and alert claims shared by every instance on this namespace."""
        return self._fleet

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> RedisStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Check Redis answers, load every unsettled task, start the writer and the upkeep."""
        if await self._redis.call(self._redis.redis.ping, probe=True) is None:
            await self._redis.aclose()
            raise StateUnavailableError(
                f"the gateway cannot reach Redis at {self._redis.shown_url} "
                f"within {self._redis.timeout:g} s; start it or fix [state] redis_url"
            )
        for record in await self._layout.fetch_many(await self._layout.open_ids() or []) or ():
            if not record.settled:
                self._open[record.task_id] = record
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._writer.write_forever(), name="gateway redis writer"),
            loop.create_task(self._upkeep_forever(), name="gateway redis upkeep"),
        ]

    async def aclose(self) -> None:
        """Write what is pending (within the timeout, if Redis answers) and close."""
        await stop(self._tasks)
        self._tasks = []
        if not self._redis.degraded:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._writer.drain(), self._redis.timeout * 2)
        if len(self._writer):
            log.warning(
                "gateway state: %d writes could not reach Redis before closing; "
                "their reservations are booked as spent after %g s",
                len(self._writer),
                self._hold,
            )
        await self._redis.aclose()

    async def flush(self) -> None:
        """Wait until every change so far is in Redis; StateUnavailableError while it is away."""
        if not await self._writer.flush():
            raise StateUnavailableError(_UNAVAILABLE_QUERY, retry_after=_RETRY_AFTER)

    # -- decisions ------------------------------------------------------------------------

    async def areserve(
        self,
        user: str,
        amount: float,
        scopes: Sequence[Scope],
        max_in_flight: int | None,
        *,
        rate: tuple[float, int] | None = None,
    ) -> Reservation | Denial:
        """Check the in-flight cap, every budget and the shared create ``rate`` (per second,
        burst), then hold ``amount``: one script, atomic across every instance."""
        rid = f"{self._instance}:{uuid.uuid4().hex[:12]}"
        now = self._clock()
        call = self._layout.reserve(rid, user, amount, scopes, max_in_flight, now, rate)
        script = asyncio.ensure_future(self._redis.call(call))
        try:
            reply = await asyncio.shield(script)
        except asyncio.CancelledError:  # the caller left: give back what the script may hold
            lost = _Held(user=user, amount=amount, scopes=tuple(scopes), rid=rid)
            script.add_done_callback(lambda _: self.release(lost, charge=False))
            raise
        if reply is None:
            return Denial(503, "state", _UNAVAILABLE, retry_after=_RETRY_AFTER)
        verdict = [text(x) for x in reply]
        if verdict[0] == "in_flight":
            running = int(verdict[1])
            self._inflight[user] = running
            return Denial(
                429,
                "in_flight",
                f"you have {running} tasks in flight, the most this gateway allows; "
                "retry when one finishes",
            )
        if verdict[0] == "rate" and rate is not None:
            return Denial(
                429,
                "rate",
                f"too many creates: your limit is {rate[0]:g} per second across this gateway's "
                "instances; retry after the pause",
                retry_after=float(verdict[1]),
            )
        if verdict[0] == "budget":
            scope = scopes[int(verdict[1]) - 1]
            spent, held = float(verdict[2]), float(verdict[3])
            self._note((scope.name, scope.period), spent, held)
            which = "this token's" if scope.name.startswith("token:") else "your"
            return Denial(
                402,
                "budget",
                f"{which} budget of {scope.limit:g} credits for {scope.period} is used up: "
                f"{spent:g} spent, {held:g} held for tasks in flight, this task needs {amount:g}",
            )
        self._inflight[user] = int(verdict[1])
        self.reserved_here[user] += amount
        for i, scope in enumerate(scopes):
            spent, held = float(verdict[2 + 2 * i]), float(verdict[3 + 2 * i])
            self._note((scope.name, scope.period), spent, held)
        return _Held(user=user, amount=amount, scopes=tuple(scopes), rid=rid)

    def reserve(
        self, user: str, amount: float, scopes: Sequence[Scope], max_in_flight: int | None
    ) -> Reservation | Denial:
        """Not possible without a round trip: a shared store refuses with 503 (use areserve)."""
        return Denial(
            503, "state", "this gateway's shared state needs areserve(); nothing was created"
        )

    async def acommit(
        self, res: Reservation, task_id: str, key: str, model: str, callback_url: str | None
    ) -> TaskRecord:
        """Record the created task in Redis before its id is returned (written behind if down)."""
        record = self._record(res, task_id, key, model, callback_url)
        op = self._layout.commit(res.rid if isinstance(res, _Held) else "", record)
        if await self._redis.call(lambda: op(self._redis.redis)) is None:
            log.warning(
                "gateway state: task %s is recorded on this instance only until Redis answers",
                task_id,
            )
            self._writer.queue(op)
        self._open[task_id] = record
        return record

    def commit(
        self, res: Reservation, task_id: str, key: str, model: str, callback_url: str | None
    ) -> TaskRecord:
        """Record the created task; written behind (other instances may not see it at once)."""
        record = self._record(res, task_id, key, model, callback_url)
        self._writer.queue(self._layout.commit(res.rid if isinstance(res, _Held) else "", record))
        self._open[task_id] = record
        return record

    def _record(
        self, res: Reservation, task_id: str, key: str, model: str, callback_url: str | None
    ) -> TaskRecord:
        return TaskRecord(
            task_id=task_id,
            user=res.user,
            key=key,
            model=model,
            created=self._clock(),
            reserved=res.amount,
            scopes=tuple((s.name, s.period) for s in res.scopes),
            callback_url=callback_url,
        )

    def _note(self, ledger: tuple[str, str], spent: float, held: float) -> None:
        self._usage.pop(ledger, None)
        self._usage[ledger] = (spent, held)
        if len(self._usage) > _CACHE:
            del self._usage[next(iter(self._usage))]

    def _left(self, user: str) -> None:
        left = self._inflight.pop(user, 1) - 1
        if left > 0:
            self._inflight[user] = left

    def release(self, res: Reservation, *, charge: bool) -> None:
        """Drop a reservation whose create failed; ``charge`` books it as spent (written behind)."""
        self._left(res.user)
        if isinstance(res, _Held):
            user, amount = res.user, res.amount

            def booked(reply: Any) -> None:
                if charge and reply == 1:
                    self.spent_here[user] += amount

            self._writer.queue(
                self._layout.release(res.rid, res.user, res.amount, res.scopes, charge), booked
            )

    def settle(
        self, task_id: str, cost: float, state: str, final: dict[str, Any] | None = None
    ) -> TaskRecord | None:
        """Book the final cost once (the script ignores a second settlement from any instance)."""
        record = self._open.pop(task_id, None) or self._fetched.pop(task_id, None)
        if record is None or record.settled:
            return None
        record.settled = True
        record.cost = cost
        record.state = state
        record.final = final
        _lru_put(self._settled, record)
        self._left(record.user)
        user = record.user

        def booked(reply: Any) -> None:
            if isinstance(reply, list):  # settled now, by this instance
                self.spent_here[user] += float(text(reply[1]))

        self._writer.queue(self._layout.settle(record, cost, state, final), booked)
        return record

    def claim_relay(self, record: TaskRecord, state: str) -> bool:
        """True the first time this instance claims ``state``; the claim is shared written behind.

        Two instances settling the same task at the same moment may both relay;
        both deliveries carry the same ``webhook-id``, so receivers deduplicate.
        """
        if state in record.relayed:
            return False
        record.relayed.add(state)
        self._writer.queue(self._layout.relayed(record.task_id, state))
        return True

    # -- reads ----------------------------------------------------------------------------

    async def lookup(self, task_id: str) -> TaskRecord | None:
        """The task's record (this instance's memory first, then Redis).

        Raises :class:`StateUnavailableError` when Redis does not answer and the
        task is not in this instance's memory.
        """
        record = self._open.get(task_id) or self._settled.get(task_id)
        if record is not None:
            return record
        if not self._redis.degraded:
            record = await self._layout.fetch(task_id)
        if self._redis.degraded:
            raise StateUnavailableError(_UNAVAILABLE_QUERY, retry_after=_RETRY_AFTER)
        if record is not None:
            _lru_put(self._settled if record.settled else self._fetched, record)
        return record

    def usage(self, scope: str, period: str) -> tuple[float, float]:
        """``(spent, reserved)`` of a ledger as of this instance's last look (at most ~10 s old)."""
        return self._usage.get((scope, period), (0.0, 0.0))

    async def fleet_ledgers(
        self, periods: dict[str, str], default_period: str, limit: int = LISTED_USERS
    ) -> FleetLedgers:
        """Every instance's spend as Redis has it now, in one script call bounded by the
        Redis timeout: the user ledger of each user of ``periods`` (in its period), and of
        at most ``limit`` of the most recently active other users (in ``default_period``).

        While Redis does not answer: the last figures read, updated by this instance's
        own reservations since, marked not ``fresh``.
        """
        read = await self._layout.ledgers(periods, default_period, limit)
        if read is None:
            ledgers = dict(self._listed.ledgers)
            for user, period in periods.items():
                known = ledgers.get(user)
                if known is None or known[0] == period:
                    ledgers[user] = (period, *self.usage(f"user:{user}", period))
            return attrs.evolve(self._listed, ledgers=ledgers, fresh=False)
        indexed, found = read
        ledgers = {u: (default_period, *figures) for u, figures in found.items()}
        for user, period in periods.items():  # what statistics() and alerts see, refreshed
            figures = found.get(user)
            if figures is not None:
                self._note((f"user:{user}", period), *figures)
                ledgers[user] = (period, *figures)
        self._listed = FleetLedgers(
            ledgers=ledgers, indexed=indexed, read_at=time.monotonic(), fresh=True
        )
        return self._listed

    def in_flight(self, user: str) -> int:
        """Tasks of ``user`` in flight across all instances, as of this instance's last look."""
        return self._inflight.get(user, 0)

    def open_tasks(self) -> list[TaskRecord]:
        """The unsettled tasks this instance sweeps: its own, and any found at start or upkeep."""
        return list(self._open.values())

    # -- audit ----------------------------------------------------------------------------

    def audit(
        self, event: str, user: str | None = None, task_id: str | None = None, **detail: Any
    ) -> None:
        """Append one decision to the shared audit stream (written behind)."""
        self._seq += 1
        fields = {
            "ts": repr(self._clock()),
            "event": event,
            "user": user or "",
            "task_id": task_id or "",
            "instance": f"{self._instance}:{self._seq}",
            "detail": json.dumps(detail, sort_keys=True),
        }
        self._writer.queue_audit(self._layout.audit(fields))

    async def audit_records(self) -> list[dict[str, Any]]:
        """Every audit record in the stream, oldest first, as dicts (after a flush)."""
        await self.flush()
        records = await self._layout.audit_entries()
        if records is None:
            raise StateUnavailableError(_UNAVAILABLE_QUERY, retry_after=_RETRY_AFTER)
        return records

    # -- upkeep -------------------------------------------------------------------------

    async def _upkeep_forever(self) -> None:
        """Probe while Redis is away; every so often, reap stale holds and adopt orphans."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(_PROBE_EVERY)
            if self._redis.degraded:
                await self._redis.call(self._redis.redis.ping, probe=True)
                continue
            await self._fleet.flush_spend()
            if time.monotonic() - last >= _MAINTAIN_EVERY:
                last = time.monotonic()
                await self.maintain()

    async def maintain(self) -> None:
        """Book expired holds as spent, refresh the usage this instance remembers
        (:meth:`usage`; metrics read theirs fresh), trim the users index, forget tasks settled
        elsewhere, adopt tasks whose gateway is gone."""
        reaped = await self._layout.reap(self._clock())
        if reaped:
            log.warning("gateway state: %s stale reservations booked as spent", len(reaped))
            for user, credits in reaped:
                self.spent_here[user] += credits
        await self._layout.forget_users(self._clock() - self._ledger_ttl)
        ledgers, users = list(self._usage), list(self._inflight)
        counters = await self._layout.counters(ledgers, users)
        if counters is not None:
            self._usage.update(zip(ledgers, counters[0], strict=True))
            for user, running in zip(users, counters[1], strict=True):
                if running > 0:
                    self._inflight[user] = running
                else:
                    self._inflight.pop(user, None)
        now = self._clock()
        mine = [t for t, r in self._open.items() if r.created < now - _MAINTAIN_EVERY]
        quiet = self._writer.quiet
        still = await self._layout.still_open(mine)
        if still is not None and quiet and self._writer.quiet:
            for task_id, open_ in zip(mine, still, strict=True):
                if not open_:
                    self._open.pop(task_id, None)  # another instance settled it
        orphans = await self._layout.open_ids(created_before=now - self._hold)
        adopt = [t for t in orphans or () if t not in self._open]
        for record in await self._layout.fetch_many(adopt) or ():
            if not record.settled:
                self._open[record.task_id] = record  # its gateway is gone; sweep it here
