"""Gateway state: task ownership, budget ledgers, tasks in flight and the audit log.

:class:`StateStore` is the small interface the gateway needs; :class:`SQLiteStore`
is the default implementation. Decisions are made on in-memory state inside
the event loop, so a check and its reservation happen with no ``await`` in
between (50 concurrent creates against room for 10 admit exactly 10). Every
change is written behind to SQLite by ``SqliteWriter``, in one transaction every
few milliseconds in the event loop (no fsync there); reads that miss memory and
WAL checkpoints run on its thread. A created task's record (with the audit
lines written before it) is durable before its id is returned: appended to the
state's journal (``_state_journal``), which SQLite gets with the next
transaction and a restart replays. Several
gateways share one state through ``RedisStore`` (``_redis_store``), whose
check-and-hold is one script; the gateway therefore awaits
:meth:`StateStore.areserve` and :meth:`StateStore.acommit`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from .._errors import RuxaError
from .._jsoncodec import json_encoder
from ._alerts import SpendWatch
from ._config import AlertSettings
from ._policy import Denial
from ._sqlite_writer import AUDIT_INSERT, SqliteWriter

__all__ = [
    "GatewayFleet",
    "Reservation",
    "SQLiteStore",
    "Scope",
    "StateStore",
    "StateUnavailableError",
    "TaskRecord",
]

log = logging.getLogger("ruxa_async")
_audit_json = json_encoder(sort_keys=True)
_json = json_encoder()

_EPSILON = 1e-9
_SETTLED_CACHE = 50_000
_DETAILS_KEPT = 1024  # audit details remembered with their JSON (all forgotten when full)
_details: dict[tuple[tuple[str, Any], ...], str] = {}


class StateUnavailableError(RuxaError):
    """The gateway's shared state store does not answer; the gateway replies 503 meanwhile."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


@attrs.frozen
class Scope:
    """A budget ledger: ``name`` (``user:NAME`` or ``token:ID``), its ``period``, its limit."""

    name: str
    period: str
    limit: float | None


@attrs.frozen
class Reservation:
    """Credits held for one create that has not yet been answered by the service."""

    user: str
    amount: float
    scopes: tuple[Scope, ...]


@attrs.define(slots=True)
class TaskRecord:
    """A task the gateway created: who owns it, which key made it, what it reserved."""

    task_id: str
    user: str
    key: str
    model: str
    created: float
    reserved: float
    scopes: tuple[tuple[str, str], ...]
    callback_url: str | None = None
    settled: bool = False
    cost: float | None = None
    state: str | None = None
    relayed: set[str] = attrs.field(factory=set)
    final: dict[str, Any] | None = None


class GatewayFleet(Protocol):
    """What gateways sharing one store coordinate besides state: request rates, alerts."""

    async def request(self, user: str, rate: float, burst: int) -> Denial | None:
        """Spend one request of ``user``'s rate shared by every instance; a 429 Denial if none."""

    async def claim(self, mark: str, ttl: float) -> bool | None:
        """True for the first instance to claim ``mark`` within ``ttl`` seconds, False for
        the others, None when the shared store cannot tell (it is away)."""

    def spend_watch(
        self, settings: AlertSettings, jumped: Callable[[str, float, float], None]
    ) -> SpendWatch:
        """A spend watch over every instance's spend; ``jumped(user, spend, baseline)`` is
        called once per jump across the fleet."""


