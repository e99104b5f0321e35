"""RedisCoordinator against a real redis-server: shared limits, idempotency, callbacks, outages."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
from redis import asyncio as aioredis

from ruxa_async import (
    Job,
    PollPolicy,
    ProgressEvent,
    RateLimits,
    RetryPolicy,
    RuxaClient,
    TaskFailedError,
    TaskInfo,
    TaskState,
)
from ruxa_async._coordinator import AmbiguousCreateError, CreditBudgetExceededError
from ruxa_async.redis import RedisCoordinator
from ruxa_async.testing import FakeRuxa, ModelBehavior, RateLimit, SimConfig
from tests.conftest import FAST_POLL, FAST_RETRY
from tests.services import RedisServer

NB = "google/nano-banana"


def _ns() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def fleet(
    fake: FakeRuxa, redis_url: str, size: int, *, namespace: str | None = None, **options: object
) -> AsyncIterator[list[RuxaClient]]:
    """``size`` clients, each with its own RedisCoordinator (as separate processes would be)."""
    namespace = namespace or _ns()
    coordinator_options = {k: options.pop(k) for k in ("max_credits", "timeout") if k in options}
    options.setdefault("poll", FAST_POLL)
    options.setdefault("retry", FAST_RETRY)
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(size):
            coordinator = RedisCoordinator(redis_url, namespace=namespace, **coordinator_options)  # type: ignore[arg-type]
            client = RuxaClient(
                fake.api_key,
                base_url=fake.url,
                coordinator=coordinator,
                **options,  # type: ignore[arg-type]
            )
            clients.append(await stack.enter_async_context(client))
        yield clients


def jobs(count: int, tag: str) -> list[Job]:
    return [Job(model=NB, input={"prompt": f"{tag} {i}"}, key=f"{tag}-{i}") for i in range(count)]


async def test_fleet_of_clients_shares_one_limit(redis_url: str) -> None:
    """Four clients with unknown limits stay near the account's shared create limit."""
    config = SimConfig(
        seed=3,
        create_limit=RateLimit(per_second=40, burst=5),
        default_behavior=ModelBehavior(median_seconds=0.05, sigma=0.1),
    )
    async with FakeRuxa(config) as fake, fleet(fake, redis_url, 4) as clients:
        reports = await asyncio.gather(
            *(c.run_batch(jobs(30, f"w{i}")) for i, c in enumerate(clients))
        )
        stats = fake.stats()
        assert all(o.ok for r in reports for o in r.outcomes)
        assert stats.tasks_created == 120
        assert stats.duplicate_creates == 0
        # a shared slow start and gate: a handful of 429s, not one storm per process
        assert stats.rate_limited_create <= 12
        fleet_stats = clients[0].statistics().coordinator
        assert fleet_stats is not None
        assert fleet_stats.shared
        assert fleet_stats.leases > 0


async def test_one_429_pauses_every_process(redis_url: str) -> None:
    """A 429 seen by one client closes the gate the other clients wait at."""
    config = SimConfig(seed=3, create_limit=RateLimit(per_second=1, burst=1))
    async with FakeRuxa(config) as fake, fleet(fake, redis_url, 2) as (a, b):
        await a.create_task(NB, {"prompt": "one"})
        await a.create_task(NB, {"prompt": "two"})  # 429, Retry-After 1 s, then succeeds
        assert fake.stats().rate_limited_create >= 1
        assert b.statistics().coordinator.fleet_pauses >= 1  # type: ignore[union-attr]
        await b.create_task(NB, {"prompt": "three"})
        assert fake.stats().early_requests == 0


async def test_same_key_twice_in_two_processes_creates_once(redis_url: str) -> None:
    """Every job submitted by two clients with the same idempotency key is created once."""
    async with FakeRuxa(SimConfig(seed=5)) as fake, fleet(fake, redis_url, 2) as (a, b):

        async def run(client: RuxaClient, i: int) -> TaskInfo:
            return await client.generate(NB, {"prompt": f"job {i}"}, idempotency_key=f"job-{i}")

        results = await asyncio.gather(*(run(c, i) for i in range(25) for c in (a, b)))
        assert len({info.task_id for info in results}) == 25
        assert fake.stats().tasks_created == 25
        assert fake.stats().duplicate_creates == 0
        attached = sum(c.statistics().coordinator.attached for c in (a, b))  # type: ignore[union-attr]
        assert attached >= 1


