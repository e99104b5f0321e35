"""The gateway state's write-ahead journal: a create is durable after one append.

Committing a SQLite transaction for a create that arrives alone costs tens of
microseconds of CPU and several system calls (WAL frames, locks) on the path
to its reply. The journal makes the same promise for the price of one
``write``: the writes a create waits for are appended as one record, and
SQLite gets them with the next transaction. A record that reached the file
survives a crash of the process, as a commit with ``synchronous=NORMAL`` does;
the next start replays into SQLite every record it has not yet applied
(``journal_applied`` holds the last applied record's number, updated in the
same transaction as the writes). The journal is emptied whenever everything
in it is applied and it has grown past ``_EMPTY_AFTER`` bytes.

The append is a file ``write`` in the event loop, against the house rule: a
few hundred bytes into the page cache, without fsync, cheaper than handing it
to a thread and waking the loop back (as the loop's own SQLite commits). The
file is opened and replayed at start on the state's thread.

A record is its length and CRC-32 (``<II``, little-endian) and then
``marshal`` data ``(number, [(sql, params), ...])`` (earlier versions wrote a
tuple of the pairs; both replay): statements and parameters are strings,
numbers and None, and ``marshal`` writes them several times quicker than JSON
(floats above all). A record cut short by a crash (its
create was never answered) fails its check and ends the replay.
"""

from __future__ import annotations

import fcntl
import logging
import marshal
import os
import sqlite3
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from .._errors import ConfigurationError

__all__ = ["Journal", "Write"]

log = logging.getLogger("ruxa_async")

Write = tuple[str, Sequence[Any]]  # one SQL statement and its parameters

_EMPTY_AFTER = 1 << 20  # bytes: the journal is emptied once past this and wholly applied
_HEAD = struct.Struct("<II")  # a record's length and CRC-32
_MARSHAL_VERSION = 4  # the format since Python 3.4

APPLIED_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_applied (
    id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL
);
"""
_SET_APPLIED = "INSERT OR REPLACE INTO journal_applied (id, seq) VALUES (0, ?)"


class Journal:
    """The append-only file beside a state database (``<database>.journal``; SQLite's own
    rollback journal is ``-journal``), held by one process at a time (an exclusive ``flock``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise ConfigurationError(
                f"the gateway state {path!r} is in use by another gateway process; "
                "give each gateway its own state_path, or share state through [state] redis_url"
            ) from None
        self._size = os.fstat(self._fd).st_size
        self.last = 0  # the number of the last record appended (or replayed)
        self.applied = 0  # the number of the last record committed to SQLite
        self._replayed = False  # until then, nothing in the file is known to be in SQLite

    def replay(self, conn: sqlite3.Connection) -> int:
        """Commit to SQLite every whole record not yet applied; empty the file. Returns the
        number of records replayed."""
        conn.executescript(APPLIED_SCHEMA)
        row = conn.execute("SELECT seq FROM journal_applied").fetchone()
        applied = int(row[0]) if row else 0
        with open(self._fd, "rb", closefd=False) as file:
            file.seek(0)
            data = file.read()
        todo: list[Write] = []
        last, replayed, at, whole = applied, 0, 0, True
        while at < len(data):
            record = _record(data, at)
            if record is None:
                whole = False
                break
            (seq, writes), at = record
            if seq > applied:
                todo.extend(writes)
                replayed += 1
            last = max(last, seq)
        if not whole:  # its create was never answered: nothing acknowledged is lost
            log.warning("gateway state: the journal ends in a damaged record; replay stops there")
        if todo:
            conn.execute("BEGIN")
            try:
                for sql, params in todo:
                    conn.execute(sql, params)
                conn.execute(_SET_APPLIED, (last,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("gateway state: %d journal entries replayed into SQLite", replayed)
        self.last = self.applied = last
        self._replayed = True
        self._empty()
        return replayed

    def append(self, writes: list[Write]) -> int:
        """Append ``writes`` as one record (one ``write``); its number."""
        if self._size > _EMPTY_AFTER and self._replayed and self.applied >= self.last:
            self._empty()
        seq = self.last + 1
        record: Any = (seq, writes)  # strings, numbers and None (marshal's types)
        payload = marshal.dumps(record, _MARSHAL_VERSION)
        framed = _HEAD.pack(len(payload), zlib.crc32(payload)) + payload
        done = os.write(self._fd, framed)
        if done < len(framed):  # a regular file takes it whole but for a full disk
            view = memoryview(framed)[done:]
            while view:
                view = view[os.write(self._fd, view) :]
        self.last = seq
        self._size += len(framed)
        return seq

    @staticmethod
    def mark_applied(conn: sqlite3.Connection, seq: int) -> None:
        """Record, inside the caller's transaction, that records up to ``seq`` are in SQLite."""
        conn.execute(_SET_APPLIED, (seq,))

    def close(self) -> None:
        """Empty the file if everything in it is known to be applied, then release it."""
        if self._replayed and self.applied >= self.last:
            self._empty()
        os.close(self._fd)  # releases the lock

    def _empty(self) -> None:
        os.ftruncate(self._fd, 0)
        self._size = 0


def _record(data: bytes, at: int) -> tuple[tuple[int, list[Write]], int] | None:
    """The record at ``at`` and where the next starts; None if it is cut short or damaged."""
    end = at + _HEAD.size
    if end > len(data):
        return None
    size, check = _HEAD.unpack_from(data, at)
    payload = data[end : end + size]
    if len(payload) != size or zlib.crc32(payload) != check:
        return None
    try:
        seq, writes = marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        return None
    return (seq, list(writes)), end + size
