"""The SQLite store's journal: a create is durable after one append, replayed after a crash."""

from __future__ import annotations

import asyncio
import logging
import marshal
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from ruxa_async import ConfigurationError
from ruxa_async.gateway import _state_journal
from ruxa_async.gateway._state_journal import Journal
from ruxa_async.gateway._store import Reservation, Scope, SQLiteStore
from tests.helpers_proc import ROOT, child_env

NB = "google/nano-banana"
SCOPES = (Scope("user:alice", "2026-12-01", 100.0),)

# A gateway state that creates N tasks while another connection holds SQLite's write lock
# (so its thread can commit none of them), says so, and waits to be killed.
CHILD = """
import asyncio, sqlite3, sys
from ruxa_async.gateway._store import Scope, SQLiteStore

async def main(path: str, n: int) -> None:
    store = SQLiteStore(path)
    await store.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # SQLite's write lock: the store's commits must wait
    for i in range(n):
        held = store.reserve("alice", 2.0, (Scope("user:alice", "2026-12-01", 100.0),), None)
        store.audit("created", "alice", f"t{i}", model="m")
        await store.acommit(held, f"t{i}", "k1", "m", None)
    print("created", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def copy_state(path: Path, dest: Path) -> Path:
    """Copy a state's files as they are now (database, WAL, journal) to ``dest``; the copy's
    database path (what a gateway restarted there would open)."""
    for suffix in ("", "-wal", ".journal"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            shutil.copyfile(source, dest / f"{path.name}{suffix}")
    return dest / path.name


def hold(store: SQLiteStore, amount: float = 2.0) -> Reservation:
    held = store.reserve("alice", amount, SCOPES, None)
    assert isinstance(held, Reservation)
    return held


async def created_lines(store: SQLiteStore) -> list[str]:
    return [r["task_id"] for r in await store.audit_records() if r["event"] == "created"]


async def empty_state(path: Path) -> None:
    """Make the state at ``path``: the schema, and an empty journal."""
    store = SQLiteStore(str(path))
    await store.open()
    await store.aclose()


async def usage_after_restart(path: Path, *users: str) -> list[tuple[float, float]]:
    """Each user's (spent, held) on 2026-12-01, as a store opened again on ``path`` reads it."""
    store = SQLiteStore(str(path))
    await store.open()
    try:
        return [store.usage(f"user:{user}", "2026-12-01") for user in users]
    finally:
        await store.aclose()


async def test_creates_acknowledged_before_a_sigkill_are_replayed_on_restart(
    tmp_path: Path,
) -> None:
    """A process killed with SIGKILL after its creates returned, before SQLite had any of them:
    the next start finds every owner, hold and audit line, once, and again after a restart."""
    path = str(tmp_path / "state.sqlite3")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        path,
        "5",
        env=child_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"created\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for _ in range(2):  # a second start replays nothing twice
        store = SQLiteStore(path)
        await store.open()
        try:
            for i in range(5):
                record = await store.lookup(f"t{i}")
                assert record is not None
                assert (record.user, record.settled) == ("alice", False)
            assert store.in_flight("alice") == 5
            assert store.usage("user:alice", "2026-12-01") == (0.0, 10.0)
            assert await created_lines(store) == [f"t{i}" for i in range(5)]
        finally:
            await store.aclose()


async def test_a_create_is_in_a_copy_of_the_state_taken_when_acommit_returns(
    tmp_path: Path,
) -> None:
    """The files as they are the moment acommit returns (the database, its WAL, the journal)
    hold the create: a store opened on a copy of them finds it."""
    path = tmp_path / "state.sqlite3"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        store.audit("created", "alice", "t0")
        await store.acommit(hold(store), "t0", "k1", NB, None)
        (tmp_path / "copy").mkdir()
        copy = copy_state(path, tmp_path / "copy")
    finally:
        await store.aclose()
    again = SQLiteStore(str(copy))
    await again.open()
    try:
        record = await again.lookup("t0")
        assert record is not None
        assert record.user == "alice"
        assert await created_lines(again) == ["t0"]
    finally:
        await again.aclose()


async def test_journalled_creates_reach_sqlite_behind_and_a_clean_close_empties_the_journal(
    tmp_path: Path,
) -> None:
    """Journalled writes reach SQLite behind (a read sees them), marked applied, and closing
    leaves an empty journal."""
    path = tmp_path / "state.sqlite3"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        for n in range(3):
            await store.acommit(hold(store), f"t{n}", "k1", NB, None)
        rows = await store._writer.call(
            lambda conn: (
                conn.execute("SELECT task_id FROM tasks ORDER BY task_id").fetchall(),
                conn.execute("SELECT seq FROM journal_applied").fetchall(),
            )
        )
        assert rows == ([("t0",), ("t1",), ("t2",)], [(3,)])
    finally:
        await store.aclose()
    assert (tmp_path / "state.sqlite3.journal").stat().st_size == 0


