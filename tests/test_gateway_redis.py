"""Several gateways sharing one state through a real Redis, in front of one simulator."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import pytest
import redis as redis_sync

from ruxa_async import InsufficientCreditsError
from ruxa_async.gateway import (
    AlertSettings,
    Gateway,
    GatewayConfig,
    Policy,
    RedisStore,
    SQLiteStore,
    StateSettings,
    parse_config,
)
from ruxa_async.gateway._gateway import store_for
from ruxa_async.gateway._policy import Denial, window_bounds
from ruxa_async.gateway._redis_fleet import RedisFleet
from ruxa_async.gateway._redis_writer import GatewayRedis, Layout
from ruxa_async.gateway._store import Reservation, Scope
from ruxa_async.testing import CallbackDelivery, FakeRuxa, Faults, ModelBehavior, SimConfig
from tests.helpers_gateway import (
    NB,
    PROMPT,
    SORA,
    TOKENS,
    config_for,
    eventually,
    raw,
    running,
    user_client,
)
from tests.helpers_proc import ROOT, child_env, cli, run_cli
from tests.services import RedisServer, free_port
from tests.test_gateway_keys import alert_inbox


def shared(sim: FakeRuxa, redis_url: str, **overrides: object) -> GatewayConfig:
    """A gateway config whose state lives in the test's Redis."""
    return config_for(sim, state=StateSettings(redis_url=redis_url, timeout=0.5), **overrides)