class StateStore(Protocol):
    """What the gateway needs from its state, wherever it lives."""

    def fleet(self) -> GatewayFleet | None:
        """The coordination of several instances; None for a store of one gateway."""

    async def open(self) -> None:
        """Load persisted state; start background writing."""

    async def aclose(self) -> None:
        """Write everything pending and close."""

    def reserve(
        self, user: str, amount: float, scopes: Sequence[Scope], max_in_flight: int | None
    ) -> Reservation | Denial:
        """Atomically check the in-flight cap and every budget, then hold ``amount``."""

    async def areserve(
        self,
        user: str,
        amount: float,
        scopes: Sequence[Scope],
        max_in_flight: int | None,
        *,
        rate: tuple[float, int] | None = None,
    ) -> Reservation | Denial:
        """:meth:`reserve` for stores shared by several gateways (one atomic round trip).

        ``rate`` (per second, burst) is the user's request rate: a shared store also
        spends one create of it across all instances (a single gateway's own rate
        buckets already apply it).
        """

    def commit(
        self, res: Reservation, task_id: str, key: str, model: str, callback_url: str | None
    ) -> TaskRecord:
        """Record the created task (owner, key, reservation)."""

    async def acommit(
        self, res: Reservation, task_id: str, key: str, model: str, callback_url: str | None
    ) -> TaskRecord:
        """:meth:`commit`, visible to every gateway sharing the store when it returns."""

    def release(self, res: Reservation, *, charge: bool) -> None:
        """Drop a reservation whose create failed; ``charge`` books it as spent."""

    async def lookup(self, task_id: str) -> TaskRecord | None:
        """The task's record, or None when the gateway never created it.

        A shared store raises :class:`StateUnavailableError` when it cannot tell.
        """

    def settle(
        self, task_id: str, cost: float, state: str, final: dict[str, Any] | None = None
    ) -> TaskRecord | None:
        """Book the final cost once and keep the final task object; None if already settled."""

    def claim_relay(self, record: TaskRecord, state: str) -> bool:
        """True the first time ``state`` is claimed for delivery to the owner."""

    def usage(self, scope: str, period: str) -> tuple[float, float]:
        """``(spent, reserved)`` credits of a ledger."""

    def in_flight(self, user: str) -> int:
        """Tasks of ``user`` created (or being created) and not yet settled."""

    def open_tasks(self) -> list[TaskRecord]:
        """Every unsettled task."""

    def audit(
        self, event: str, user: str | None = None, task_id: str | None = None, **detail: Any
    ) -> None:
        """Append one decision to the audit log."""

    async def audit_records(self) -> list[dict[str, Any]]:
        """Every audit record, oldest first."""


_LedgerKeys = tuple[tuple[str, str], ...]
_ledgers: dict[int, tuple[tuple[Scope, ...], _LedgerKeys, str]] = {}
_LEDGERS_KEPT = 4096  # reservations' scope tuples remembered (all forgotten when full)


def _ledger_keys(scopes: tuple[Scope, ...]) -> tuple[_LedgerKeys, str]:
    """A reservation's ledgers as a task keeps them, and as stored (JSON).

    The admission hands every create of a user and period the same tuple of scopes, so
    it is remembered by identity (held, so that its id is not reused): every such task
    shares one tuple of ledgers, and the JSON is made once."""
    hit = _ledgers.get(id(scopes))
    if hit is not None and hit[0] is scopes:
        return hit[1], hit[2]
    keys = tuple([(s.name, s.period) for s in scopes])
    if len(_ledgers) >= _LEDGERS_KEPT:
        _ledgers.clear()
    _ledgers[id(scopes)] = (scopes, keys, _json(keys))
    return keys, _ledgers[id(scopes)][2]


def _detail_text(detail: dict[str, Any]) -> str:
    """An audit line's detail as JSON, remembered: a create's (its model, key and estimate)
    repeats, and encoding it (sorted keys, a float) costs several times the lookup.

    Only details of strings and nonzero floats are remembered: ``1``, ``1.0`` and ``True``
    are equal keys but are not written alike, nor are ``0.0`` and ``-0.0``."""
    for value in detail.values():
        kind = type(value)
        if kind is not str and (kind is not float or not value):
            return _audit_json(detail)
    key = (*detail.items(),)
    text = _details.get(key)
    if text is None:
        text = _audit_json(detail)
        if len(_details) >= _DETAILS_KEPT:
            _details.clear()
        _details[key] = text
    return text


def _row_record(row: Sequence[Any]) -> TaskRecord:
    scopes = tuple((s, p) for s, p in json.loads(row[6]))
    return TaskRecord(
        task_id=row[0],
        user=row[1],
        key=row[2],
        model=row[3],
        created=row[4],
        reserved=row[5],
        scopes=scopes,
        callback_url=row[7],
        settled=bool(row[8]),
        cost=row[9],
        state=row[10],
        relayed=set(filter(None, (row[11] or "").split(","))),
        final=json.loads(row[12]) if row[12] else None,
    )


_COLUMNS = (
    "task_id, user, key, model, created, reserved, scopes, callback_url, settled, cost, state, "
    "relayed, final"
)

_INSERT_TASK = (
    f"INSERT OR REPLACE INTO tasks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,0,NULL,NULL,'',NULL)"
)
# Without a callback URL (most creates): None is the one parameter sqlite3 does not bind
# directly (it asks the adapters first, a few thousand instructions), so the SQL says NULL.
_INSERT_TASK_NO_URL = (
    f"INSERT OR REPLACE INTO tasks ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,NULL,0,NULL,NULL,'',NULL)"
)


