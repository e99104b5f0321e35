"""The Redis side of the gateway's shared state: keys and scripts, the write-behind queue.

:class:`Layout` is the one place that knows the key names and how each script
is called (see ``_redis_store`` for the list of keys).

:class:`WriteBehind` keeps changes that need not be awaited (releases,
settlements, relay claims, audit records) in order and writes them in
pipelined batches from one task. A batch Redis refuses goes back to the front
of the queue and is replayed once Redis answers again, so every queued script
must be idempotent. State writes are bounded by the tasks in flight (no create
is admitted while Redis is away); audit records by a capped backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from ..redis._store import Store
from . import _redis_scripts as scripts
from ._store import Scope, TaskRecord

__all__ = ["GatewayRedis", "Layout", "Op", "WriteBehind", "decode_audit", "decode_record", "text"]

log = logging.getLogger("ruxa_async")

Op = Callable[[Any], Awaitable[Any]]  # given a pipeline, or the client to run at once
OnReply = Callable[[Any], None]

T = TypeVar("T")
_BATCH = 500
_AUDIT_BACKLOG = 100_000


def text(value: Any) -> str:
    """A Redis reply as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


class GatewayRedis(Store):
    """The fleet's Redis helper (pool, timeouts, outage tracking), with the gateway's message.

    A command Redis refuses (a script error, a key of the wrong type) fails that
    one call (None) and is logged; only a connection failure or timeout counts
    as an outage.
    """

    while_down = (
        "creates answer 503 and request rates fall back to each instance's own limit "
        "until it is back"
    )
    log_prefix = "gateway state: "

    async def call(self, operation: Callable[[], Awaitable[T]], *, probe: bool = False) -> T | None:
        """Run ``operation`` within the timeout; None if Redis is away, failed or refused it."""

        async def guarded() -> T | None:
            try:
                return await operation()
            except ResponseError as exc:
                log.error("gateway state: Redis refused a command: %s", exc)
                return None

        return await super().call(guarded, probe=probe)