@asynccontextmanager
async def two_gateways(config: GatewayConfig) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Two gateway instances with the same config, each on its own port."""
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(running(config))
        second = await stack.enter_async_context(running(config))
        assert isinstance(first.store, RedisStore)
        assert isinstance(second.store, RedisStore)
        yield first, second


def store(gw: Gateway) -> RedisStore:
    assert isinstance(gw.store, RedisStore)
    return gw.store


def start_gateway(*args: str) -> subprocess.Popen[str]:
    """``ruxa-async gateway --simulate --port 0 ARGS``, stderr piped."""
    return subprocess.Popen(
        cli("gateway", "--simulate", "--port", "0", *args),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=child_env(),
        cwd=ROOT,
    )


@pytest.fixture
async def sim() -> AsyncIterator[FakeRuxa]:
    async with FakeRuxa(SimConfig(seed=5)) as fake:
        yield fake


async def test_ownership_is_shared_between_instances(sim: FakeRuxa, redis_url: str) -> None:
    """A task created through one instance: its owner reads it through the other, Bob gets 404."""
    sim.reconfigure(default_behavior=ModelBehavior(median_seconds=30, sigma=0))
    async with two_gateways(shared(sim, redis_url)) as (one, two):
        async with user_client(one, TOKENS["alice"]) as alice:
            task_id = await alice.create_task(NB, PROMPT)
        async with aiohttp.ClientSession() as http:
            mine = await raw(
                http, "GET", f"{two.url}/api/v1/tasks/query/{task_id}", token=TOKENS["alice"]
            )
            theirs = await raw(
                http, "GET", f"{two.url}/api/v1/tasks/query/{task_id}", token=TOKENS["bob"]
            )
            unknown = await raw(
                http, "GET", f"{two.url}/api/v1/tasks/query/task_x_1_abc", token=TOKENS["bob"]
            )
        assert mine[0] == 200
        assert mine[1]["data"]["taskId"] == task_id
        assert theirs[0] == unknown[0] == 404
        assert theirs[1] == unknown[1]
        events = [(r["event"], r["user"]) for r in await store(two).audit_records()]
        assert ("created", "alice") in events
        assert ("ownership_refused", "bob") in events


async def test_budget_holds_across_instances_under_concurrency(redis_url: str) -> None:
    """40 concurrent video creates, half through each instance, against 10 videos: exactly 10."""
    slow = SimConfig(seed=1, models={SORA: ModelBehavior(median_seconds=30, sigma=0)})
    async with FakeRuxa(slow) as sim:
        config = shared(sim, redis_url, policy=Policy(budget=10 * 10.0))
        async with (
            two_gateways(config) as (one, two),
            user_client(one, TOKENS["alice"]) as via_one,
            user_client(two, TOKENS["alice"]) as via_two,
        ):
            results = await asyncio.gather(
                *(
                    (via_one if i % 2 else via_two).create_task(SORA, {"prompt": f"video {i}"})
                    for i in range(40)
                ),
                return_exceptions=True,
            )
        created = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if isinstance(r, InsufficientCreditsError)]
        assert (len(created), len(refused)) == (10, 30)
        assert "budget of 100 credits" in refused[0].message
        assert sim.stats().tasks_created == 10


async def test_in_flight_cap_holds_across_instances(sim: FakeRuxa, redis_url: str) -> None:
    """max_in_flight=3 admits 3 of 12 concurrent creates split over two instances; 429s say why."""
    sim.reconfigure(default_behavior=ModelBehavior(median_seconds=30, sigma=0))
    config = shared(sim, redis_url, per_user={"alice": Policy(max_in_flight=3)})
    body = {"model": NB, "input": PROMPT}
    async with two_gateways(config) as (one, two), aiohttp.ClientSession() as http:
        replies = await asyncio.gather(
            *(
                raw(http, "POST", f"{gw.url}/api/v1/tasks/create", token=TOKENS["alice"], body=body)
                for gw in [one, two] * 6
            )
        )
    statuses = sorted(status for status, _, _ in replies)
    assert statuses == [200] * 3 + [429] * 9
    limited = [(envelope, headers) for status, envelope, headers in replies if status == 429]
    assert all("in flight" in envelope["message"] for envelope, _ in limited)
    assert all(int(headers["Retry-After"]) >= 1 for _, headers in limited)
    assert sim.stats().tasks_created == 3


async def test_the_create_rate_holds_across_instances(sim: FakeRuxa, redis_url: str) -> None:
    """A burst of 3 creates is shared: 8 concurrent creates over two instances admit 3."""
    sim.reconfigure(default_behavior=ModelBehavior(median_seconds=30, sigma=0))
    policy = Policy(requests_per_second=0.01, burst=3)  # each instance alone would admit 3
    body = {"model": NB, "input": PROMPT}
    async with two_gateways(shared(sim, redis_url, policy=policy)) as (one, two):
        async with aiohttp.ClientSession() as http:
            replies = await asyncio.gather(
                *(
                    raw(
                        http,
                        "POST",
                        f"{gw.url}/api/v1/tasks/create",
                        token=TOKENS["alice"],
                        body=body,
                    )
                    for gw in [one, two] * 4
                )
            )
        assert sorted(status for status, _, _ in replies) == [200] * 3 + [429] * 5
        assert all(float(headers["Retry-After"]) >= 1 for s, _, headers in replies if s == 429)
        assert one.statistics().denials["rate"] + two.statistics().denials["rate"] == 5
    assert sim.stats().tasks_created == 3


async def test_a_task_settles_once_whichever_instance_sees_it_end(
    sim: FakeRuxa, redis_url: str
) -> None:
    """Created on one instance, finished through both: charged once, the budget exact after."""
    sim.reconfigure(
        default_behavior=ModelBehavior(median_seconds=0.05, sigma=0),
        callbacks=CallbackDelivery(drop=1.0),  # both instances learn the end by querying
    )
    config = shared(sim, redis_url, policy=Policy(budget=2 * 4.0))
    async with (
        two_gateways(config) as (one, two),
        user_client(one, TOKENS["alice"]) as via_one,
        user_client(two, TOKENS["alice"]) as via_two,
    ):
        first = await via_one.create_task(NB, PROMPT)
        assert (await via_two.wait(first, timeout=20)).succeeded
        await via_one.wait(first, timeout=20)  # the creating instance sees the end as well
        await store(one).flush()
        await store(two).flush()
        ledger = ("user:alice", window_bounds("day", time.time())[0])
        assert store(one).usage(*ledger) == (0.0, 4.0)  # as of its own reservation
        await store(one).maintain()
        assert store(one).usage(*ledger) == (4.0, 0.0)  # what statistics() show, refreshed
        await via_two.create_task(NB, PROMPT)  # 4 spent + 4 held = the whole budget
        with pytest.raises(InsufficientCreditsError, match="4 spent, 4 held"):
            await via_one.create_task(NB, PROMPT)
    assert sim.stats().tasks_created == 2


async def test_redis_outage_fails_closed_and_service_resumes(
    sim: FakeRuxa, redis_url: str, redis_service: RedisServer
) -> None:
    """Redis killed: creates get 503 and nothing is created; once it is back, creates work."""
    sim.reconfigure(default_behavior=ModelBehavior(median_seconds=30, sigma=0))
    async with two_gateways(shared(sim, redis_url)) as (one, two), aiohttp.ClientSession() as http:
        body = {"model": NB, "input": PROMPT}
        created = await raw(
            http, "POST", f"{one.url}/api/v1/tasks/create", token=TOKENS["alice"], body=body
        )
        task_id = created[1]["data"]["taskId"]
        redis_service.stop()
        try:
            for gw in (one, two, one, two):
                status, envelope, headers = await raw(
                    http, "POST", f"{gw.url}/api/v1/tasks/create", token=TOKENS["alice"], body=body
                )
                assert (status, envelope["code"]) == (503, 503)
                assert "Redis" in envelope["message"]
                assert "nothing was created" in envelope["message"]
                assert int(headers["Retry-After"]) >= 1
            elsewhere = await raw(
                http, "GET", f"{two.url}/api/v1/tasks/query/{task_id}", token=TOKENS["alice"]
            )
            assert elsewhere[0] == 503
            assert "Redis" in elsewhere[1]["message"]
            at_home = await raw(
                http, "GET", f"{one.url}/api/v1/tasks/query/{task_id}", token=TOKENS["alice"]
            )
            assert at_home[0] == 200  # the creating instance still knows its own task
            assert sim.stats().tasks_created == 1
        finally:
            redis_service.start()
        await asyncio.gather(store(one).wait_available(), store(two).wait_available())
        for gw in (one, two):
            status, envelope, _ = await raw(
                http, "POST", f"{gw.url}/api/v1/tasks/create", token=TOKENS["alice"], body=body
            )
            assert status == 200, envelope
        assert sim.stats().tasks_created == 3


async def test_a_reservation_left_by_a_dead_gateway_is_booked_as_spent(redis_url: str) -> None:
    """A hold never committed nor released is charged after hold_seconds; a late release is moot."""
    now = [1_000_000.0]
    budget = [Scope("user:u", "p", 8.0)]
    async with contextlib.AsyncExitStack() as stack:
        dead = RedisStore(redis_url, hold_seconds=60, clock=lambda: now[0])
        await dead.open()
        stack.push_async_callback(dead.aclose)
        orphan = await dead.areserve("u", 4.0, budget, None)
        assert isinstance(orphan, Reservation)
        now[0] += 61
        alive = RedisStore(redis_url, hold_seconds=60, clock=lambda: now[0])
        await alive.open()
        stack.push_async_callback(alive.aclose)
        await alive.maintain()
        dead.release(orphan, charge=False)  # too late: the reaper booked it
        await dead.flush()
        held = await alive.areserve("u", 4.0, budget, max_in_flight=1)
        assert isinstance(held, Reservation)
        assert alive.usage("user:u", "p") == (4.0, 4.0)
        assert alive.in_flight("u") == 1
        capped = await alive.areserve("u", 0.0, budget, max_in_flight=1)
        assert isinstance(capped, Denial)
        assert capped.code == 429
        over = await alive.areserve("u", 4.0, budget, None)
        assert isinstance(over, Denial)
        assert over.code == 402
        assert "4 spent, 4 held" in over.message
        # the instance that reaped booked the spend; the one that reserved it, nothing
        assert (dict(alive.spent_here), dict(dead.spent_here)) == ({"u": 4.0}, {})


async def test_a_task_record_reads_back_whole_on_another_instance(redis_url: str) -> None:
    """Owner, key, model, reservation, callback, settlement and relayed states round-trip."""
    budget = [Scope("user:u", "p", None)]
    async with contextlib.AsyncExitStack() as stack:
        writer, reader = RedisStore(redis_url), RedisStore(redis_url)
        for store_ in (writer, reader):
            await store_.open()
            stack.push_async_callback(store_.aclose)
        held = await writer.areserve("u", 2.5, budget, None)
        assert isinstance(held, Reservation)
        made = await writer.acommit(held, "t1", "key2", NB, "https://app.example/hook")
        assert (await reader.lookup("t1")) == made
        assert writer.claim_relay(made, "success")
        assert not writer.claim_relay(made, "success")
        final = {"taskId": "t1", "state": "success", "resultJson": "{}"}
        writer.settle("t1", 2.0, "success", final)
        await writer.flush()
        seen = RedisStore(redis_url)  # a third instance, nothing in memory
        await seen.open()
        stack.push_async_callback(seen.aclose)
        record = await seen.lookup("t1")
        assert record is not None
        assert (record.user, record.key, record.model, record.reserved) == ("u", "key2", NB, 2.5)
        assert record.callback_url == "https://app.example/hook"
        assert (record.settled, record.cost, record.state, record.final) == (
            True,
            2.0,
            "success",
            final,
        )
        assert record.relayed == {"success"}
        assert await seen.lookup("t2") is None
        assert seen.open_tasks() == []


async def test_open_tasks_of_a_dead_gateway_are_adopted_and_settled_ones_forgotten(
    redis_url: str,
) -> None:
    """Upkeep: an hour-old open task nobody settles is swept here; one settled elsewhere is not."""
    now = [1_000_000.0]
    budget = [Scope("user:u", "p", None)]
    async with contextlib.AsyncExitStack() as stack:
        dead, alive = (RedisStore(redis_url, clock=lambda: now[0]) for _ in range(2))
        for store_ in (dead, alive):
            await store_.open()
            stack.push_async_callback(store_.aclose)
        for task_id in ("orphan", "finished"):
            held = await dead.areserve("u", 1.0, budget, None)
            assert isinstance(held, Reservation)
            await dead.acommit(held, task_id, "key1", NB, None)
        now[0] += 60
        finished = await alive.lookup("finished")
        assert finished is not None
        alive.settle("finished", 1.0, "success")
        await alive.flush()
        await dead.maintain()
        assert [r.task_id for r in dead.open_tasks()] == ["orphan"]
        await alive.maintain()
        assert alive.open_tasks() == []  # the orphan is too young to be anyone's but its maker's
        now[0] += 3600
        await alive.maintain()
        assert [r.task_id for r in alive.open_tasks()] == ["orphan"]


async def test_a_reservation_whose_caller_left_is_given_back(redis_url: str) -> None:
    """A create cancelled while its reservation script runs does not keep the budget held."""
    budget = [Scope("user:u", "p", 4.0)]
    async with RedisStore(redis_url) as store_:
        pending = asyncio.ensure_future(store_.areserve("u", 4.0, budget, max_in_flight=1))
        await asyncio.sleep(0)  # the script is on its way
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending

        async def room_again() -> bool:
            held = await store_.areserve("u", 4.0, budget, max_in_flight=1)
            return isinstance(held, Reservation)

        await eventually(room_again)
        assert store_.usage("user:u", "p") == (0.0, 4.0)


def test_state_table_names_the_redis_url_by_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """[state] redis_url_env reads the URL from the environment and keeps it out of repr."""
    monkeypatch.setenv("GW_REDIS", "redis://:hunter2@127.0.0.1:6390/2")
    config = parse_config({"state": {"redis_url_env": "GW_REDIS", "namespace": "shop"}})
    assert config.state.redis_url == "redis://:hunter2@127.0.0.1:6390/2"
    assert config.state.namespace == "shop"
    assert "hunter2" not in repr(config)
    assert isinstance(store_for(config), RedisStore)
    assert isinstance(store_for(parse_config({})), SQLiteStore)


async def test_the_command_line_shares_state_through_redis(redis_url: str) -> None:
    """`gateway --redis URL` keeps ownership in that Redis; an unreachable one exits 3 at once."""
    proc = start_gateway("--redis", redis_url)
    try:
        assert proc.stderr is not None
        first = await asyncio.to_thread(proc.stderr.readline)
        assert first.startswith("ruxa-async gateway on "), first
        url = first.split()[-1]
        async with aiohttp.ClientSession() as http:
            _, login, _ = await raw(http, "POST", f"{url}/demo/login", body={"user": "ann"})
            token = login["data"]["token"]
            status, envelope, _ = await raw(
                http,
                "POST",
                f"{url}/api/v1/tasks/create",
                token=token,
                body={"model": NB, "input": PROMPT},
            )
        assert status == 200, envelope
        conn = redis_sync.Redis.from_url(redis_url)
        try:
            owner = conn.hget(f"ruxa-gateway:task:{envelope['data']['taskId']}", "user")
        finally:
            conn.close()
        assert owner == b"demo:ann"
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        assert proc.stderr is not None
        proc.stderr.close()
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    done = await asyncio.to_thread(
        run_cli, "gateway", "--simulate", "--port", "0", "--redis", nowhere, key=None
    )
    assert done.returncode == 3
    assert "cannot reach Redis" in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_hung_redis_costs_one_timeout_then_503s_never_a_hang(
    sim: FakeRuxa, redis_url: str, redis_service: RedisServer
) -> None:
    """Redis stopped (SIGSTOP, no answers): creates get 503 within the timeout; SIGCONT resumes."""
    assert redis_service.proc is not None
    async with two_gateways(shared(sim, redis_url)) as (one, _), aiohttp.ClientSession() as http:
        url = f"{one.url}/api/v1/tasks/create"
        body = {"model": NB, "input": PROMPT}
        redis_service.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(3):
                status, envelope, _ = await raw(http, "POST", url, token=TOKENS["alice"], body=body)
                assert status == 503, envelope
            assert not store(one).available
            assert sim.stats().tasks_created == 0
        finally:
            redis_service.proc.send_signal(signal.SIGCONT)
        await store(one).wait_available()
        status, envelope, _ = await raw(http, "POST", url, token=TOKENS["alice"], body=body)
        assert status == 200, envelope
        assert sim.stats().tasks_created == 1


async def test_a_corrupt_key_fails_one_user_not_the_gateway(sim: FakeRuxa, redis_url: str) -> None:
    """A key of the wrong shape makes Redis refuse that user's script: 503 for them only."""
    conn = redis_sync.Redis.from_url(redis_url)
    try:
        conn.set("ruxa-gateway:inflight:alice", "not a number")
    finally:
        conn.close()
    body = {"model": NB, "input": PROMPT}
    async with running(shared(sim, redis_url)) as gw, aiohttp.ClientSession() as http:
        url = f"{gw.url}/api/v1/tasks/create"
        status, envelope, _ = await raw(http, "POST", url, token=TOKENS["alice"], body=body)
        assert status == 503
        assert "nothing was created" in envelope["message"]
        assert store(gw).available
        assert (await raw(http, "POST", url, token=TOKENS["bob"], body=body))[0] == 200
    assert sim.stats().tasks_created == 1