async def test_a_record_cut_short_by_a_crash_ends_the_replay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole record is replayed; a damaged last one (its create was never answered) is not."""
    path = tmp_path / "state.sqlite3"
    await empty_state(path)
    journal = Journal(f"{path}.journal")
    journal.append([("INSERT INTO ledger VALUES (?, ?, ?)", ("user:alice", "2026-12-01", 3.0))])
    journal.append([("INSERT INTO ledger VALUES (?, ?, ?)", ("user:bob", "2026-12-01", 4.0))])
    journal.close()
    data = (tmp_path / "state.sqlite3.journal").read_bytes()
    (tmp_path / "state.sqlite3.journal").write_bytes(data[:-5])  # the second record, torn
    caplog.set_level(logging.WARNING, "ruxa_async")
    assert await usage_after_restart(path, "alice", "bob") == [(3.0, 0.0), (0.0, 0.0)]
    assert "damaged record" in caplog.text


async def test_a_journal_written_by_an_earlier_version_replays(tmp_path: Path) -> None:
    """Records an earlier version appended (its writes a tuple of pairs, not a list) replay
    alongside this version's."""
    path = tmp_path / "state.sqlite3"
    await empty_state(path)
    upsert = "INSERT INTO ledger VALUES (?, ?, ?)"
    payload = marshal.dumps((1, ((upsert, ("user:alice", "2026-12-01", 3.0)),)), 4)
    head = struct.pack("<II", len(payload), zlib.crc32(payload))
    (tmp_path / "state.sqlite3.journal").write_bytes(head + payload)
    journal = Journal(f"{path}.journal")
    journal.last = 1
    journal.append([(upsert, ("user:bob", "2026-12-01", 4.0))])
    journal.close()
    assert await usage_after_restart(path, "alice", "bob") == [(3.0, 0.0), (4.0, 0.0)]


async def test_a_second_process_cannot_open_a_state_in_use(tmp_path: Path) -> None:
    """One journal, one writer: a second store on the same file while the first runs is refused
    with a message that says what to do."""
    path = str(tmp_path / "state.sqlite3")
    store = SQLiteStore(path)
    await store.open()
    try:
        with pytest.raises(ConfigurationError, match="in use by another gateway"):
            await SQLiteStore(path).open()
    finally:
        await store.aclose()
    again = SQLiteStore(path)  # free again once the first has closed
    await again.open()
    await again.aclose()


async def test_a_replay_that_fails_keeps_the_journal(tmp_path: Path) -> None:
    """A journal SQLite refuses to take stops the start with the error and stays as it was,
    so nothing acknowledged is thrown away."""
    path = tmp_path / "state.sqlite3"
    journal = Journal(f"{path}.journal")
    journal.append([("INSERT INTO no_such_table VALUES (?)", (1,))])
    journal.close()
    before = (tmp_path / "state.sqlite3.journal").read_bytes()
    with pytest.raises(sqlite3.OperationalError):
        await SQLiteStore(str(path)).open()
    assert (tmp_path / "state.sqlite3.journal").read_bytes() == before


async def test_the_journal_is_emptied_as_it_grows_once_sqlite_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its size limit, the journal starts again empty at an append when every record before
    is committed; what it then holds is only what SQLite may not have."""
    monkeypatch.setattr(_state_journal, "_EMPTY_AFTER", 2_000)
    path = tmp_path / "state.sqlite3"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        for n in range(40):
            await store.acommit(hold(store, 0.0), f"t{n}", "k1", NB, None)
            if n % 10 == 9:
                await store.flush()  # committed: the next append past the limit empties it
        size = (tmp_path / "state.sqlite3.journal").stat().st_size
        assert 0 < size < 6_000  # 40 records, never emptied: about 10 kB
    finally:
        await store.aclose()
    again = SQLiteStore(str(path))
    await again.open()
    try:
        assert again.in_flight("alice") == 40
    finally:
        await again.aclose()


async def test_a_new_state_has_small_pages_and_an_old_state_keeps_its_own(
    tmp_path: Path,
) -> None:
    """A new state file is made with 2 KiB pages (a create's random-id index leaf is half the
    WAL bytes); a file made before, with SQLite's 4 KiB, keeps them and takes creates."""
    old = tmp_path / "old.sqlite3"
    with sqlite3.connect(old) as db:
        db.execute("PRAGMA page_size=4096")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE before (x INTEGER)")
    db.close()
    for path, size in ((tmp_path / "new.sqlite3", 2048), (old, 4096)):
        store = SQLiteStore(str(path))
        await store.open()
        try:
            await store.acommit(hold(store), "t0", "k1", NB, None)
            rows = await store._writer.call(
                lambda conn: (
                    conn.execute("PRAGMA page_size").fetchone(),
                    conn.execute("SELECT task_id FROM tasks").fetchall(),
                )
            )
        finally:
            await store.aclose()
        assert rows == ((size,), [("t0",)])