async def test_claim_of_a_dead_creator_follows_the_ambiguous_policy(redis_url: str) -> None:
    """A key whose creator died after sending is ambiguous: 'raise' refuses to create again."""
    namespace = _ns()
    # A slow reply must not count as a Redis outage (the coordinators would then decide
    # locally): no timeout of their own here, the test's timeout bounds every call.
    patient = 60.0
    dead = RedisCoordinator(redis_url, namespace=namespace, heartbeat=0.05, timeout=patient)
    await dead.start()
    assert (await dead.claim("k")).status == "owner"
    await dead.mark_sending("k")
    await dead.claim("unsent")
    await dead.aclose()  # its heartbeat key goes: the owner is gone
    redis = aioredis.Redis.from_url(redis_url)
    try:
        assert [key async for key in redis.scan_iter(match=f"{namespace}*alive*")] == []
    finally:
        await redis.aclose()
    async with FakeRuxa(SimConfig(seed=5)) as fake:
        strict = RetryPolicy(ambiguous_creates="raise", initial_delay=0.01, max_delay=0.05)
        options = {"namespace": namespace, "timeout": patient}
        async with fleet(fake, redis_url, 1, retry=strict, **options) as (c,):
            with pytest.raises(AmbiguousCreateError):
                await c.submit(NB, {"prompt": "k"}, idempotency_key="k")
            handle = await c.submit(NB, {"prompt": "unsent"}, idempotency_key="unsent")
            assert (await handle).succeeded  # claimed but never sent: safe to take over
            assert c.statistics().coordinator.degraded_events == 0  # type: ignore[union-attr]
        async with fleet(fake, redis_url, 1, **options) as (c,):
            handle = await c.submit(NB, {"prompt": "k"}, idempotency_key="k")  # 'retry'
            assert (await handle).succeeded
            assert c.statistics().coordinator.degraded_events == 0  # type: ignore[union-attr]
        assert fake.stats().tasks_created == 2


async def test_callback_received_by_another_process_resolves_the_task(redis_url: str) -> None:
    """A callback fed to one client resolves the handle another client awaits, with no query."""
    slow = ModelBehavior(median_seconds=600.0, sigma=0.0)
    quiet = PollPolicy(first_check=300.0, callback_grace=300.0)
    sim = FakeRuxa(SimConfig(seed=5, default_behavior=slow))
    async with sim as fake, fleet(fake, redis_url, 2, poll=quiet) as (worker, web):
        handle = await worker.submit(NB, {"prompt": "x"}, callback_url="http://web/cb")
        info = TaskInfo(task_id=handle.task_id, state=TaskState.SUCCESS, result_urls=("u",))
        assert web.feed_callback(info) is False  # not tracked here: goes to the fleet
        done = await handle.wait(10)
        assert done.result_urls == ("u",)
        assert fake.stats().queries == 0
        assert worker.statistics().coordinator.callbacks_received >= 1  # type: ignore[union-attr]


async def test_a_burst_of_callbacks_reaches_the_awaiting_process(redis_url: str) -> None:
    """Fifty callbacks fed at once to one client all resolve the handles another awaits."""
    slow = ModelBehavior(median_seconds=600.0, sigma=0.0)
    quiet = PollPolicy(first_check=300.0, callback_grace=300.0)
    sim = FakeRuxa(SimConfig(seed=5, default_behavior=slow))
    async with sim as fake, fleet(fake, redis_url, 2, poll=quiet) as (worker, web):
        handles = [
            await worker.submit(NB, {"prompt": f"x{i}"}, callback_url="http://web/cb")
            for i in range(50)
        ]
        for handle in handles:
            info = TaskInfo(task_id=handle.task_id, state=TaskState.SUCCESS, result_urls=("u",))
            assert web.feed_callback(info) is False
        done = await asyncio.gather(*(handle.wait(10) for handle in handles))
        assert all(info.result_urls == ("u",) for info in done)
        assert fake.stats().queries == 0
        assert worker.statistics().coordinator.callbacks_received == 50  # type: ignore[union-attr]


