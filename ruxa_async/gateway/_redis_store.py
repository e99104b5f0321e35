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
memory gets 503. A background probe ends the outage as soon as Redis answers.

Keys (``{ns}`` is the namespace): ``{ns}:task:{id}`` (hash; open tasks never
expire, a settled one expires ``keep_settled`` seconds after settlement, then
its id answers 404 like an unknown one), ``{ns}:open`` (set of unsettled ids),
``{ns}:ledger:{scope}:{period}`` (hash ``spent``/``held``; expires
``ledger_ttl`` seconds after its last change), ``{ns}:inflight:{user}``,
``{ns}:pending`` + ``{ns}:pending:z`` (reservations whose create is under way;
one left over by a gateway that died mid-create is booked as spent after
``hold_seconds``, like an ambiguous create), ``{ns}:relayed:{id}`` and the
audit stream ``{ns}:audit`` (capped at about ``audit_maxlen`` entries).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
from redis.asyncio.client import Pipeline

from ..redis._store import Store
from . import _redis_scripts as scripts
from ._policy import Denial
from ._store import Reservation, Scope, StateUnavailableError, TaskRecord

__all__ = ["RedisStore"]

log = logging.getLogger("ruxa_async")

_SETTLED_CACHE = 50_000
_BATCH = 500
_PROBE_EVERY = 0.25
_MAINTAIN_EVERY = 10.0
_RETRY_AFTER = 2.0
_UNAVAILABLE = (
    "the gateway's shared state (Redis) is not answering, so no budget can be checked; "
    "nothing was created; retry shortly"
)

Op = Callable[[Pipeline], Awaitable[Any]]


@attrs.frozen
class _Held(Reservation):
    """A reservation as Redis knows it: with its id and ledger keys."""

    rid: str = ""
    ledgers: tuple[str, ...] = ()