async def test_a_task_created_as_redis_hangs_is_recorded_when_it_answers(
    sim: FakeRuxa, redis_url: str, redis_service: RedisServer
) -> None:
    """Redis hangs mid-create: the owner still gets the task id; other instances see it later."""
    assert redis_service.proc is not None
    sim.reconfigure(
        default_behavior=ModelBehavior(median_seconds=30, sigma=0),
        faults=Faults(slow_reply=1.0, slow_seconds=1.0),  # the task exists before the reply
    )
    async with two_gateways(shared(sim, redis_url)) as (one, two), aiohttp.ClientSession() as http:
        body = {"model": NB, "input": PROMPT}
        create = asyncio.ensure_future(
            raw(http, "POST", f"{one.url}/api/v1/tasks/create", token=TOKENS["alice"], body=body)
        )
        await eventually(lambda: sim.stats().tasks_created == 1)
        redis_service.proc.send_signal(signal.SIGSTOP)
        try:
            status, envelope, _ = await create
            assert status == 200, envelope
            assert not store(one).available  # its record could not be written at once
            task_id = envelope["data"]["taskId"]
            sim.reconfigure(faults=Faults())
            query = f"/api/v1/tasks/query/{task_id}"
            assert (await raw(http, "GET", one.url + query, token=TOKENS["alice"]))[0] == 200
            assert (await raw(http, "GET", two.url + query, token=TOKENS["alice"]))[0] == 503
        finally:
            redis_service.proc.send_signal(signal.SIGCONT)
        await asyncio.gather(store(one).wait_available(), store(two).wait_available())
        await store(one).flush()
        assert (await raw(http, "GET", two.url + query, token=TOKENS["alice"]))[0] == 200
        assert (await raw(http, "GET", two.url + query, token=TOKENS["bob"]))[0] == 404