async def test_a_callback_published_before_the_task_is_tracked_resolves_it(
    redis_url: str,
) -> None:
    """A fleet callback that beats the awaiting process's create reply is held, not dropped."""
    slow = ModelBehavior(median_seconds=600.0, sigma=0.0)
    quiet = PollPolicy(first_check=300.0, callback_grace=300.0)
    namespace = _ns()
    coordinator = RedisCoordinator(redis_url, namespace=namespace)
    heard = asyncio.Event()
    sim = FakeRuxa(SimConfig(seed=5, default_behavior=slow))
    async with sim as fake, fleet(fake, redis_url, 1, namespace=namespace, poll=quiet) as (web,):
        async with RuxaClient(fake.api_key, base_url=fake.url, poll=quiet) as creator:
            task_id = (await creator.submit(NB, {"prompt": "x"})).task_id
        worker = RuxaClient(fake.api_key, base_url=fake.url, poll=quiet, coordinator=coordinator)
        async with worker:
            coordinator.add_callback_handler(lambda _: heard.set())  # after the worker's own
            info = TaskInfo(task_id=task_id, state=TaskState.SUCCESS, result_urls=("u",))
            assert web.feed_callback(info) is False  # tracked nowhere yet: goes to the fleet
            await heard.wait()  # the worker heard it before it knew the task id
            handle = worker.attach(task_id)
            assert handle.done()  # resolved from the held callback, with no query
            assert (await handle).result_urls == ("u",)
            assert worker.statistics().scheduler.resolved_by_callback == 1
            assert fake.stats().queries == 0


