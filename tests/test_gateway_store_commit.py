"""The SQLite store's WAL under many creates, and the create path's JSON shortcuts."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from ruxa_async import InvalidInputError
from ruxa_async._jsoncodec import json_loads
from ruxa_async._wire import build_create_body
from ruxa_async.gateway._policy import Reply, envelope_bytes
from ruxa_async.gateway._store import Reservation, Scope, SQLiteStore

NB = "google/nano-banana"
SCOPES = (Scope("user:alice", "2026-12-01", None),)


def hold(store: SQLiteStore) -> Reservation:
    held = store.reserve("alice", 1.0, SCOPES, None)
    assert isinstance(held, Reservation)
    return held


async def test_the_write_ahead_log_is_checkpointed_as_creates_commit(tmp_path: Path) -> None:
    """The writer's thread checkpoints as it commits, so the WAL file stays small however many
    creates are made one by one."""
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