class Layout:
    """Key names and script calls of one namespace; every write comes back as an :data:`Op`."""

    def __init__(
        self, redis: GatewayRedis, *, keep: float, ledger_ttl: float, hold: float, audit_maxlen: int
    ) -> None:
        self.redis = redis
        self.keep = int(keep)
        self.ledger_ttl = int(ledger_ttl)
        self.hold = hold
        self.audit_maxlen = audit_maxlen
        self._scripts = {
            name: redis.script(getattr(scripts, name))
            for name in (
                "RESERVE",
                "COMMIT",
                "RELEASE",
                "SETTLE",
                "REAP",
                "RELAYED",
                "LEASE",
                "SPEND",
                "LEDGERS",
            )
        }

    def key(self, *parts: str) -> str:
        """A key in this namespace."""
        return self.redis.key(*parts)

    def ledger(self, scope: str, period: str) -> str:
        """The hash of one budget ledger."""
        return self.key("ledger", scope, period)

    def reserve(
        self,
        rid: str,
        user: str,
        amount: float,
        scopes: Sequence[Scope],
        max_in_flight: int | None,
        now: float,
        rate: tuple[float, int] | None,
    ) -> Callable[[], Awaitable[Any]]:
        """The reservation script, ready for :meth:`Store.call`."""
        ledgers = [self.ledger(s.name, s.period) for s in scopes]
        payload = json.dumps({"user": user, "amount": amount, "ledgers": ledgers})
        keys = [self.key("inflight", user), self.key("pending"), self.key("pending", "z")]
        keys += [self.key("rate", user), self.key("users")]
        per_second, burst = rate if rate is not None else (-1.0, 1)
        args: list[Any] = [
            rid,
            repr(float(amount)),
            -1 if max_in_flight is None else max_in_flight,
            repr(self.hold),
            payload,
            self.ledger_ttl,
            repr(now),
            repr(float(per_second)),
            burst,
            user,
        ]
        args += [-1 if s.limit is None else repr(float(s.limit)) for s in scopes]
        script = self._scripts["RESERVE"]
        return lambda: script(keys=keys + ledgers, args=args)

    def lease(
        self, user: str, wanted: int, rate: float, burst: int, now: float
    ) -> Callable[[], Awaitable[Any]]:
        """The script leasing up to ``wanted`` tokens of ``user``'s request rate."""
        keys = [self.key("rate", user)]
        args = [wanted, repr(float(rate)), burst, repr(now)]
        script = self._scripts["LEASE"]
        return lambda: script(keys=keys, args=args)

    def spend(
        self, credits: dict[str, float], now: float, settings: tuple[float, ...]
    ) -> Callable[[], Awaitable[list[Any]]]:
        """The spend script for each user's ``credits``, pipelined; ``settings`` are the
        jump factor, minimum, epoch, cool-down and key TTL in seconds."""
        script = self._scripts["SPEND"]

        async def run() -> list[Any]:
            async with self.redis.redis.pipeline(transaction=False) as pipe:
                for user, amount in credits.items():
                    args = [repr(float(amount)), repr(now), *(repr(float(x)) for x in settings)]
                    await script(keys=[self.key("spend", user)], args=args, client=pipe)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
                return replies

        return run

    def claim(self, mark: str, ttl: float) -> Callable[[], Awaitable[bool]]:
        """SET NX of ``{ns}:alert:{mark}`` for ``ttl`` seconds: True for the first claimant."""
        key, seconds = self.key("alert", mark), max(1, int(ttl))

        async def claim() -> bool:
            return bool(await self.redis.redis.set(key, "1", nx=True, ex=seconds))

        return claim

    def commit(self, rid: str, record: TaskRecord) -> Op:
        """Record a created task; its reservation ``rid`` stops being pending.

        The op takes a pipeline (write-behind) or the client itself (one EVALSHA now).
        """
        keys = [
            self.key("task", record.task_id),
            self.key("pending"),
            self.key("pending", "z"),
            self.key("open"),
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
        args = [rid, record.task_id, repr(record.created)]
        args += [x for kv in fields.items() for x in kv]
        script = self._scripts["COMMIT"]
        return lambda client: script(keys=keys, args=args, client=client)

    def release(
        self, rid: str, user: str, amount: float, scopes: Sequence[Scope], charge: bool
    ) -> Op:
        """Drop reservation ``rid``; ``charge`` books it as spent."""
        keys = [self.key("pending"), self.key("pending", "z"), self.key("inflight", user)]
        keys += [self.ledger(s.name, s.period) for s in scopes]
        args = [rid, repr(float(amount)), "1" if charge else "0", self.ledger_ttl]
        script = self._scripts["RELEASE"]
        return lambda pipe: script(keys=keys, args=args, client=pipe)

    def settle(
        self, record: TaskRecord, cost: float, state: str, final: dict[str, Any] | None
    ) -> Op:
        """Book a task's final cost once, keep its final object for ``keep`` seconds."""
        keys = [
            self.key("task", record.task_id),
            self.key("open"),
            self.key("inflight", record.user),
        ]
        keys += [self.ledger(s, p) for s, p in record.scopes]
        args = [
            record.task_id,
            repr(float(cost)),
            state,
            json.dumps(final) if final is not None else "",
            self.keep,
            self.ledger_ttl,
        ]
        script = self._scripts["SETTLE"]
        return lambda pipe: script(keys=keys, args=args, client=pipe)

    def relayed(self, task_id: str, state: str) -> Op:
        """Note that ``state`` of a task was relayed to its owner."""
        keys, args = [self.key("task", task_id)], [state]
        script = self._scripts["RELAYED"]
        return lambda pipe: script(keys=keys, args=args, client=pipe)

    def audit(self, fields: dict[str, str]) -> Op:
        """Append one record to the capped audit stream."""
        key = self.key("audit")

        async def op(pipe: Pipeline) -> None:
            await pipe.xadd(key, fields, maxlen=self.audit_maxlen, approximate=True)  # type: ignore[arg-type]

        return op

    async def reap(self, now: float) -> list[tuple[str, float]] | None:
        """Book holds past their deadline as spent: ``(user, credits)`` of each (None if
        Redis failed)."""
        script = self._scripts["REAP"]
        keys = [self.key("pending"), self.key("pending", "z")]
        args = [self.key(""), self.ledger_ttl, 1000, repr(now)]
        reply = await self.redis.call(lambda: script(keys=keys, args=args))
        if reply is None:
            return None
        return [(text(reply[i]), float(text(reply[i + 1]))) for i in range(0, len(reply), 2)]

    async def ledgers(
        self, periods: dict[str, str], default_period: str, limit: int
    ) -> tuple[int, dict[str, tuple[float, float]]] | None:
        """``(spent, held)`` of the user ledger of each user of ``periods`` (in its period) and
        of at most ``limit`` of the most recently active other users (in ``default_period``),
        in one script call; with the number of users in the index. None if Redis failed."""
        script = self._scripts["LEDGERS"]
        args: list[Any] = [self.key(""), limit, default_period]
        for user, period in periods.items():
            args += [user, period]
        keys = [self.key("users")]
        reply = await self.redis.call(lambda: script(keys=keys, args=args))
        if reply is None:
            return None
        flat = json.loads(reply[1])
        if not isinstance(flat, list):  # an empty Lua table is encoded as {}
            flat = []
        out = {flat[i]: (float(flat[i + 1]), float(flat[i + 2])) for i in range(0, len(flat), 3)}
        return int(reply[0]), out

    async def forget_users(self, before: float) -> int | None:
        """Drop users not active since ``before`` from the index (None if Redis failed)."""
        key = self.key("users")
        dropped: int | None = await self.redis.call(
            lambda: self.redis.redis.zremrangebyscore(key, "-inf", repr(before))
        )
        return dropped

    async def open_ids(self, created_before: float | None = None) -> list[str] | None:
        """Unsettled task ids, all or those created before a time (None if Redis failed)."""
        key, top = self.key("open"), "+inf" if created_before is None else repr(created_before)
        ids = await self.redis.call(lambda: self.redis.redis.zrangebyscore(key, "-inf", top))
        return None if ids is None else [text(i) for i in ids]

    async def still_open(self, task_ids: Sequence[str]) -> list[bool] | None:
        """Whether each task is still unsettled (None if Redis failed)."""
        if not task_ids:
            return []
        key = self.key("open")
        scores = await self.redis.call(lambda: self.redis.redis.zmscore(key, list(task_ids)))
        return None if scores is None else [s is not None for s in scores]

    async def fetch(self, task_id: str) -> TaskRecord | None:
        """A task's record from Redis; None if unknown or Redis failed (check ``degraded``)."""
        task_key = self.key("task", task_id)
        fields = await self.redis.call(lambda: self.redis.redis.hgetall(task_key))
        return decode_record(task_id, fields) if fields else None

    async def fetch_many(self, task_ids: Sequence[str]) -> list[TaskRecord] | None:
        """The records of many tasks, pipelined in chunks (None if Redis failed)."""
        out: list[TaskRecord] = []
        for start in range(0, len(task_ids), _BATCH):
            chunk = task_ids[start : start + _BATCH]

            async def read(chunk: Sequence[str] = chunk) -> list[Any]:
                async with self.redis.redis.pipeline(transaction=False) as pipe:
                    for task_id in chunk:
                        pipe.hgetall(self.key("task", task_id))
                    got: list[Any] = await pipe.execute()
                    return got

            got = await self.redis.call(read)
            if got is None:
                return None
            for task_id, fields in zip(chunk, got, strict=True):
                record = decode_record(task_id, fields) if fields else None
                if record is not None:
                    out.append(record)
        return out

    async def counters(
        self, ledgers: Sequence[tuple[str, str]], users: Sequence[str]
    ) -> tuple[list[tuple[float, float]], list[int]] | None:
        """``(spent, held)`` of each ledger and the tasks in flight of each user (None: failed)."""

        async def read() -> list[Any]:
            async with self.redis.redis.pipeline(transaction=False) as pipe:
                for scope, period in ledgers:
                    pipe.hmget(self.ledger(scope, period), ["spent", "held"])
                for user in users:
                    pipe.get(self.key("inflight", user))
                got: list[Any] = await pipe.execute()
                return got

        got = await self.redis.call(read)
        if got is None:
            return None
        usage = [(float(h[0] or 0), float(h[1] or 0)) for h in got[: len(ledgers)]]
        return usage, [int(n or 0) for n in got[len(ledgers) :]]

    async def audit_entries(self) -> list[dict[str, Any]] | None:
        """Every audit record, oldest first (None if Redis failed)."""
        rows = await self.redis.call(lambda: self.redis.redis.xrange(self.key("audit")))
        return None if rows is None else [decode_audit(i, f) for i, f in rows]


class _Hooked:
    """A queued write whose reply is handed to ``on_reply`` once Redis has answered it."""

    __slots__ = ("on_reply", "op")

    def __init__(self, op: Op, on_reply: OnReply) -> None:
        self.op = op  # its last command's reply is the one handed over
        self.on_reply = on_reply

    def __call__(self, pipe: Any) -> Awaitable[Any]:
        return self.op(pipe)


class WriteBehind:
    """One task writing queued operations to Redis in order, replaying them after an outage."""

    def __init__(self, redis: GatewayRedis) -> None:
        self._redis = redis
        self._writes: deque[Op] = deque()
        self._audits: deque[Op] = deque(maxlen=_AUDIT_BACKLOG)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._recovered = asyncio.Event()
        redis.on_recovered.append(self._recovered.set)

    @property
    def quiet(self) -> bool:
        """True when no state write is queued or being written."""
        return not self._writes and self._idle.is_set()

    def __len__(self) -> int:
        return len(self._writes)

    def queue(self, op: Op, on_reply: OnReply | None = None) -> None:
        """Queue a state write (idempotent); ``on_reply`` gets Redis' answer to it (never
        called if Redis refused it, nor for a replay whose first answer was lost)."""
        self._writes.append(op if on_reply is None else _Hooked(op, on_reply))
        self._wake.set()

    def queue_audit(self, op: Op) -> None:
        """Queue an audit record; past the backlog cap the oldest is dropped."""
        if len(self._audits) == self._audits.maxlen:
            log.warning("gateway state: audit backlog full while Redis is away; oldest dropped")
        self._audits.append(op)
        self._wake.set()

    async def run(self, ops: Sequence[Op]) -> list[Any]:
        """Send ``ops`` in one pipeline (no transaction) and return the replies.

        A write Redis refuses (a script error) is logged and dropped, so one bad
        write cannot hold the queue; a connection failure raises and the batch stays.
        """
        async with self._redis.redis.pipeline(transaction=False) as pipe:
            sizes = []  # commands each op queued, so each reply finds its op
            for op in ops:
                queued = len(pipe.command_stack)
                await op(pipe)
                sizes.append(len(pipe.command_stack) - queued)
            result: list[Any] = await pipe.execute(raise_on_error=False)
        for reply in result:
            if isinstance(reply, ResponseError):
                log.error("gateway state: Redis refused a write, dropped: %s", reply)
        at = 0
        for op, size in zip(ops, sizes, strict=True):
            if isinstance(op, _Hooked) and size > 0 and at + size <= len(result):
                replies = result[at : at + size]
                if not any(isinstance(r, ResponseError) for r in replies):
                    op.on_reply(replies[-1])
            at += size
        return result

    async def wait_available(self) -> None:
        """Return once Redis answers again (at once when it is not away)."""
        while self._redis.degraded:
            self._recovered.clear()
            await self._recovered.wait()

    async def flush(self) -> bool:
        """Wait until everything queued so far is written; False if Redis went away first."""
        while self._writes or self._audits or not self._idle.is_set():
            if self._redis.degraded:
                return False
            self._wake.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self._redis.timeout)
            await asyncio.sleep(0)  # let the writer take the next batch
        return True

    async def drain_once(self) -> bool:
        """Write one batch (state writes first, then audit); False if Redis refused it."""
        if self._writes:
            source = self._writes
        elif self._audits:
            source = self._audits
        else:
            return True
        batch = [source.popleft() for _ in range(min(_BATCH, len(source)))]
        try:
            done = await self._redis.call(lambda: self.run(batch), probe=True)
        except asyncio.CancelledError:
            source.extendleft(reversed(batch))  # replayed by whoever drains next
            raise
        if done is None:
            source.extendleft(reversed(batch))
            return False
        return True

    async def drain(self) -> bool:
        """Write everything queued now, without the writer task; False if Redis failed."""
        while self._writes or self._audits:
            if not await self.drain_once():
                return False
        return True

    async def write_forever(self) -> None:
        """The writer task: drain while there is work and Redis answers."""
        while True:
            if not (self._writes or self._audits):
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            self._idle.clear()
            if self._redis.degraded:
                await self.wait_available()
                continue
            await self.drain_once()


def decode_record(task_id: str, fields: dict[Any, Any]) -> TaskRecord | None:
    """A task hash as a :class:`TaskRecord`; None when it is not a whole task."""
    raw = {text(k): text(v) for k, v in fields.items()}
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
        relayed={k[len("relayed:") :] for k in raw if k.startswith("relayed:")},
        final=json.loads(final) if final else None,
    )


def decode_audit(entry_id: Any, fields: dict[Any, Any] | None) -> dict[str, Any]:
    """One audit stream entry as the dict :meth:`StateStore.audit_records` returns."""
    raw = {text(k): text(v) for k, v in (fields or {}).items()}
    return {
        "id": text(entry_id),
        "ts": float(raw.get("ts", "0")),
        "event": raw.get("event", ""),
        "user": raw.get("user") or None,
        "task_id": raw.get("task_id") or None,
        "instance": raw.get("instance", ""),
        **json.loads(raw.get("detail") or "{}"),
    }