async def test_credit_budget_is_shared_by_the_fleet(redis_url: str) -> None:
    """max_credits caps the fleet's spend: two clients together stop at the budget."""
    sim = FakeRuxa(SimConfig(seed=5))
    async with sim as fake, fleet(fake, redis_url, 2, max_credits=10.0) as (a, b):
        spent = 0
        for i in range(6):
            client = (a, b)[i % 2]
            try:
                await client.create_task(NB, {"prompt": f"p{i}"})
                spent += 1
            except CreditBudgetExceededError:
                break
        from ruxa_async.catalog import estimate_cost

        price = estimate_cost(NB) or 0.0
        assert price > 0
        assert spent == int(10.0 // price)
        assert fake.stats().tasks_created == spent
        report = await a.run_batch(jobs(3, "late"))
        assert report.stop_reason is not None
        assert fake.stats().tasks_created == spent


async def test_a_failed_task_gives_its_reserved_credits_back(redis_url: str) -> None:
    """Credits reserved at create are refunded when the task fails; a success stays spent."""
    pro = "google/nano-banana-pro"
    models = {
        NB: ModelBehavior(median_seconds=0.02, sigma=0.0, fail_rate=1.0),
        pro: ModelBehavior(median_seconds=0.02, sigma=0.0),
    }
    from ruxa_async.catalog import estimate_cost

    cheap, dear = estimate_cost(NB), estimate_cost(pro)
    assert cheap is not None
    assert dear is not None
    budget = 2 * dear + cheap / 2  # two dear tasks fit, a third does not
    sim = FakeRuxa(SimConfig(seed=5, models=models))
    async with sim as fake, fleet(fake, redis_url, 2, max_credits=budget) as (a, b):
        failures = int(budget // cheap) + 3  # more than the budget holds, were nothing refunded
        for i in range(failures):
            with pytest.raises(TaskFailedError):
                await (a, b)[i % 2].generate(NB, {"prompt": f"p{i}"})
        assert fake.stats().tasks_created == failures
        for i in range(2):
            assert (await (a, b)[i].generate(pro, {"prompt": f"dear {i}"})).succeeded
        with pytest.raises(CreditBudgetExceededError):
            await a.generate(pro, {"prompt": "one too many"})
        assert fake.stats().tasks_created == failures + 2
        stats = [c.statistics().coordinator for c in (a, b)]
        assert sum(s.credits_reserved for s in stats if s) == failures * cheap + 2 * dear
        assert sum(s.credits_refunded for s in stats if s) >= (failures - 2) * cheap


async def test_redis_outage_degrades_to_local_limits(
    redis_service: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Killing Redis mid-batch: the batch finishes, every job one outcome, degraded time counted."""
    config = SimConfig(seed=9, default_behavior=ModelBehavior(median_seconds=0.1, sigma=0.1))
    caplog.set_level(logging.WARNING, logger="ruxa_async")
    async with FakeRuxa(config) as fake, fleet(fake, redis_url, 2) as (a, b):
        submitted = 0
        enough = asyncio.Event()

        def count(event: ProgressEvent) -> None:
            nonlocal submitted
            submitted += event.kind == "submitted"
            if submitted >= 20:
                enough.set()

        batch = [
            asyncio.ensure_future(c.run_batch(jobs(60, f"o{i}"), on_event=count))
            for i, c in enumerate((a, b))
        ]
        await enough.wait()
        redis_service.stop()
        reports = await asyncio.gather(*batch)
        outcomes = [o for r in reports for o in r.outcomes]
        assert len(outcomes) == 120
        assert all(o.ok for o in outcomes)
        assert fake.stats().tasks_created == 120
        stats = a.statistics().coordinator
        assert stats is not None
        assert stats.degraded_events >= 1
        assert stats.degraded_seconds > 0
        assert any("unreachable" in r.getMessage() for r in caplog.records)
    redis_service.start()


async def test_a_429_while_redis_is_down_starts_an_episode(
    redis_service: RedisServer, redis_url: str
) -> None:
    """Degraded, a 429 seen after the fleet's last episode still lowers the pace, once."""
    coordinator = RedisCoordinator(redis_url, namespace=_ns(), heartbeat=0.05)
    async with coordinator:
        state = coordinator.rate_state
        assert await state.begin_episode("create", 0)  # the fleet's first episode, in Redis
        assert not await state.begin_episode("create", 0)  # the same one, from another 429
        redis_service.stop()
        assert await state.begin_episode("create", 1)  # degraded: a new episode ...
        assert not await state.begin_episode("create", 1)  # ... begun once
        assert coordinator.statistics().degraded
        back = asyncio.Event()
        coordinator._store.on_recovered.append(back.set)
        redis_service.start()  # an empty Redis: its counter is behind this process's
        await back.wait()
        assert await state.begin_episode("create", 2)
        assert not await state.begin_episode("create", 2)


async def test_coordinator_recovers_when_redis_returns(
    redis_service: RedisServer, redis_url: str
) -> None:
    """After a restart the coordinator leaves degraded mode by itself."""
    coordinator = RedisCoordinator(redis_url, namespace=_ns(), heartbeat=0.05)
    async with coordinator:
        redis_service.stop()
        assert (await coordinator.claim("a")).status == "owner"  # local fallback, no hang
        assert coordinator.statistics().degraded
        back = asyncio.Event()
        coordinator._store.on_recovered.append(back.set)
        redis_service.start()
        await back.wait()
        assert (await coordinator.claim("b")).status == "owner"
        assert coordinator.statistics().degraded_events == 1


async def test_rate_limits_configured_are_fleet_ceilings(redis_url: str) -> None:
    """A configured create rate is shared: two clients together do not exceed it."""
    config = SimConfig(seed=3, create_limit=RateLimit(per_second=20, burst=4))
    limits = RateLimits(create_per_second=20, create_burst=4)
    async with FakeRuxa(config) as fake, fleet(fake, redis_url, 2, rate_limits=limits) as cs:
        await asyncio.gather(*(c.run_batch(jobs(20, f"c{i}")) for i, c in enumerate(cs)))
        assert fake.stats().tasks_created == 40
        assert fake.stats().rate_limited_create <= 2