class _GatewayRedis(Store):
    """The fleet's Redis helper, with the gateway's own outage message."""

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.degraded:
            return
        self.degraded = True
        self.degraded_since = self._clock()
        self.degraded_events += 1
        log.warning(
            "gateway state: Redis at %s unreachable (%s: %s); creates answer 503 until it is back",
            self.shown_url,
            type(exc).__name__,
            exc,
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """A :class:`StateStore` shared by every gateway naming the same Redis and namespace.

    ``url`` is a ``redis://`` URL; ``timeout`` bounds every Redis call.
    Decisions that must be exact across instances (budget and in-flight
    reservation, ownership) are awaited; the rest is written behind. Needs the
    ``redis`` extra (``pip install "ruxa-async[gateway,redis]"``).
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout <= 0 or keep_settled <= 0 or ledger_ttl <= 0 or hold_seconds <= 0:
            raise ValueError("timeout, keep_settled, ledger_ttl and hold_seconds must be > 0")
        self._redis = _GatewayRedis(url, namespace=namespace, timeout=timeout)
        self.namespace = namespace
        self._clock = clock
        self._keep = int(keep_settled)
        self._ledger_ttl = int(ledger_ttl)
        self._hold = hold_seconds
        self._audit_maxlen = audit_maxlen
        self._instance = uuid.uuid4().hex[:12]
        self._seq = 0
        self._open: dict[str, TaskRecord] = {}
        self._settled: OrderedDict[str, TaskRecord] = OrderedDict()
        self._fetched: OrderedDict[str, TaskRecord] = OrderedDict()
        self._usage: dict[tuple[str, str], tuple[float, float]] = {}
        self._inflight: dict[str, int] = {}
        self._writes: deque[Op] = deque()
        self._audits: deque[Op] = deque(maxlen=100_000)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._recovered = asyncio.Event()
        self._redis.on_recovered.append(self._recovered.set)
        self._tasks: list[asyncio.Task[None]] = []
        self._scripts: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<RedisStore {self._redis.shown_url} namespace={self.namespace!r}>"

    def _key(self, *parts: str) -> str:
        return self._redis.key(*parts)

    def _ledger(self, scope: str, period: str) -> str:
        return self._key("ledger", scope, period)

    @property
    def available(self) -> bool:
        """False while Redis is not answering (creates then answer 503)."""
        return not self._redis.degraded

    async def wait_available(self) -> None:
        """Return once Redis answers again (at once when it is not away)."""
        while self._redis.degraded:
            self._recovered.clear()
            await self._recovered.wait()

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Check Redis answers, load every unsettled task, start the writer and the probe."""
        for name in ("RESERVE", "COMMIT", "RELEASE", "SETTLE", "REAP"):
            self._scripts[name] = self._redis.script(getattr(scripts, name))
        if await self._redis.call(self._redis.redis.ping, probe=True) is None:
            await self._redis.aclose()
            raise StateUnavailableError(
                f"the gateway cannot reach Redis at {self._redis.shown_url} "
                f"within {self._redis.timeout:g} s; start it or fix [state] redis_url"
            )
        await self._load_open()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_forever(), name="gateway redis writer"),
            loop.create_task(self._maintain_forever(), name="gateway redis upkeep"),
        ]

    async def aclose(self) -> None:
        """Write what is pending (within the timeout, if Redis answers) and close."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if not self._redis.degraded:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._drain_once(), self._redis.timeout * 2)
        if self._writes:
            log.warning(
                "gateway state: %d writes could not reach Redis before closing; "
                "their reservations are booked as spent after %g s",
                len(self._writes),
                self._hold,
            )
        await self._redis.aclose()

    async def flush(self) -> None:
        """Wait until every change so far is in Redis; StateUnavailableError while it is away."""
        while self._writes or self._audits or not self._idle.is_set():
            if self._redis.degraded:
                raise StateUnavailableError(_UNAVAILABLE_QUERY, retry_after=_RETRY_AFTER)
            self._wake.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self._redis.timeout)
            await asyncio.sleep(0)  # let the writer take the next batch

    async def _load_open(self) -> None:
        ids = await self._redis.call(lambda: self._redis.redis.smembers(self._key("open")))
        if not ids:
            return
        for task_id in map(_text, ids):
            record = await self._fetch(task_id)
            if record is not None and not record.settled:
                self._open[task_id] = record

    # -- decisions ------------------------------------------------------------------------

    async def areserve(
        self, user: str, amount: float, scopes: Sequence[Scope], max_in_flight: int | None
    ) -> Reservation | Denial:
        """Check the in-flight cap and every budget and hold ``amount``, in one script."""
        rid = f"{self._instance}:{uuid.uuid4().hex[:12]}"
        ledgers = tuple(self._ledger(s.name, s.period) for s in scopes)
        payload = json.dumps({"user": user, "amount": amount, "ledgers": list(ledgers)})
        script = self._scripts["RESERVE"]
        keys = [self._key("inflight", user), self._key("pending"), self._key("pending", "z")]
        args: list[Any] = [
            rid,
            repr(float(amount)),
            -1 if max_in_flight is None else max_in_flight,
            repr(self._hold),
            payload,
            self._ledger_ttl,
            repr(self._clock()),
        ]
        args += [-1 if s.limit is None else repr(float(s.limit)) for s in scopes]
        reply = await self._redis.call(lambda: script(keys=keys + list(ledgers), args=args))
        if reply is None:
            return Denial(503, "state", _UNAVAILABLE, retry_after=_RETRY_AFTER)
        verdict = [_text(x) for x in reply]
        if verdict[0] == "in_flight":
            running = int(verdict[1])
            self._inflight[user] = running
            return Denial(
                429,
                "in_flight",
                f"you have {running} tasks in flight, the most this gateway allows; "
                "retry when one finishes",
            )
        if verdict[0] == "budget":
            scope = scopes[int(verdict[1]) - 1]
            spent, held = float(verdict[2]), float(verdict[3])
            self._usage[(scope.name, scope.period)] = (spent, held)
            which = "this token's" if scope.name.startswith("token:") else "your"
            return Denial(
                402,
                "budget",
                f"{which} budget of {scope.limit:g} credits for {scope.period} is used up: "
                f"{spent:g} spent, {held:g} held for tasks in flight, this task needs {amount:g}",
            )
        self._inflight[user] = int(verdict[1])
        for i, scope in enumerate(scopes):
            spent, held = float(verdict[2 + 2 * i]), float(verdict[3 + 2 * i])
            self._usage[(scope.name, scope.period)] = (spent, held)
        return _Held(user=user, amount=amount, scopes=tuple(scopes), rid=rid, ledgers=ledgers)

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
        op = self._commit_op(res, record)
        if await self._redis.call(lambda: self._run([op])) is None:
            log.warning(
                "gateway state: task %s is recorded on this instance only until Redis answers",
                task_id,
            )
            self._queue(op)
        self._open[task_id] = record
        return record

    def commit(
        self, res: Reservation, task_id: str, key: str, model: str, callback_url: str | None
    ) -> TaskRecord:
        """Record the created task; written behind (other instances may not see it at once)."""
        record = self._record(res, task_id, key, model, callback_url)
        self._queue(self._commit_op(res, record))
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

    def _commit_op(self, res: Reservation, record: TaskRecord) -> Op:
        rid = res.rid if isinstance(res, _Held) else ""
        keys = [
            self._key("task", record.task_id),
            self._key("pending"),
            self._key("pending", "z"),
            self._key("open"),
        ]
        fields = {
            "user": record.user,
            "key": record.key,
            "model": record.model,
            "created": repr(record.created),
            "reserved": repr(float(record.reserved)),
            "scopes": json.dumps(record.scopes),
            "callback_url": record.callback_url or "",
        }
        args = [rid, record.task_id] + [x for kv in fields.items() for x in kv]
        script = self._scripts["COMMIT"]
        return lambda pipe: script(keys=keys, args=args, client=pipe)

    def release(self, res: Reservation, *, charge: bool) -> None:
        """Drop a reservation whose create failed; ``charge`` books it as spent (written behind)."""
        left = self._inflight.get(res.user, 1) - 1
        self._inflight[res.user] = max(0, left)
        if not isinstance(res, _Held):
            return
        keys = [self._key("pending"), self._key("pending", "z"), self._key("inflight", res.user)]
        args = [res.rid, repr(float(res.amount)), "1" if charge else "0", self._ledger_ttl]
        script = self._scripts["RELEASE"]
        self._queue(lambda pipe: script(keys=keys + list(res.ledgers), args=args, client=pipe))

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
        self._remember(record)
        left = self._inflight.get(record.user, 1) - 1
        self._inflight[record.user] = max(0, left)
        keys = [self._key("task", task_id), self._key("open"), self._key("inflight", record.user)]
        keys += [self._ledger(s, p) for s, p in record.scopes]
        args = [
            task_id,
            repr(float(cost)),
            state,
            json.dumps(final) if final is not None else "",
            self._keep,
            self._ledger_ttl,
        ]
        script = self._scripts["SETTLE"]
        self._queue(lambda pipe: script(keys=keys, args=args, client=pipe))
        return record

    def _remember(self, record: TaskRecord) -> None:
        self._settled[record.task_id] = record
        self._settled.move_to_end(record.task_id)
        if len(self._settled) > _SETTLED_CACHE:
            self._settled.popitem(last=False)

    def claim_relay(self, record: TaskRecord, state: str) -> bool:
        """True the first time this instance claims ``state``; the claim is shared written behind.

        Two instances settling the same task at the same moment may both relay;
        both deliveries carry the same ``webhook-id``, so receivers deduplicate.
        """
        if state in record.relayed:
            return False
        record.relayed.add(state)
        key = self._key("relayed", record.task_id)

        async def op(pipe: Pipeline) -> None:
            await pipe.sadd(key, state)
            await pipe.expire(key, self._keep)

        self._queue(op)
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
        if self._redis.degraded:
            raise StateUnavailableError(_UNAVAILABLE_QUERY, retry_after=_RETRY_AFTER)
        record = await self._fetch(task_id)
        if self._redis.degraded:
            raise StateUnavailableError(_UNAVAILABLE_QUERY, retry_after=_RETRY_AFTER)
        if record is not None:
            if record.settled:
                self._remember(record)
            else:
                self._fetched[task_id] = record
                if len(self._fetched) > _SETTLED_CACHE:
                    self._fetched.popitem(last=False)
        return record

    async def _fetch(self, task_id: str) -> TaskRecord | None:
        task_key = self._key("task", task_id)
        relayed_key = self._key("relayed", task_id)

        async def read() -> tuple[Any, Any]:
            async with self._redis.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(task_key)
                pipe.smembers(relayed_key)
                got = await pipe.execute()
            return got[0], got[1]

        got = await self._redis.call(read)
        if got is None or not got[0]:
            return None
        raw = {_text(k): _text(v) for k, v in got[0].items()}
        if "user" not in raw:
            return None
        final = raw.get("final")
        cost = raw.get("cost")
        return TaskRecord(
            task_id=task_id,
            user=raw["user"],
            key=raw.get("key", ""),
            model=raw.get("model", ""),
            created=float(raw.get("created", "0")),
            reserved=float(raw.get("reserved", "0")),
            scopes=tuple((s, p) for s, p in json.loads(raw.get("scopes", "[]"))),
            callback_url=raw.get("callback_url") or None,
            settled=raw.get("settled") == "1",
            cost=float(cost) if cost else None,
            state=raw.get("state") or None,
            relayed={_text(s) for s in got[1]},
            final=json.loads(final) if final else None,
        )

    def usage(self, scope: str, period: str) -> tuple[float, float]:
        """``(spent, reserved)`` of a ledger as of this instance's last reservation in it."""
        return self._usage.get((scope, period), (0.0, 0.0))

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
        key = self._key("audit")
        cap = self._audit_maxlen

        async def op(pipe: Pipeline) -> None:
            await pipe.xadd(key, fields, maxlen=cap, approximate=True)  # type: ignore[arg-type]

        if len(self._audits) == self._audits.maxlen:
            log.warning("gateway state: audit backlog full while Redis is away; oldest dropped")
        self._audits.append(op)
        self._wake.set()

    async def audit_records(self) -> list[dict[str, Any]]:
        """Every audit record in the stream, oldest first, as dicts (after a flush)."""
        await self.flush()
        key = self._key("audit")
        rows = await self._redis.call(lambda: self._redis.redis.xrange(key))
        if rows is None:
            raise StateUnavailableError(_UNAVAILABLE_QUERY, retry_after=_RETRY_AFTER)
        out = []
        for entry_id, raw in rows:
            fields = {_text(k): _text(v) for k, v in (raw or {}).items()}
            out.append(
                {
                    "id": _text(entry_id),
                    "ts": float(fields["ts"]),
                    "event": fields["event"],
                    "user": fields["user"] or None,
                    "task_id": fields["task_id"] or None,
                    "instance": fields["instance"],
                    **json.loads(fields["detail"]),
                }
            )
        return out

    # -- the writer -----------------------------------------------------------------------

    def _queue(self, op: Op) -> None:
        self._writes.append(op)
        self._wake.set()

    async def _run(self, ops: Sequence[Op]) -> list[Any]:
        async with self._redis.redis.pipeline(transaction=False) as pipe:
            for op in ops:
                await op(pipe)
            result: list[Any] = await pipe.execute()
            return result

    async def _drain_once(self) -> bool:
        """Write one batch (state writes first, then audit); False if Redis refused it."""
        if self._writes:
            source = self._writes
        elif self._audits:
            source = self._audits
        else:
            return True
        batch = [source.popleft() for _ in range(min(_BATCH, len(source)))]
        if await self._redis.call(lambda: self._run(batch), probe=True) is None:
            source.extendleft(reversed(batch))
            return False
        return True

    async def _write_forever(self) -> None:
        while True:
            if not (self._writes or self._audits):
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            self._idle.clear()
            if self._redis.degraded:
                self._recovered.clear()
                await self._recovered.wait()
                continue
            await self._drain_once()

    async def _maintain_forever(self) -> None:
        """Probe while Redis is away; every so often, reap stale holds and adopt orphans."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(_PROBE_EVERY)
            if self._redis.degraded:
                await self._redis.call(self._redis.redis.ping, probe=True)
                continue
            if time.monotonic() - last >= _MAINTAIN_EVERY:
                last = time.monotonic()
                await self.maintain()

    async def maintain(self) -> None:
        """Book expired holds as spent; forget tasks settled elsewhere; adopt orphaned ones."""
        reap = self._scripts["REAP"]
        keys = [self._key("pending"), self._key("pending", "z")]
        reaped = await self._redis.call(
            lambda: reap(
                keys=keys, args=[self._key(""), self._ledger_ttl, 1000, repr(self._clock())]
            )
        )
        if reaped:
            log.warning("gateway state: %s stale reservations booked as spent", reaped)
        quiet = not self._writes and self._idle.is_set()
        ids = await self._redis.call(lambda: self._redis.redis.smembers(self._key("open")))
        if ids is None:
            return
        shared = set(map(_text, ids))
        now = self._clock()
        if quiet and not self._writes and self._idle.is_set():
            for task_id, mine in list(self._open.items()):
                if task_id not in shared and mine.created < now - _MAINTAIN_EVERY:
                    del self._open[task_id]  # another instance settled it
        for task_id in shared - self._open.keys():
            found = await self._fetch(task_id)
            if found is not None and not found.settled and found.created <= now - self._hold:
                self._open[task_id] = found  # its gateway is gone; sweep it here


_UNAVAILABLE_QUERY = (
    "the gateway's shared state (Redis) is not answering, so this task's owner cannot be "
    "checked; retry shortly"
)
