"""How the SQLite store commits a create's record, and the create path's JSON shortcuts."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from ruxa_async import InvalidInputError
from ruxa_async._jsoncodec import json_loads
from ruxa_async._wire import build_create_body
from ruxa_async.gateway._policy import Reply, envelope_bytes
from ruxa_async.gateway._sqlite_writer import SqliteWriter
from ruxa_async.gateway._store import Reservation, Scope, SQLiteStore

NB = "google/nano-banana"
SCOPES = (Scope("user:alice", "2026-12-01", None),)


class CountingWriter(SqliteWriter):
    """The store's writer, counting its transactions."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.transactions = 0

    def _commit(self, conn: Any, batch: list[Any]) -> None:
        self.transactions += 1
        super()._commit(conn, batch)


def counting_store(path: Path) -> tuple[SQLiteStore, CountingWriter]:
    store = SQLiteStore(str(path))
    writer = store._writer = CountingWriter(str(path))
    return store, writer


def hold(store: SQLiteStore) -> Reservation:
    held = store.reserve("alice", 1.0, SCOPES, None)
    assert isinstance(held, Reservation)
    return held


async def test_a_create_waits_for_the_others_on_their_way_and_shares_their_commit(
    tmp_path: Path,
) -> None:
    """Creates reserved together are committed in one transaction, none before its own record
    is written, and each returns only once its record is in the file."""
    store, writer = counting_store(tmp_path / "state.sqlite3")
    await store.open()
    try:
        held = [hold(store) for _ in range(3)]
        before = writer.transactions
        first = asyncio.ensure_future(store.acommit(held[0], "t0", "k1", NB, None))
        second = asyncio.ensure_future(store.acommit(held[1], "t1", "k1", NB, None))
        await asyncio.sleep(0)
        assert not first.done()  # the third is still on its way
        assert not second.done()
        await store.acommit(held[2], "t2", "k1", NB, None)
        await asyncio.gather(first, second)
        assert writer.transactions - before == 1
        rows = await store._writer.call(
            lambda conn: conn.execute("SELECT task_id FROM tasks ORDER BY task_id").fetchall()
        )
        assert rows == [("t0",), ("t1",), ("t2",)]
    finally:
        await store.aclose()


async def test_a_create_whose_companion_fails_is_committed_without_it(tmp_path: Path) -> None:
    """A reservation released (its create failed) no longer holds back the others' commit."""
    store, writer = counting_store(tmp_path / "state.sqlite3")
    await store.open()
    try:
        mine, failing = hold(store), hold(store)
        waiting = asyncio.ensure_future(store.acommit(mine, "t0", "k1", NB, None))
        await asyncio.sleep(0)
        assert not waiting.done()
        store.release(failing, charge=False)
        await waiting
        assert store.in_flight("alice") == 1
        assert writer.transactions == 1
    finally:
        await store.aclose()


async def test_a_lone_create_is_committed_at_once(tmp_path: Path) -> None:
    """With no other create on its way, a create's record is committed before acommit
    returns, without waiting for a later loop turn."""
    path = tmp_path / "state.sqlite3"
    store, writer = counting_store(path)
    await store.open()
    try:
        store.audit("created", "alice", "t0")
        await store.acommit(hold(store), "t0", "k1", NB, None)
        assert writer.transactions == 1
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT user FROM tasks").fetchall() == [("alice",)]
            assert db.execute("SELECT task_id FROM audit").fetchall() == [("t0",)]
    finally:
        await store.aclose()


async def test_the_write_ahead_log_is_checkpointed_as_creates_commit(tmp_path: Path) -> None:
    """Commits made in the event loop never checkpoint there; the writer's thread does, so the
    WAL file stays small however many creates commit one by one."""
    path = tmp_path / "state.sqlite3"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        for n in range(1500):
            store.audit("created", "alice", f"t{n}")
            await store.acommit(hold(store), f"t{n}", "k1", NB, None)
            if n % 100 == 99:
                await store.flush()  # a read: lets the thread's checkpoints keep pace
        wal = await asyncio.to_thread(os.path.getsize, f"{path}-wal")
    finally:
        await store.aclose()
    assert wal < 10_000_000  # without checkpoints: 32 MB (1,500 commits of 5 pages of 4 KiB)


@pytest.mark.parametrize(
    "task_id", ["task_000000001", 'a"b\\c', "é-ü-\u2028", "\x00\x1f", "t" * 200]
)
def test_a_created_reply_is_the_envelope_the_encoder_writes(task_id: str) -> None:
    """The create's reply, put together around the task id, is byte for byte the encoded
    envelope."""
    reply = Reply.created(task_id)
    assert reply.body() == envelope_bytes(200, "success", {"taskId": task_id})
    assert reply == Reply(200, "success", {"taskId": task_id})


@pytest.mark.parametrize(
    "data",
    [
        b'{"model": "m", "input": {"prompt": "\xc3\xa9"}}',
        b'  {"a": 1}',
        b'{"a": 1} ',
        b'{"a": 1} x',
        b'{"a": "\xff"}',
        b'{"a": "\xed\xa0\x80"}',
        '{"a": "é"}'.encode("utf-16"),
        '{"a": 1}'.encode("utf-16-le"),
        b"\xef\xbb\xbf" + b'{"a": 1}',
        b"[1, 2]",
        b"",
        b"{",
        b"{}",
        b'{"a": NaN}',
    ],
)
def test_the_quick_loads_reads_what_json_loads_reads(data: bytes) -> None:
    """json_loads gives json.loads's value, or an error of the same type."""
    try:
        expected: Any = json.loads(data)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            json_loads(data)
        return
    got = json_loads(data)
    assert got == expected or (got != got and expected != expected)


def test_a_create_body_refuses_what_json_cannot_carry() -> None:
    """NaN and a reference cycle in the input are refused with InvalidInputError (nothing is
    sent), as bytes are; a plain input encodes as before."""
    cyclic: dict[str, Any] = {"prompt": "p"}
    cyclic["self"] = cyclic
    for bad in ({"strength": float("nan")}, cyclic, {"image": b"\x00"}):
        with pytest.raises(InvalidInputError):
            build_create_body(NB, bad)
    assert (
        build_create_body(NB, {"prompt": "é"}, "https://cb")
        == (
            '{"model":"google/nano-banana","callBackUrl":"https://cb","input":{"prompt":"é"}}'
        ).encode()
    )