async def queries(http: aiohttp.ClientSession, gw: Gateway, task_id: str, n: int) -> list[int]:
    """The statuses of ``n`` concurrent queries of ``task_id`` by alice through ``gw``."""
    url = f"{gw.url}/api/v1/tasks/query/{task_id}"
    replies = await asyncio.gather(
        *(raw(http, "GET", url, token=TOKENS["alice"]) for _ in range(n))
    )
    return sorted(status for status, _, _ in replies)


async def test_the_query_rate_holds_across_instances(sim: FakeRuxa, redis_url: str) -> None:
    """A burst of 4 is shared: 10 concurrent queries on each of two instances admit 4 in all."""
    policy = Policy(requests_per_second=0.01, burst=4)  # each instance alone would admit 4
    async with two_gateways(shared(sim, redis_url, policy=policy)) as (one, two):
        async with aiohttp.ClientSession() as http:
            got = await asyncio.gather(queries(http, one, "t_1", 10), queries(http, two, "t_1", 10))
        statuses = sorted(got[0] + got[1])
        assert statuses == [404] * 4 + [429] * 16  # admitted (an unknown id) or refused
        assert one.statistics().denials["rate"] + two.statistics().denials["rate"] == 16


async def test_leased_query_permits_never_exceed_the_shared_bucket(redis_url: str) -> None:
    """Two instances' leases: 100 queries cost 2 Redis calls; together they admit the burst."""
    frozen = 1_000_000.0
    async with contextlib.AsyncExitStack() as stack:
        fleets = []
        for _ in range(2):
            redis = GatewayRedis(redis_url, namespace="lease-test", timeout=1.0)
            stack.push_async_callback(redis.aclose)
            layout = Layout(redis, keep=60, ledger_ttl=60, hold=60, audit_maxlen=1000)
            fleets.append(RedisFleet(redis, layout, clock=lambda: frozen, monotonic=lambda: 0.0))
        first, second = fleets
        assert first.lease_size(1000.0, 400) == 50
        assert [await first.request("u", 1000.0, 400) for _ in range(100)] == [None] * 100
        assert first.lease_calls == 2
        admitted = 0
        while (denial := await second.request("u", 1000.0, 400)) is None:
            admitted += 1
        assert admitted == 300  # 400 in the bucket, 100 leased by the first instance
        assert (denial.code, denial.reason) == (429, "rate")
        assert await first.request("u", 1000.0, 400) is not None  # its lease is spent too


