"""Reading a batch run's journal from outside the run: read-only, in pieces, from any thread.

The run engine plans and reports through a :class:`JournalReader` so it never
holds every row: it asks for the records of a few hundred keys at a time. Tests
and tools use the same reader to see what a run (even one still going, or one
killed) has recorded, without knowing the SQLite schema.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from ._jobstatus import JobStatus
from ._journal import (
    FILE_COLUMNS,
    JOB_COLUMNS,
    FileRecord,
    JobRecord,
    JournalError,
    file_record,
    job_record,
)

__all__ = ["JournalReader"]

_CHUNK = 500  # well under SQLite's limit of bound parameters per statement


class JournalReader:
    """A read-only view of a journal file; a context manager.

    A missing file reads as an empty journal. Safe to use while a run writes
    the same file (SQLite's WAL gives each read a consistent snapshot).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._schema = False

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<JournalReader {self.path}>"

    def close(self) -> None:
        """Close the connection (reading again reopens it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _open(self) -> sqlite3.Connection | None:
        if self._conn is not None and self._schema:
            return self._conn
        if not self.path.exists():
            return None
        if self._conn is None:
            try:
                self._conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    timeout=10,
                    check_same_thread=False,
                )
            except sqlite3.Error as exc:
                raise JournalError(f"cannot read the journal {self.path}: {exc}") from None
        found = self._conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN ('jobs', 'files')"
        ).fetchone()[0]
        self._schema = found == 2
        return self._conn if self._schema else None

    def _select(self, sql: str, params: Iterable[object] = ()) -> list[tuple[object, ...]]:
        try:
            conn = self._open()
            return [] if conn is None else conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read the journal {self.path}: {exc}") from None

    def jobs(self, keys: Iterable[str]) -> dict[str, JobRecord]:
        """The records of those of ``keys`` the journal knows."""
        found: dict[str, JobRecord] = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE key IN ({marks})"
            for row in self._select(sql, chunk):
                record = job_record(row)
                found[record.key] = record
        return found

    def files(self, keys: Iterable[str]) -> dict[str, list[FileRecord]]:
        """The file records of ``keys``, by key, in result order."""
        found: dict[str, list[FileRecord]] = {}
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT {FILE_COLUMNS} FROM files WHERE key IN ({marks}) ORDER BY key, idx"
            for row in self._select(sql, chunk):
                record = file_record(row)
                found.setdefault(record.key, []).append(record)
        return found

    def job(self, key: str) -> JobRecord | None:
        """The record of one job, or None."""
        return self.jobs([key]).get(key)

    def all_jobs(self) -> Iterator[JobRecord]:
        """Every job record, in key order, read in pieces."""
        after = ""
        while True:
            rows = self._select(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE key > ? ORDER BY key LIMIT ?",
                (after, _CHUNK),
            )
            if not rows:
                return
            for row in rows:
                yield job_record(row)
            after = str(rows[-1][0])

    def all_files(self) -> list[FileRecord]:
        """Every file record (a test-sized journal's; a run reads them by key)."""
        return [file_record(r) for r in self._select(f"SELECT {FILE_COLUMNS} FROM files")]

    def counts(self) -> Counter[JobStatus]:
        """How many jobs are recorded in each state."""
        rows = self._select("SELECT state, count(*) FROM jobs GROUP BY state")
        return Counter({JobStatus(str(state)): int(str(n)) for state, n in rows})


def _chunks(keys: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
