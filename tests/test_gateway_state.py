"""Gateway state across restarts, mounting into an app, alerts, and running without Prometheus."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from ruxa_async import InsufficientCreditsError, NotFoundError, RuxaClient
from ruxa_async.gateway import AlertSettings, Gateway, Policy
from ruxa_async.gateway._alerts import SpendWatch
from ruxa_async.gateway._store import Reservation, Scope, SQLiteStore, TaskRecord
from ruxa_async.testing import FakeRuxa, ModelBehavior, SimConfig
from tests.conftest import FAST_POLL
from tests.helpers_gateway import NB, PROMPT, TOKENS, config_for, raw, running, user_client
from tests.test_gateway_state_journal import copy_state


async def test_ownership_and_spend_survive_a_restart(tmp_path: Path) -> None:
    """With a state file, a restarted gateway still knows owners, ledgers and open tasks."""
    slow = SimConfig(seed=21, default_behavior=ModelBehavior(median_seconds=60, sigma=0))
    async with FakeRuxa(slow) as sim:
        config = config_for(
            sim, policy=Policy(budget=12.0), state_path=str(tmp_path / "state.sqlite3")
        )
        async with running(config) as gw, user_client(gw, TOKENS["alice"]) as alice:
            first = await alice.create_task(NB, PROMPT)
            await alice.create_task(NB, PROMPT)
        async with running(config) as gw:
            assert gw.store.in_flight("alice") == 2
            async with user_client(gw, TOKENS["alice"]) as alice:
                assert (await alice.get_task(first)).task_id == first
                await alice.create_task(NB, PROMPT)
                with pytest.raises(InsufficientCreditsError):
                    await alice.create_task(NB, PROMPT)
            async with user_client(gw, TOKENS["bob"]) as bob:
                with pytest.raises(NotFoundError):
                    await bob.get_task(first)
    with sqlite3.connect(tmp_path / "state.sqlite3") as db, pytest.raises(sqlite3.DatabaseError):
        db.execute("DELETE FROM audit")


class CountingStore(SQLiteStore):
    """The default store, counting how often the gateway asks it who owns a task."""

    lookups = 0

    async def lookup(self, task_id: str) -> TaskRecord | None:
        self.lookups += 1
        return await super().lookup(task_id)


async def test_ownership_is_read_from_the_store_once_per_task(tmp_path: Path) -> None:
    """Queries of a task are answered from the ownership cache; a restarted gateway asks once."""
    slow = SimConfig(seed=22, default_behavior=ModelBehavior(median_seconds=60, sigma=0))
    async with FakeRuxa(slow) as sim:
        config = config_for(sim, state_path=str(tmp_path / "state.sqlite3"))
        store = CountingStore(config.state_path)
        async with running(config, store=store) as gw, user_client(gw, TOKENS["alice"]) as alice:
            task_id = await alice.create_task(NB, PROMPT)
            for _ in range(3):
                await alice.get_task(task_id)
            assert store.lookups == 0
        again = CountingStore(config.state_path)
        async with running(config, store=again) as gw:
            async with user_client(gw, TOKENS["bob"]) as bob:
                for _ in range(2):
                    with pytest.raises(NotFoundError):
                        await bob.get_task(task_id)
            async with user_client(gw, TOKENS["alice"]) as alice:
                assert (await alice.get_task(task_id)).task_id == task_id
            assert again.lookups == 1
        assert sim.stats().queries == 4


async def test_the_gateway_mounts_into_an_existing_aiohttp_app() -> None:
    """mount(app, prefix) serves Ruxa's API under the prefix beside the app's own routes."""
    async with FakeRuxa(SimConfig(seed=22)) as sim:
        gw = Gateway(config_for(sim))
        app = web.Application()

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text="app")

        app.router.add_get("/hello", hello)
        gw.mount(app, prefix="/ruxa")
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            base = f"http://127.0.0.1:{runner.addresses[0][1]}"
            async with RuxaClient(
                TOKENS["alice"], base_url=base + "/ruxa", poll=FAST_POLL
            ) as alice:
                assert (await alice.generate(NB, PROMPT, timeout=20)).succeeded
            async with aiohttp.ClientSession() as http, http.get(base + "/hello") as resp:
                assert await resp.text() == "app"
        finally:
            await runner.cleanup()
    assert sim.stats().tasks_created == 1


async def test_budget_thresholds_alert_once_each() -> None:
    """Crossing 80 %, 95 % and 100 % of a budget alerts once per threshold and window."""
    async with FakeRuxa(SimConfig(seed=23)) as sim:
        config = config_for(sim, per_user={"alice": Policy(budget=20.0)})
        async with running(config) as gw, user_client(gw, TOKENS["alice"]) as alice:
            for _ in range(5):
                await alice.create_task(NB, PROMPT)
            with pytest.raises(InsufficientCreditsError):
                await alice.create_task(NB, PROMPT)
            sent = [a for a in gw.alerter.sent if a["event"] == "budget_threshold"]
    assert [a["threshold"] for a in sent] == [0.8, 0.95, 1.0]
    assert {a["scope"] for a in sent} == {"user:alice"}


def test_a_spend_jump_above_the_users_baseline_alerts() -> None:
    """Steady spend builds a baseline; a burst far above it is flagged once."""
    now = [0.0]
    watch = SpendWatch(
        AlertSettings(spend_jump_factor=5.0, spend_jump_min_credits=20.0), lambda: now[0]
    )
    for _ in range(12):  # an hour of 8 credits per 5 minutes
        assert watch.add("alice", 8.0) is None
        now[0] += 300.0
    assert watch.add("alice", 30.0) is None  # 30 < 5 x baseline
    jump = watch.add("alice", 20.0)
    assert jump is not None
    assert jump[0] == 50.0
    assert 7.0 < jump[1] < 9.0
    assert watch.add("alice", 100.0) is None  # once an hour


async def test_the_gateway_runs_without_prometheus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus-client, /metrics says how to get it and everything else works."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    async with (
        FakeRuxa(SimConfig(seed=24)) as sim,
        running(config_for(sim)) as gw,
        user_client(gw, TOKENS["alice"]) as alice,
        aiohttp.ClientSession() as http,
    ):
        await alice.create_task(NB, PROMPT)
        status, envelope, _ = await raw(http, "GET", f"{gw.url}/metrics")
    assert status == 404
    assert "prometheus" in envelope["message"]


async def test_a_created_task_is_in_the_state_file_before_its_id_is_returned(
    tmp_path: Path,
) -> None:
    """The owner of a created task (and its audit line) is durable before the reply: a copy of
    the state's files (database, WAL, journal) taken then holds them."""
    path = tmp_path / "state.sqlite3"
    copy = tmp_path / "copy"
    copy.mkdir()
    slow = SimConfig(seed=23, default_behavior=ModelBehavior(median_seconds=60, sigma=0))
    async with FakeRuxa(slow) as sim, running(config_for(sim, state_path=str(path))) as gw:
        replies = [
            await gw.create(f"Bearer {TOKENS[user]}", {"model": NB, "input": PROMPT})
            for user in ("alice", "bob")
        ]
        snapshot = copy_state(path, copy)  # no await since the replies
    store = SQLiteStore(str(snapshot))  # what a restart there would find
    await store.open()
    try:
        owners = {r.task_id: r.user for r in store.open_tasks()}
        audited = {r["task_id"] for r in await store.audit_records() if r["event"] == "created"}
    finally:
        await store.aclose()
    ids = [reply.data["taskId"] for reply in replies]
    assert owners == {ids[0]: "alice", ids[1]: "bob"}
    assert audited == set(ids)