async def test_while_redis_is_down_queries_keep_each_instances_own_rate(
    sim: FakeRuxa, redis_url: str, redis_service: RedisServer
) -> None:
    """Redis killed: each instance admits its own burst of queries (no 503 for lack of a rate),
    and a budget alert raised meanwhile is still posted without waiting for Redis."""
    sim.reconfigure(default_behavior=ModelBehavior(median_seconds=30, sigma=0))
    runner, hook, received = await alert_inbox()
    policy = Policy(requests_per_second=0.01, burst=4)
    config = shared(sim, redis_url, policy=policy, alerts=AlertSettings(webhook_url=hook))
    try:
        async with two_gateways(config) as (one, two), aiohttp.ClientSession() as http:
            body = {"model": NB, "input": PROMPT}
            url = f"{one.url}/api/v1/tasks/create"
            created = await raw(http, "POST", url, token=TOKENS["alice"], body=body)
            task_id = created[1]["data"]["taskId"]  # one token of each bucket spent
            redis_service.stop()
            try:
                at_one = await queries(http, one, task_id, 6)
                at_two = await queries(http, two, task_id, 6)
                one.alerter.budget("user:alice", "2026-11-30", 9.0, 10.0)  # returns at once
                await one.alerter.idle()
            finally:
                redis_service.start()
        assert at_one == [200] * 3 + [429] * 3  # its own bucket: 4, less the create
        assert at_two == [429] * 2 + [503] * 4  # admitted; the owner is unknown while Redis is away
        assert [(a["event"], a["threshold"]) for a in received] == [("budget_threshold", 0.8)]
    finally:
        await runner.cleanup()


