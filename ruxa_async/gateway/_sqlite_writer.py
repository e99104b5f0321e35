"""The gateway's SQLite file and the one thread that owns its connection.

:class:`SqliteWriter` takes the gateway's writes in the event loop and commits
them in batched transactions on its thread, so no SQLite call blocks the loop;
reads go through the same thread (see :class:`~._store.SQLiteStore`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["AUDIT_INSERT", "SqliteWriter"]

log = logging.getLogger("ruxa_async")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, user TEXT NOT NULL, key TEXT NOT NULL, model TEXT NOT NULL,
    created REAL NOT NULL, reserved REAL NOT NULL, scopes TEXT NOT NULL, callback_url TEXT,
    settled INTEGER NOT NULL DEFAULT 0, cost REAL, state TEXT, relayed TEXT NOT NULL DEFAULT '',
    final TEXT
);
CREATE INDEX IF NOT EXISTS tasks_open ON tasks (settled) WHERE settled = 0;
CREATE TABLE IF NOT EXISTS ledger (
    scope TEXT NOT NULL, period TEXT NOT NULL, spent REAL NOT NULL, PRIMARY KEY (scope, period)
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, event TEXT NOT NULL,
    user TEXT, task_id TEXT, detail TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


_ROWS_PER_STATEMENT = 64
_MAX_PARAMETERS = 999  # the oldest SQLite's limit of parameters per statement
_forms: dict[str, tuple[str, str, int] | None] = {}
_statements: dict[tuple[str, int], str] = {}


def _rows_form(sql: str) -> tuple[str, str, int] | None:
    """``(head, row, rows per statement)`` of a plain one-row ``INSERT ... VALUES (row)``, else
    None (an upsert, say, must not meet one key twice in one statement: one row each)."""
    form = _forms.get(sql)
    if form is None and sql not in _forms:
        head, values, row = sql.partition(" VALUES ")
        plain = head.lstrip().upper().startswith("INSERT") and values
        if plain and row.startswith("(") and row.endswith(")") and ")" not in row[:-1]:
            per = min(_ROWS_PER_STATEMENT, _MAX_PARAMETERS // max(1, row.count("?")))
            form = (head + values, row, per)
        _forms[sql] = form
    return form


def _write_rows(conn: sqlite3.Connection, sql: str, rows: list[Sequence[Any]]) -> None:
    """Run ``sql`` once per row: a plain INSERT as one statement of many rows (one step of
    SQLite and one release of the GIL for up to 64 rows, not one per row)."""
    form = _rows_form(sql) if len(rows) > 1 else None
    if form is None:
        conn.executemany(sql, rows)
        return
    head, row, per = form
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        key = (sql, len(chunk))
        statement = _statements.get(key)
        if statement is None:
            statement = _statements[key] = head + ",".join([row] * len(chunk))
        conn.execute(statement, [value for params in chunk for value in params])


#: The one statement that appends to the audit log (the writer batches its lines together).
AUDIT_INSERT = "INSERT INTO audit (ts, event, user, task_id, detail) VALUES (?, ?, ?, ?, ?)"
_WRITE_BEHIND = 0.005  # seconds a write may wait to share its transaction with others


class SqliteWriter:
    """One thread owning the SQLite connection: batched writes and queued reads.

    Writes gather in the event loop and go to the thread together: when a
    coroutine waits for them to be durable (:meth:`durable`), else within
    ``_WRITE_BEHIND`` seconds. The thread commits each batch in one
    transaction and wakes all of its waiters with one loop callback. While a
    batch with waiters is being committed, the next one gathers (group
    commit): under load, many creates share one transaction and one thread
    wake-up; alone, a create waits for one commit.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ruxa-gateway-sqlite", daemon=True)
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopped = False
        self._alive = False  # the thread holds an open connection (read without a lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[str, Sequence[Any]]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.Handle | None = None
        self._committing = False  # a batch with waiters is at the thread

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()
        await asyncio.wrap_future(self._ready)

    def write(self, sql: str, params: Sequence[Any]) -> None:
        self._pending.append((sql, params))
        if self._timer is None and self._loop is not None and not self._stopped:
            self._timer = self._loop.call_later(_WRITE_BEHIND, self._hand_off)

    def _hand_off(self) -> None:
        """Send everything written so far (and its waiters) to the thread as one batch."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending or self._waiters:
            batch, self._pending = self._pending, []
            waiters, self._waiters = self._waiters, []
            if waiters:
                self._committing = True
            self._queue.put(("batch", batch, waiters))

    async def durable(self) -> None:
        """Return once every write made so far is committed to SQLite."""
        if self._loop is None or self._stopped or not self._alive:
            raise RuntimeError("the gateway's state store is closed")
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        if len(self._waiters) == 1 and not self._committing:
            self._send_soon()  # others of this loop turn join the same transaction
        await waiter

    def _send_soon(self) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_soon(self._hand_off)

    def _committed(self, waiters: list[asyncio.Future[None]]) -> None:
        """In the loop: a batch with waiters is in SQLite; send the next one if any waits."""
        self._committing = False
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._waiters:
            self._send_soon()

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._stopped or not self._alive:
            raise RuntimeError("the gateway's state store is closed")
        self._hand_off()  # the call sees every write made before it
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((fn, future))
        return await asyncio.wrap_future(future)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._hand_off()
        self._stopped = True
        if self._thread.is_alive():
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._ready.set_exception(exc)
            return
        self._alive = True
        self._ready.set_result(None)
        try:
            while True:
                items = [self._queue.get()]
                while len(items) < 200:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if not self._batch(conn, items):
                    return
        finally:
            self._alive = False
            conn.close()

    def _batch(self, conn: sqlite3.Connection, items: list[Any]) -> bool:
        keep_going = True
        waiters: list[asyncio.Future[None]] = []
        conn.execute("BEGIN")
        try:
            run: list[Sequence[Any]] = []  # parameters of consecutive writes of one statement
            sql = ""
            # Audit lines touch no other table: they are appended together, in their order,
            # before any read and at the end of the transaction (a create writes one between
            # its ledger and task writes, which would cut those runs short).
            audit: list[Sequence[Any]] = []
            for item in items:
                if item is None:
                    keep_going = False
                    continue
                if item[0] == "batch":
                    waiters += item[2]  # woken even if this transaction fails
                    for statement, params in item[1]:
                        if statement is AUDIT_INSERT:
                            audit.append(params)
                            continue
                        if statement != sql:
                            if run:
                                _write_rows(conn, sql, run)
                            sql, run = statement, []
                        run.append(params)
                    continue
                if run:
                    _write_rows(conn, sql, run)
                    run, sql = [], ""
                if audit:
                    _write_rows(conn, AUDIT_INSERT, audit)
                    audit = []
                fn, future = item
                try:
                    future.set_result(fn(conn))
                except Exception as exc:  # handed to the awaiting coroutine, never lost
                    future.set_exception(exc)
            if run:
                _write_rows(conn, sql, run)
            if audit:
                _write_rows(conn, AUDIT_INSERT, audit)
            conn.execute("COMMIT")
        except sqlite3.Error:
            log.exception("gateway state: a write batch failed; it was rolled back")
            conn.execute("ROLLBACK")
        if waiters and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                self._loop.call_soon_threadsafe(self._committed, waiters)
        return keep_going
