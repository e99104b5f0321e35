"""The batch runner's durable record of jobs, task ids, outcomes and downloaded files.

One SQLite file (WAL mode, ``synchronous=FULL``) owned by one dedicated worker
thread and connection, so the event loop never waits on disk. Writes are queued
and group-committed: the worker drains whatever is queued into one transaction.
:meth:`Journal.mark_submitting` returns only after its row is committed, which
is what makes a crash between that commit and the create request visible later
as an *ambiguous* job; the other writes return at once and are committed within
moments. An error in the worker is kept and raised by the next awaited call.

A lock file next to the journal stops two runs from sharing it; the file, its
lock, tables and migration are in ``_journal_schema``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import attrs

from ._jobstatus import JOURNAL_STATES, JobStatus
from ._journal_schema import RENAMED, JournalError, open_journal

__all__ = [
    "FILE_COLUMNS",
    "JOB_COLUMNS",
    "FileRecord",
    "JobRecord",
    "JobRef",
    "Journal",
    "JournalError",
    "file_record",
    "job_record",
]

log = logging.getLogger("ruxa_async")

_MAX_GROUP = 2000


@attrs.frozen(kw_only=True)
class JobRef:
    """Which job a journal write is about: its key and what it asks for."""

    key: str
    line: int
    fingerprint: str
    model: str


@attrs.frozen(kw_only=True)
class FileRecord:
    """One result file of a job: where it goes and whether it arrived."""

    key: str
    index: int
    url: str
    path: str
    state: str
    size: int | None = None
    error: str | None = None


@attrs.frozen(kw_only=True)
class JobRecord:
    """A job as the journal remembers it."""

    key: str
    line: int
    fingerprint: str
    model: str
    state: JobStatus
    task_id: str | None = None
    result_urls: tuple[str, ...] = ()
    error: str | None = None
    creates: int = 0

    @property
    def ambiguous(self) -> bool:
        """True when a create may have been sent but no task id is known."""
        return self.task_id is None and self.state.may_exist


_Op = Callable[[sqlite3.Connection], Any]


class _Stop:
    pass


_STOP = _Stop()


class Journal:
    """The SQLite journal of one batch output folder; an async context manager.

    All SQLite work happens on one worker thread started by :meth:`open`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[tuple[_Op | _Stop, asyncio.Future[Any] | None]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._lock_file: IO[bytes] | None = None
        self.commits = 0
        self.writes = 0

    def __repr__(self) -> str:
        return f"<Journal {self.path}>"

    async def __aenter__(self) -> Journal:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        """Lock the journal, start the worker, create the schema if needed."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._work, args=(ready,), name="ruxa_async journal", daemon=True
        )
        self._thread.start()
        try:
            await ready
        except BaseException:
            await self._join()
            raise

    async def aclose(self) -> None:
        """Commit what is queued, close the connection and stop the worker."""
        if self._thread is None:
            return
        self._queue.put((_STOP, None))
        await self._join()

    async def _join(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.join)

    # ---------------------------------------------------------------- worker

    def _work(self, ready: asyncio.Future[None]) -> None:
        try:
            conn, self._lock_file = open_journal(self.path)
        except (sqlite3.Error, OSError, JournalError) as exc:
            error = exc if isinstance(exc, JournalError) else JournalError(f"{self.path}: {exc}")
            self._resolve(ready, error=error)
            return
        self._resolve(ready, None)
        try:
            self._serve(conn)
        finally:
            conn.close()
            self._release_lock()

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < _MAX_GROUP:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = False
            results: list[tuple[asyncio.Future[Any] | None, Any]] = []
            failure: BaseException | None = None
            if self._error is None:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    for op, future in batch:
                        if isinstance(op, _Stop):
                            stop = True
                            continue
                        results.append((future, op(conn)))
                    conn.execute("COMMIT")
                    self.commits += 1
                    self.writes += len(results)
                except Exception as exc:  # the thread boundary: handed to every waiter
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    failure = _as_journal_error(exc, self.path)
                    self._error = failure
                    log.error("%s", failure)
            else:
                failure = self._error
            if failure is not None:
                for op, future in batch:
                    stop = stop or isinstance(op, _Stop)
                    if future is not None:
                        self._resolve(future, error=failure)
            else:
                for future, result in results:
                    if future is not None:
                        self._resolve(future, result)
            if stop:
                return

    def _release_lock(self) -> None:
        handle, self._lock_file = self._lock_file, None
        if handle is not None:
            handle.close()

    def _resolve(
        self, future: asyncio.Future[Any], result: Any = None, *, error: BaseException | None = None
    ) -> None:
        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle)

    # ------------------------------------------------------------ operations

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._thread is None:
            raise JournalError("the journal is not open")

    def _post(self, op: _Op) -> None:
        self._check()
        self._queue.put((op, None))

    async def _call(self, op: _Op) -> Any:
        self._check()
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put((op, future))
        return await future

    @property
    def error(self) -> BaseException | None:
        """The write error that stopped the journal, if any."""
        return self._error

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""
        await self._call(lambda conn: None)

    async def get_meta(self, name: str) -> str | None:
        """A value stored with :meth:`set_meta`, or None."""

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
            return None if row is None else str(row[0])

        result: str | None = await self._call(op)
        return result

    async def set_meta(self, name: str, value: str) -> None:
        """Store a named setting (committed when this returns)."""
        await self._call(
            lambda conn: conn.execute(
                "INSERT INTO meta VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                (name, value),
            )
        )

    async def mark_submitting(self, job: JobRef) -> None:
        """Record that a create for ``job`` is about to be sent; returns once committed."""
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO jobs (key, line, fingerprint, model, state, creates, updated) "
                "VALUES (?, ?, ?, ?, 'submitting', 1, ?) "
                "ON CONFLICT(key) DO UPDATE SET line=excluded.line, "
                "fingerprint=excluded.fingerprint, model=excluded.model, state='submitting', "
                "task_id=NULL, result_urls=NULL, error=NULL, creates=creates+1, "
                "updated=excluded.updated",
                (job.key, job.line, job.fingerprint, job.model, now),
            )

        await self._call(op)

    def unmark_submitting(self, job: JobRef, reason: str) -> None:
        """An answer proved the create made nothing: back to not submitted (committed shortly).

        The create is no longer counted against the job.
        """
        now = time.time()
        self._post(
            lambda conn: conn.execute(
                "UPDATE jobs SET state='not_submitted', creates=MAX(creates-1, 0), error=?, "
                "updated=? WHERE key=? AND state='submitting' AND task_id IS NULL",
                (reason, now, job.key),
            )
        )

    def record_task_id(self, job: JobRef, task_id: str) -> None:
        """Record the task id a create returned (committed shortly)."""
        self.record_outcome(job, JobStatus.PENDING, task_id=task_id)

    def record_outcome(
        self,
        job: JobRef,
        state: JobStatus,
        *,
        task_id: str | None = None,
        result_urls: tuple[str, ...] = (),
        error: str | None = None,
    ) -> None:
        """Record where a job stands now (committed shortly).

        ``task_id=None`` keeps the task id already recorded. A job with no row
        yet gets one.
        """
        if state not in JOURNAL_STATES:
            raise ValueError(f"{state.value} is reported, never journaled")
        now = time.time()
        urls = json.dumps(list(result_urls)) if result_urls else None
        values = (job.key, job.line, job.fingerprint, job.model, state.value, task_id, urls, error)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO jobs (key, line, fingerprint, model, state, task_id, result_urls, "
                "error, creates, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?) "
                "ON CONFLICT(key) DO UPDATE SET line=excluded.line, "
                "fingerprint=excluded.fingerprint, model=excluded.model, state=excluded.state, "
                "task_id=COALESCE(excluded.task_id, task_id), result_urls=excluded.result_urls, "
                "error=excluded.error, updated=excluded.updated",
                (*values, now),
            )

        self._post(op)

    def record_file(self, record: FileRecord) -> None:
        """Record a result file's state (``pending``, ``done`` or ``failed``); committed shortly."""
        now = time.time()
        self._post(
            lambda conn: conn.execute(
                "INSERT INTO files (key, idx, url, path, state, size, error, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key, idx) DO UPDATE SET "
                "url=excluded.url, path=excluded.path, state=excluded.state, "
                "size=excluded.size, error=excluded.error, updated=excluded.updated",
                (
                    record.key,
                    record.index,
                    record.url,
                    record.path,
                    record.state,
                    record.size,
                    record.error,
                    now,
                ),
            )
        )

    async def forget_unfinished(self) -> int:
        """Delete every job whose task did not end (and its files); return how many.

        For the simulator, which keeps no task between runs.
        """
        final = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value)

        def op(conn: sqlite3.Connection) -> int:
            where = "SELECT key FROM jobs WHERE state NOT IN (?, ?)"
            conn.execute(f"DELETE FROM files WHERE key IN ({where})", final)
            return conn.execute("DELETE FROM jobs WHERE state NOT IN (?, ?)", final).rowcount

        result: int = await self._call(op)
        return result

    async def has_jobs(self) -> bool:
        """True when any job is recorded."""
        result: bool = await self._call(
            lambda conn: conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchone() is not None
        )
        return result


def _as_journal_error(exc: Exception, path: Path) -> JournalError:
    if isinstance(exc, JournalError):
        return exc
    error = JournalError(f"writing the journal {path} failed: {exc}")
    error.__cause__ = exc
    return error


JOB_COLUMNS = "key, line, fingerprint, model, state, task_id, result_urls, error, creates"
FILE_COLUMNS = "key, idx, url, path, state, size, error"


def job_record(row: tuple[Any, ...]) -> JobRecord:
    """A :class:`JobRecord` from a row of ``SELECT JOB_COLUMNS FROM jobs``."""
    urls = tuple(json.loads(row[6])) if row[6] else ()
    return JobRecord(
        key=row[0],
        line=row[1],
        fingerprint=row[2],
        model=row[3],
        state=JobStatus(RENAMED.get(row[4], row[4])),
        task_id=row[5],
        result_urls=urls,
        error=row[7],
        creates=row[8],
    )


def file_record(row: tuple[Any, ...]) -> FileRecord:
    """A :class:`FileRecord` from a row of ``SELECT FILE_COLUMNS FROM files``."""
    return FileRecord(
        key=row[0], index=row[1], url=row[2], path=row[3], state=row[4], size=row[5], error=row[6]
    )