class SQLiteStore:
    """The default :class:`StateStore`: decisions in memory, written behind to SQLite.

    ``path`` is a file, or ``":memory:"`` for state that lives as long as the
    gateway. A task's ownership record is durable before :meth:`acommit`
    returns (so before its id reaches the user): in SQLite, or in the journal
    beside it (``<path>.journal``, one process at a time) that the next start
    replays into SQLite. After a crash, only the last few milliseconds of
    settlements, relay claims and audit lines may be lost.
    """

    def __init__(self, path: str = ":memory:", *, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._writer = SqliteWriter(path)
        self._ledger: dict[tuple[str, str], list[float]] = {}
        self._open: dict[str, TaskRecord] = {}
        self._settled: OrderedDict[str, TaskRecord] = OrderedDict()
        self._inflight: dict[str, int] = {}

    async def open(self) -> None:
        """Start the writer thread and load the ledgers and unsettled tasks."""
        await self._writer.start()

        def load(conn: sqlite3.Connection) -> tuple[list[Any], list[Any]]:
            ledger = conn.execute("SELECT scope, period, spent FROM ledger").fetchall()
            tasks = conn.execute(f"SELECT {_COLUMNS} FROM tasks WHERE settled = 0").fetchall()
            return ledger, tasks

        ledger, tasks = await self._writer.call(load)
        for scope, period, spent in ledger:
            self._ledger[(scope, period)] = [float(spent), 0.0]
        for row in tasks:
            record = _row_record(row)
            self._open[record.task_id] = record
            self._inflight[record.user] = self._inflight.get(record.user, 0) + 1
            for key in record.scopes:
                self._entry(key)[1] += record.reserved

    async def aclose(self) -> None:
        """Flush every pending write and stop the writer thread."""
        await self._writer.stop()

    async def flush(self) -> None:
        """Wait until every change so far is in SQLite."""
        await self._writer.call(lambda conn: None)

    def _entry(self, key: tuple[str, str]) -> list[float]:
        entry = self._ledger.get(key)
        if entry is None:
            entry = self._ledger[key] = [0.0, 0.0]
        return entry

    def _write_spent(self, key: tuple[str, str]) -> None:
        self._writer.write(
            "INSERT INTO ledger VALUES (?, ?, ?) "
            "ON CONFLICT (scope, period) DO UPDATE SET spent = excluded.spent",
            (key[0], key[1], self._ledger[key][0]),
        )

    # -- decisions (synchronous: no await between check and change) ------------------

    def reserve(
        self, user: str, amount: float, scopes: Sequence[Scope], max_in_flight: int | None
    ) -> Reservation | Denial:
        """Atomically check the in-flight cap and every budget, then hold ``amount``."""
        running = self._inflight.get(user, 0)
        if max_in_flight is not None and running >= max_in_flight:
            return Denial(
                429,
                "in_flight",
                f"you have {running} tasks in flight, the most this gateway allows; "
                "retry when one finishes",
            )
        for scope in scopes:
            if scope.limit is None:
                continue
            spent, reserved = self._entry((scope.name, scope.period))
            if spent + reserved + amount > scope.limit + _EPSILON:
                which = "this token's" if scope.name.startswith("token:") else "your"
                return Denial(
                    402,
                    "budget",
                    f"{which} budget of {scope.limit:g} credits for {scope.period} is used up: "
                    f"{spent:g} spent, {reserved:g} held for tasks in flight, this task needs "
                    f"{amount:g}",
                )
        for scope in scopes:
            self._entry((scope.name, scope.period))[1] += amount
        self._inflight[user] = running + 1
        return Reservation(user, amount, tuple(scopes))  # by position: binding names costs

    async def areserve(
        self,
        user: str,
        amount: float,
        scopes: Sequence[Scope],
        max_in_flight: int | None,
        *,
        rate: tuple[float, int] | None = None,
    ) -> Reservation | Denial:
        """:meth:`reserve` (in memory, so no await between the check and the hold; ``rate``
        is the gateway's own buckets' business here)."""
        return self.reserve(user, amount, scopes, max_in_flight)

    async def acommit(
        self, res: Reservation, task_id: str, key: str, model: str, callback_url: str | None
    ) -> TaskRecord:
        """:meth:`commit`, in memory at once and durable when it returns.

        Durable means in the state's journal (one append, with every write made
        before it), which survives a crash of the process; SQLite gets it with
        the next write-behind transaction, and a restart replays what it had not. If
        the journal cannot be written, that is logged and the record still goes
        to SQLite behind: the id of a task already paid for is never withheld
        from its owner.
        """
        record = self.commit(res, task_id, key, model, callback_url)
        self._writer.durable()
        return record

    def commit(
        self, res: Reservation, task_id: str, key: str, model: str, callback_url: str | None
    ) -> TaskRecord:
        """Record the created task: owner, creating key, what it holds."""
        keys, keys_text = _ledger_keys(res.scopes)
        record = TaskRecord(  # by position (task_id, user, key, model, created, reserved, ...)
            task_id, res.user, key, model, self._clock(), res.amount, keys, callback_url
        )
        self._open[task_id] = record
        row = (task_id, record.user, key, model, record.created, record.reserved, keys_text)
        if callback_url is None:  # NULL in the SQL: a bound None costs an adapter lookup
            self._writer.write(_INSERT_TASK_NO_URL, row)
        else:
            self._writer.write(_INSERT_TASK, (*row, callback_url))
        return record

    def _unhold(
        self, user: str, amount: float, keys: Sequence[tuple[str, str]], cost: float
    ) -> None:
        for key in keys:
            entry = self._entry(key)
            entry[1] = max(0.0, entry[1] - amount)
            if cost:
                entry[0] += cost
                self._write_spent(key)
        left = self._inflight.get(user, 1) - 1
        if left > 0:
            self._inflight[user] = left
        else:
            self._inflight.pop(user, None)

    def release(self, res: Reservation, *, charge: bool) -> None:
        """Drop a reservation whose create failed; ``charge`` books it as spent (ambiguous)."""
        keys = [(s.name, s.period) for s in res.scopes]
        self._unhold(res.user, res.amount, keys, res.amount if charge else 0.0)

    def settle(
        self, task_id: str, cost: float, state: str, final: dict[str, Any] | None = None
    ) -> TaskRecord | None:
        """Book the final cost of an open task, keep its final object; None if already settled."""
        record = self._open.pop(task_id, None)
        if record is None:
            return None
        self._unhold(record.user, record.reserved, record.scopes, cost)
        record.settled = True
        record.cost = cost
        record.state = state
        record.final = final
        self._remember(record)
        self._writer.write(
            "UPDATE tasks SET settled = 1, cost = ?, state = ?, final = ? WHERE task_id = ?",
            (cost, state, _json(final) if final is not None else None, task_id),
        )
        return record

    def _remember(self, record: TaskRecord) -> None:
        self._settled[record.task_id] = record
        if len(self._settled) > _SETTLED_CACHE:
            self._settled.popitem(last=False)

    def claim_relay(self, record: TaskRecord, state: str) -> bool:
        """True the first time ``state`` of this task is claimed for delivery."""
        if state in record.relayed:
            return False
        record.relayed.add(state)
        self._writer.write(
            "UPDATE tasks SET relayed = ? WHERE task_id = ?",
            (",".join(sorted(record.relayed)), record.task_id),
        )
        return True

    async def lookup(self, task_id: str) -> TaskRecord | None:
        """The task's record from memory, else from SQLite; None when never created here."""
        record = self._open.get(task_id) or self._settled.get(task_id)
        if record is not None:
            return record

        def read(conn: sqlite3.Connection) -> Any:
            return conn.execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)
            ).fetchone()

        row = await self._writer.call(read)
        if row is None:
            return None
        record = self._open.get(task_id) or self._settled.get(task_id) or _row_record(row)
        if record.settled:
            self._remember(record)
        return record

    def usage(self, scope: str, period: str) -> tuple[float, float]:
        """``(spent, reserved)`` credits of one ledger."""
        entry = self._ledger.get((scope, period))
        return (entry[0], entry[1]) if entry is not None else (0.0, 0.0)

    def fleet(self) -> GatewayFleet | None:
        """None: a SQLite store belongs to one gateway, whose own limits are the whole story."""
        return None

    def in_flight(self, user: str) -> int:
        """Tasks of ``user`` created (or being created) and not yet settled."""
        return self._inflight.get(user, 0)

    def open_tasks(self) -> list[TaskRecord]:
        """Every unsettled task."""
        return list(self._open.values())

    def audit(
        self, event: str, user: str | None = None, task_id: str | None = None, **detail: Any
    ) -> None:
        """Append one decision to the audit log (written behind, never updated or deleted)."""
        text = _detail_text(detail)
        self._writer.write(AUDIT_INSERT, (self._clock(), event, user, task_id, text))

    async def audit_records(self) -> list[dict[str, Any]]:
        """Every audit record, oldest first, as dicts."""

        def read(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                "SELECT id, ts, event, user, task_id, detail FROM audit ORDER BY id"
            ).fetchall()

        rows = await self._writer.call(read)
        return [
            {
                "id": r[0],
                "ts": r[1],
                "event": r[2],
                "user": r[3],
                "task_id": r[4],
                **json.loads(r[5]),
            }
            for r in rows
        ]
