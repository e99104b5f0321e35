"""The journal file: its lock, its SQLite settings, its tables and their migration.

One run at a time: a lock file next to the journal is held for as long as the
journal is open. The tables are created when missing; a journal of schema 1
(which named two states differently) is renamed in place; any other version is
refused.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import IO

from ._errors import RuxaError
from ._jobstatus import JobStatus

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["RENAMED", "JournalError", "open_journal"]

_SCHEMA_VERSION = "2"
RENAMED = {"submitted": JobStatus.PENDING.value, "unsent": JobStatus.NOT_SUBMITTED.value}
"""Schema 1's state names and what they are called now."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    key         TEXT PRIMARY KEY,
    line        INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    model       TEXT NOT NULL,
    state       TEXT NOT NULL,
    task_id     TEXT,
    result_urls TEXT,
    error       TEXT,
    creates     INTEGER NOT NULL DEFAULT 0,
    updated     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    key     TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    url     TEXT NOT NULL,
    path    TEXT NOT NULL,
    state   TEXT NOT NULL,
    size    INTEGER,
    error   TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (key, idx)
);
"""


class JournalError(RuxaError):
    """The journal cannot be opened, is in use by another run, or failed to write."""


def open_journal(path: Path) -> tuple[sqlite3.Connection, IO[bytes] | None]:
    """Lock ``path`` for this run, connect (WAL, ``synchronous=FULL``), create or migrate.

    Returns the connection and the held lock file (close it to release the
    lock). Raises :class:`JournalError` when another run holds the lock or the
    file is of an unknown schema; SQLite's and the OS's errors pass through.
    Nothing stays locked or open when it raises.
    """
    lock = _lock(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            _check_schema(conn, path)
        except BaseException:
            conn.close()
            raise
    except BaseException:
        if lock is not None:
            lock.close()
        raise
    return conn, lock


def _lock(path: Path) -> IO[bytes] | None:
    if fcntl is None:  # pragma: no cover - not POSIX
        return None
    lock_path = path.with_name(path.name + ".lock")
    handle = lock_path.open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise JournalError(
            f"{path} is in use by another ruxa-async run; wait for it or use another --journal"
        ) from None
    return handle


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    row = conn.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
    elif row[0] == "1":
        with conn:
            for old, new in RENAMED.items():
                conn.execute("UPDATE jobs SET state=? WHERE state=?", (new, old))
            conn.execute("UPDATE meta SET value=? WHERE name='schema'", (_SCHEMA_VERSION,))
    elif row[0] != _SCHEMA_VERSION:
        raise JournalError(
            f"{path} was written by another version of ruxa-async "
            f"(schema {row[0]}, expected {_SCHEMA_VERSION})"
        )
