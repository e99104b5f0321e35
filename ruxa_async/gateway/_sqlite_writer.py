"""The gateway's SQLite file: writes gathered in the event loop, committed on one thread.

:class:`SqliteWriter` gathers the gateway's writes in the event loop and hands
them in batches to its thread, which commits them (and runs the reads, and
SQLite's checkpoints, which sync the file). A create that must be durable
before its reply does not wait for that thread: its writes are appended to
the state's journal (``_state_journal``) in one ``write``, which survives a
crash of the process as a WAL commit with ``synchronous=NORMAL`` does, and the
thread commits them behind. The event loop never waits for SQLite.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ._state_journal import Journal, Write

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
_MAX_BATCHES = 256  # batches the thread commits in one transaction at most


class SqliteWriter:
    """The SQLite file: writes gathered in the event loop, committed and read on a thread.

    Writes gather in the event loop and go to the thread within
    ``_WRITE_BEHIND`` seconds, which commits every batch waiting for it in one
    transaction. :meth:`durable` makes the writes so far survive a crash at
    once, by appending them to the journal (without waking the thread);
    :meth:`call` runs a read on the thread after every write made before it. ``":memory:"`` has one
    connection, in the loop, no journal and no thread.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._memory = path == ":memory:"
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ruxa-gateway-sqlite", daemon=True)
        self._ready: concurrent.futures.Future[Journal] = concurrent.futures.Future()
        self._stopped = False
        self._alive = False  # the thread holds an open connection (read without a lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: sqlite3.Connection | None = None  # in memory only: the loop's connection
        self._journal: Journal | None = None
        self._pending: list[Write] = []  # not yet handed to the thread
        self._journalled = 0  # how many of them are in the journal, up to its line ``_seq``
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._memory:
            conn = sqlite3.connect(self._path, isolation_level=None)
            conn.executescript(_SCHEMA)
            self._conn = conn
            return
        self._thread.start()
        self._journal = await asyncio.wrap_future(self._ready)

    def write(self, sql: str, params: Sequence[Any]) -> None:
        self._pending.append((sql, params))
        if self._timer is None and self._loop is not None and not self._stopped:
            self._timer = self._loop.call_later(_WRITE_BEHIND, self._hand_over)

    def durable(self) -> None:
        """Make every write so far survive a crash of this process before returning: one
        append to the journal. They still go to the thread with the next batch, within
        ``_WRITE_BEHIND`` seconds, so SQLite commits many creates per transaction."""
        if self._stopped or self._loop is None:
            raise RuntimeError("the gateway's state store is closed")
        if self._conn is not None:  # in memory: nothing outlives the process to wait for
            return
        fresh = self._pending[self._journalled :]
        if fresh and self._journal is not None:
            try:
                self._seq = self._journal.append(fresh)
            except OSError:  # the record stays in memory; SQLite still gets it behind
                log.exception("gateway state: the journal could not be written")
            self._journalled = len(self._pending)

    def _hand_over(self) -> None:
        """Send the writes so far to the thread, to be committed in one transaction."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        seq, self._seq, self._journalled = self._seq, 0, 0
        if not batch:
            return
        if self._conn is not None:  # in memory: commit here, nothing waits for a disk
            _commit(self._conn, batch)
        else:
            self._queue.put((batch, seq))

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._stopped or not (self._alive or self._conn is not None):
            raise RuntimeError("the gateway's state store is closed")
        self._hand_over()  # the call sees every write made before it
        if self._conn is not None:
            return fn(self._conn)  # no file: nothing here waits for a disk
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((fn, future))
        return await asyncio.wrap_future(future)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._hand_over()
        self._stopped = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if self._thread.is_alive():
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        journal: Journal | None = None
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync at commit, at checkpoints
            conn.executescript(_SCHEMA)
            journal = Journal(self._path + ".journal")
            journal.replay(conn)
        except Exception as exc:
            if journal is not None:
                journal.close()
            self._ready.set_exception(exc)
            return
        self._alive = True
        self._ready.set_result(journal)
        try:
            self._serve(conn, journal)
        finally:
            self._alive = False
            conn.close()
            journal.close()

    def _serve(self, conn: sqlite3.Connection, journal: Journal) -> None:
        """Commit batches (each run of them in one transaction) and answer reads, in order."""
        held: list[Any] = []  # an item taken from the queue while gathering batches
        while True:
            item = held.pop() if held else self._queue.get()
            if item is None:
                return
            first, second = item
            if callable(first):
                try:
                    second.set_result(first(conn))
                except Exception as exc:  # handed to the awaiting coroutine, never lost
                    second.set_exception(exc)
                continue
            writes, seq = list(first), second
            for _ in range(_MAX_BATCHES):  # every batch already waiting joins this transaction
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None or callable(more[0]):
                    held.append(more)
                    break
                writes.extend(more[0])
                seq = max(seq, more[1])
            if _commit(conn, writes, seq) and seq:
                journal.applied = seq


def _commit(conn: sqlite3.Connection, batch: list[Write], seq: int = 0) -> bool:
    """Commit ``batch`` in one transaction (with the journal line ``seq`` marked applied);
    False (logged, rolled back) if SQLite refused it."""
    # Audit lines touch no other table: they are appended together, in their order, at
    # the end of the transaction (a create writes one between its ledger and task writes,
    # which would cut those runs short).
    audit: list[Sequence[Any]] = []
    run: list[Sequence[Any]] = []  # parameters of consecutive writes of one statement
    sql = ""
    try:
        conn.execute("BEGIN")
        for statement, params in batch:
            if statement is AUDIT_INSERT:
                audit.append(params)
                continue
            if statement != sql:
                if run:
                    _write_rows(conn, sql, run)
                sql, run = statement, []
            run.append(params)
        if run:
            _write_rows(conn, sql, run)
        if audit:
            _write_rows(conn, AUDIT_INSERT, audit)
        if seq:
            Journal.mark_applied(conn, seq)
        conn.execute("COMMIT")
    except sqlite3.Error:
        log.exception("gateway state: a write batch failed; it was rolled back")
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return False
    return True