async def test_budget_thresholds_and_a_spend_jump_alert_once_across_instances(
    sim: FakeRuxa, redis_url: str
) -> None:
    """Creates alternate between two instances to the budget: one alert per threshold, and one
    spend-jump alert for the fleet's spend, which neither instance's share reaches alone."""
    sim.reconfigure(default_behavior=ModelBehavior(median_seconds=30, sigma=0))
    runner, hook, received = await alert_inbox()
    alerts = AlertSettings(webhook_url=hook, spend_jump_min_credits=14.0)  # 12 on one, 8 on two
    config = shared(sim, redis_url, policy=Policy(budget=5 * 4.0), alerts=alerts)

    def jumps() -> list[object]:
        return [a["user"] for a in received if a["event"] == "spend_jump"]

    try:
        async with two_gateways(config) as (one, two), aiohttp.ClientSession() as http:
            body = {"model": NB, "input": PROMPT}
            statuses = []
            for gw in (one, two, one, two, one, two):
                url = f"{gw.url}/api/v1/tasks/create"
                statuses.append((await raw(http, "POST", url, token=TOKENS["alice"], body=body))[0])
            await eventually(lambda: bool(jumps()))  # the upkeep adds spend up every 0.25 s
            for gw in (one, two):
                await store(gw).fleet().flush_spend()
            await asyncio.gather(one.alerter.idle(), two.alerter.idle())
        assert statuses == [200] * 5 + [402]
        thresholds = sorted(a["threshold"] for a in received if a["event"] == "budget_threshold")
        assert thresholds == [0.8, 0.95, 1.0]
        assert jumps() == ["alice"]
    finally:
        await runner.cleanup()


