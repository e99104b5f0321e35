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


ODD_DETAILS: list[dict[str, Any]] = [
    {"model": NB, "key": "k1", "reserved": 0.5},
    {"model": NB, "key": "k1", "reserved": 1},  # equal to 1.0 and True, written otherwise
    {"model": NB, "key": "k1", "reserved": True},
    {"model": NB, "key": "k1", "reserved": 1.0},
    {"model": NB, "key": "k1", "reserved": -0.0},  # equal to 0.0, written otherwise
    {"model": NB, "key": "k1", "reserved": 0.0},
    {"model": NB, "key": "k1", "reserved": float("nan")},
    {"model": NB, "key": "k1", "reserved": float("inf")},
    {"reserved": 0.5, "model": NB, "key": "k1"},  # another order: keys are sorted alike
    {"code": 429, "reason": "in_flight"},
    {"error": 'a"b\\c\n\u2028é', "task": None},
    {"ids": (1, 2.0), "nested": {"b": 1, "a": [True, None]}},
    {},
]


@pytest.mark.parametrize("rounds", [1, 2])
def test_an_audit_detail_is_written_as_json_with_sorted_keys_even_when_remembered(
    rounds: int,
) -> None:
    """The remembered JSON of an audit line's detail is what encoding it anew writes, for
    every detail in any order (equal values of other types never share one)."""
    from ruxa_async.gateway._store import _detail_text

    for _ in range(rounds):
        for detail in ODD_DETAILS + ODD_DETAILS[::-1]:
            assert _detail_text(dict(detail)) == json.dumps(detail, sort_keys=True)


@pytest.mark.parametrize("callback_url", [None, "https://example.com/hook?a=1"])
async def test_a_created_task_reads_back_from_sqlite_with_or_without_callback_url(
    tmp_path: Path, callback_url: str | None
) -> None:
    """A task created with or without a callback URL (two statements) is read back whole from
    SQLite after a restart."""
    path = str(tmp_path / "state.sqlite3")
    store = SQLiteStore(path, clock=lambda: 1000.5)
    await store.open()
    try:
        await store.acommit(hold(store), "t1", "k1", NB, callback_url)
    finally:
        await store.aclose()
    again = SQLiteStore(path)
    await again.open()
    try:
        record = await again.lookup("t1")
    finally:
        await again.aclose()
    assert record is not None
    assert (record.user, record.key, record.model, record.created, record.reserved) == (
        "alice",
        "k1",
        NB,
        1000.5,
        1.0,
    )
    assert (record.scopes, record.callback_url, record.settled) == (
        (("user:alice", "2026-12-01"),),
        callback_url,
        False,
    )


def test_a_reservations_ledgers_are_its_own_when_scope_tuples_come_and_go() -> None:
    """Ledgers remembered by the scope tuple's identity are never another tuple's, even when
    tuples are dropped and new ones made (their ids may be reused)."""
    from ruxa_async.gateway._store import _ledger_keys

    for n in range(300):
        scopes = (Scope(f"user:u{n}", "2026-12-01", None), Scope(f"token:t{n}", "life", 5.0))
        keys, text = _ledger_keys(scopes)
        assert keys == ((f"user:u{n}", "2026-12-01"), (f"token:t{n}", "life"))
        assert json.loads(text) == [list(k) for k in keys]
        assert _ledger_keys(scopes) == (keys, text)
        del scopes
