"""The gateway's SQLite file: writes committed behind in the event loop, reads on one thread.

:class:`SqliteWriter` gathers the gateway's writes and commits them in the
event loop, one transaction every few milliseconds. With the WAL journal and
``synchronous=NORMAL`` a commit is a few buffered writes to the WAL file, with
no fsync. A create that must be durable before its reply does not wait for
that commit: its writes are appended to the state's journal
(``_state_journal``) in one ``write``, which survives a crash of the process
as such a commit does, and are committed with the next batch. What can take
long stays off the loop, on the writer's one thread: reads (each with its own
connection's snapshot of everything committed before it was asked) and
checkpoints, which copy the WAL into the database file and sync both.
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
_BUSY_TIMEOUT = 1.0  # seconds the loop waits for a write lock held by another process
# The loop's connection never checkpoints (it could fsync): the thread does, passively,
# after this many commits or rows (about SQLite's own 1,000 pages of WAL).
_CHECKPOINT_COMMITS = 200
_CHECKPOINT_ROWS = 1000
# A create inserts one task under a random id: one leaf of the id's index, far from the
# last's, and every leaf a commit touches is a whole page in the WAL. Half SQLite's usual
# 4 KiB halves those bytes: ~12 us less CPU per create at 12 creates a commit (measured).
_PAGE_SIZE = 2048


class SqliteWriter:
    """The SQLite file: writes committed behind in the event loop, reads on a thread.

    Writes gather in the event loop and are committed together, in one
    transaction every ``_WRITE_BEHIND`` seconds. :meth:`durable` makes the
    writes so far survive a crash at once, by appending them to the journal
    (one ``write``; they are committed with the others). :meth:`call` commits
    what is pending, then runs a read on the thread with a connection of its
    own, which also checkpoints the WAL. ``":memory:"`` has one connection, in
    the loop, no journal and no thread.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._memory = path == ":memory:"
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ruxa-gateway-sqlite", daemon=True)
        self._ready: concurrent.futures.Future[tuple[sqlite3.Connection, Journal]] = (
            concurrent.futures.Future()
        )
        self._stopped = False
        self._alive = False  # the thread holds an open connection (read without a lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: sqlite3.Connection | None = None  # the loop's: every write goes through it
        self._journal: Journal | None = None
        self._pending: list[Write] = []  # not yet committed
        self._journalled = 0  # how many of them are in the journal, up to its record ``_seq``
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._since_checkpoint = [0, 0]  # commits, rows
        self._checkpointing = False  # a checkpoint is queued or running on the thread

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._memory:
            conn = sqlite3.connect(self._path, isolation_level=None)
            conn.executescript(_SCHEMA)
            self._conn = conn
            return
        self._thread.start()
        conn, journal = await asyncio.wrap_future(self._ready)
        self._conn, self._journal = conn, journal

    def write(self, sql: str, params: Sequence[Any]) -> None:
        self._pending.append((sql, params))
        if self._timer is None and self._loop is not None and not self._stopped:
            self._timer = self._loop.call_later(_WRITE_BEHIND, self._flush)

    def durable(self) -> None:
        """Make every write so far survive a crash of this process before returning: one
        append to the journal (SQLite commits them with the next batch)."""
        if self._stopped or self._conn is None:
            raise RuntimeError("the gateway's state store is closed")
        fresh = self._pending[self._journalled :]
        if fresh and self._journal is not None:
            try:
                self._seq = self._journal.append(fresh)
            except (OSError, ValueError):  # in memory still, and SQLite gets it behind
                log.exception("gateway state: the journal could not be written")
            self._journalled = len(self._pending)

    def _flush(self) -> None:
        """Commit everything written so far in one transaction."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        seq, self._seq, self._journalled = self._seq, 0, 0
        if not batch or self._conn is None:
            return
        if _commit(self._conn, batch, seq) and seq and self._journal is not None:
            self._journal.applied = seq
        counts = self._since_checkpoint
        counts[0] += 1
        counts[1] += len(batch)
        if (
            (counts[0] >= _CHECKPOINT_COMMITS or counts[1] >= _CHECKPOINT_ROWS)
            and not self._checkpointing
            and not self._memory
        ):
            self._since_checkpoint = [0, 0]
            self._checkpointing = True
            self._queue.put(_checkpoint)

    async def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._stopped or self._conn is None or not (self._alive or self._memory):
            raise RuntimeError("the gateway's state store is closed")
        self._flush()  # the call sees every write made before it
        if self._memory:
            return fn(self._conn)  # no file: nothing here waits for a disk
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((fn, future))
        return await asyncio.wrap_future(future)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._flush()
        self._stopped = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # not the file's last connection: the thread's, closing, checkpoints
        if self._thread.is_alive():
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        journal: Journal | None = None
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
            conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")  # a new file's; a no-op on others
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            journal = Journal(self._path + ".journal")
            journal.replay(conn)
            writer = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT
            )
            writer.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync at commit
            writer.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints (and fsyncs) run here
        except Exception as exc:
            if journal is not None:
                journal.close()
            self._ready.set_exception(exc)
            return
        self._alive = True
        self._ready.set_result((writer, journal))
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if item is _checkpoint:
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error:
                        log.exception("gateway state: a checkpoint failed; the next one retries")
                    finally:
                        self._checkpointing = False
                    continue
                fn, future = item
                try:
                    future.set_result(fn(conn))
                except Exception as exc:  # handed to the awaiting coroutine, never lost
                    future.set_exception(exc)
        finally:
            self._alive = False
            conn.close()
            journal.close()  # after the loop's last commit (stop joins this thread)


def _checkpoint() -> None:
    """A marker in the thread's queue: checkpoint the WAL now."""


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