async def test_a_hung_redis_never_hangs_a_query_or_an_alert(
    sim: FakeRuxa, redis_url: str, redis_service: RedisServer
) -> None:
    """Redis stopped (SIGSTOP): the owner's queries are answered under the local rate, and a
    budget alert raised meanwhile is posted once its claim has timed out."""
    assert redis_service.proc is not None
    sim.reconfigure(default_behavior=ModelBehavior(median_seconds=30, sigma=0))
    runner, hook, received = await alert_inbox()
    policy = Policy(requests_per_second=0.01, burst=4)
    config = shared(sim, redis_url, policy=policy, alerts=AlertSettings(webhook_url=hook))
    try:
        async with running(config) as gw, aiohttp.ClientSession() as http:
            body = {"model": NB, "input": PROMPT}
            url = f"{gw.url}/api/v1/tasks/create"
            created = await raw(http, "POST", url, token=TOKENS["alice"], body=body)
            task_id = created[1]["data"]["taskId"]
            redis_service.proc.send_signal(signal.SIGSTOP)
            try:
                gw.alerter.budget("user:alice", "2026-11-30", 10.0, 10.0)
                statuses = await queries(http, gw, task_id, 5)
                await gw.alerter.idle()
                assert not store(gw).available
            finally:
                redis_service.proc.send_signal(signal.SIGCONT)
        assert statuses == [200] * 3 + [429] * 2  # the instance's own bucket, less the create
        assert sorted(a["threshold"] for a in received) == [0.8, 0.95, 1.0]
    finally:
        await runner.cleanup()


async def test_each_hooked_write_gets_its_own_reply_whatever_its_neighbours_queue(
    redis_url: str,
) -> None:
    """A write-behind batch mixes writes of one, two or no commands: each hook still gets the
    reply of its own (last) command, and a hook on a refused write gets nothing."""
    from ruxa_async.gateway._redis_writer import WriteBehind

    redis = GatewayRedis(redis_url, namespace="hooks", timeout=2.0)
    got: dict[str, object] = {}
    try:
        writer = WriteBehind(redis)
        writer.queue(lambda pipe: pipe.set("hooks:a", "1").set("hooks:b", "2"))  # two commands
        writer.queue(lambda pipe: pipe.incrby("hooks:n", 5), lambda r: got.__setitem__("n", r))
        writer.queue(lambda pipe: asyncio.sleep(0))  # queues nothing
        writer.queue(
            lambda pipe: pipe.get("hooks:a").incrby("hooks:n", 2),
            lambda r: got.__setitem__("last", r),
        )
        writer.queue(lambda pipe: pipe.incr("hooks:a").lpush("hooks:a", "x"))  # the push fails
        writer.queue(
            lambda pipe: pipe.lpush("hooks:b", "y"), lambda r: got.__setitem__("refused", r)
        )
        assert await writer.drain()
        assert got == {"n": 5, "last": 7}
    finally:
        await redis.aclose()