async def test_writes_sharing_one_transaction_all_land_in_order(tmp_path: Path) -> None:
    """150 creates, settlements and charges gathered into one batch: every task row, every audit
    line in the order written, and back-to-back upserts of one ledger all reach the state file."""
    path = tmp_path / "state.sqlite3"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        scopes = (Scope("user:alice", "2026-11-30", None),)
        records = []
        for n in range(150):
            held = store.reserve("alice", 1.0, scopes, None)
            assert isinstance(held, Reservation)
            store.audit("created", "alice", f"t{n:03d}", n=n)
            records.append(store.commit(held, f"t{n:03d}", "k1", NB, None))
        for record in records[:3]:
            store.settle(record.task_id, 2.0, "success")
        for _ in range(2):  # charged twice in a row: two upserts of one ledger, back to back
            ambiguous = store.reserve("alice", 1.0, scopes, None)
            assert isinstance(ambiguous, Reservation)
            store.release(ambiguous, charge=True)
        last = store.reserve("alice", 1.0, scopes, None)
        assert isinstance(last, Reservation)
        await store.acommit(last, "last", "k1", NB, None)
    finally:
        await store.aclose()
    with sqlite3.connect(path) as db:
        tasks = db.execute("SELECT task_id, user, settled FROM tasks ORDER BY task_id").fetchall()
        lines = [row[0] for row in db.execute("SELECT task_id FROM audit ORDER BY id")]
        spent = db.execute("SELECT spent FROM ledger").fetchall()
    assert len(tasks) == 151
    assert all(user == "alice" for _, user, _ in tasks)
    assert [task_id for task_id, _, settled in tasks if settled] == ["t000", "t001", "t002"]
    assert lines == [f"t{n:03d}" for n in range(150)]
    assert spent == [(8.0,)]


async def test_a_create_whose_transaction_fails_is_still_answered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch that SQLite refuses is logged and rolled back; the create waiting for it returns
    (its record lives in memory) instead of waiting forever."""
    path = tmp_path / "state.sqlite3"
    store = SQLiteStore(str(path))
    await store.open()
    try:
        with sqlite3.connect(path) as db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON tasks BEGIN SELECT RAISE(ABORT, 'no'); END"
            )
        scopes = (Scope("user:alice", "2026-11-30", None),)
        one, two = (store.reserve("alice", 1.0, scopes, None) for _ in range(2))
        assert isinstance(one, Reservation)
        assert isinstance(two, Reservation)
        first = store.commit(one, "t1", "k1", NB, None)
        store.claim_relay(first, "generating")  # another statement between the two inserts
        second = await store.acommit(two, "t2", "k1", NB, None)
        assert second.user == "alice"
        assert await store.lookup("t2") is second
    finally:
        await store.aclose()
    assert "a write batch failed" in caplog.text
