"""Outages shared through Redis: clients with their own RedisCoordinator, as processes would be.

Against the simulator's outage switch and a real ``redis-server``; counts come
from the simulator (``outage_requests``) and the clients' ``statistics()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from ruxa_async import OutagePolicy, RuxaClient
from ruxa_async.redis import RedisCoordinator
from ruxa_async.testing import FakeRuxa, ModelBehavior, SimConfig
from tests.conftest import FAST_POLL, FAST_RETRY
from tests.services import redis_server

NB = "google/nano-banana"
STEP = 0.2  # probe_initial = probe_max: the fleet's probes are at least this far apart
POLICY = OutagePolicy(probe_initial=STEP, probe_max=STEP, max_outage=60.0)
QUICK = SimConfig(seed=5, default_behavior=ModelBehavior(median_seconds=0.1, sigma=0.1))


@asynccontextmanager
async def fleet(
    sim: FakeRuxa, redis_url: str, size: int, **coordinator: float
) -> AsyncIterator[list[RuxaClient]]:
    """``size`` clients of ``sim``, each with its own RedisCoordinator on one namespace."""
    namespace = f"o{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(size):
            client = RuxaClient(
                sim.api_key,
                base_url=sim.url,
                poll=FAST_POLL,
                retry=FAST_RETRY,
                outage=POLICY,
                coordinator=RedisCoordinator(redis_url, namespace=namespace, **coordinator),
            )
            clients.append(await stack.enter_async_context(client))
        yield clients


async def until(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds: for counters that offer no event (the per-test
    timeout bounds the wait)."""
    while True:
        if condition():
            return
        await asyncio.sleep(0.01)


def degraded(client: RuxaClient) -> bool:
    stats = client.statistics().coordinator
    assert stats is not None
    return stats.degraded


def probes(*clients: RuxaClient) -> int:
    return sum(c.statistics().outage.probes for c in clients)


async def test_one_process_pauses_the_fleet_and_one_probe_at_a_time_checks(
    redis_url: str,
) -> None:
    """a's outage pauses b and c; a and b waiting send one probe per step; all three resume."""
    async with FakeRuxa(QUICK) as sim, fleet(sim, redis_url, 3) as (a, b, c):
        ids = [await x.create_task(NB, {"prompt": f"p{i}"}) for i, x in enumerate((a, b, c))]
        await sim.outage("drop")
        waiting_a = asyncio.ensure_future(a.get_task(ids[0]))
        await until(lambda: b.statistics().outage.down and c.statistics().outage.down)
        for idle in (b, c):  # told by a: they sent nothing since their create
            assert idle.statistics().outage.fleet_closes == 1
            assert idle.statistics().requests_sent == 1
        waiting_b = asyncio.ensure_future(b.get_task(ids[1]))

        await until(lambda: probes(a, b) >= 2)
        sim_before, probes_before, started = (
            sim.stats().outage_requests,
            probes(a, b),
            time.monotonic(),
        )
        await until(lambda: probes(a, b) >= probes_before + 10)
        sim_during = sim.stats().outage_requests - sim_before
        probes_during = probes(a, b) - probes_before
        elapsed = time.monotonic() - started
        # one probe per STEP for the whole fleet (two uncoordinated clients: two per STEP)
        assert probes_during <= elapsed / STEP + 2
        assert sim_during <= 2 * probes_during + 2  # aiohttp may re-send a dropped GET once

        await sim.restore()
        infos = await asyncio.gather(waiting_a, waiting_b)
        assert [info.task_id for info in infos] == ids[:2]
        await until(lambda: not c.statistics().outage.down)  # c never probed: a or b told it
        assert (c.statistics().outage.probes, c.statistics().outage.fleet_reopens) == (0, 1)
        assert c.statistics().requests_sent == 1
        assert (await c.get_task(ids[2])).task_id == ids[2]
        assert sim.stats().duplicate_creates == 0


@pytest.mark.parametrize("failure", ["killed", "hung"])
async def test_redis_failing_during_an_outage_degrades_to_the_local_gate(
    failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis dies (or hangs) while the service is down: each client probes alone, then resumes."""
    caplog.set_level(logging.WARNING, logger="ruxa_async")
    with redis_server() as redis:
        async with FakeRuxa(QUICK) as sim, fleet(sim, redis.url, 2, timeout=0.5) as clients:
            tasks = [await c.create_task(NB, {"prompt": f"k{i}"}) for i, c in enumerate(clients)]
            await sim.outage("refuse")
            waiting = [asyncio.ensure_future(c.get_task(t)) for c, t in zip(clients, tasks)]
            await until(lambda: all(c.statistics().outage.down for c in clients))
            if failure == "killed":
                redis.stop()
            else:  # every Redis call must end at its timeout, never hang
                assert redis.proc is not None
                os.kill(redis.proc.pid, signal.SIGSTOP)
            await until(lambda: all(degraded(c) for c in clients))
            before = [c.statistics().outage.probes for c in clients]
            await until(
                lambda: all(c.statistics().outage.probes > n for c, n in zip(clients, before))
            )
            await sim.restore()
            infos = await asyncio.gather(*waiting)
            assert [i.task_id for i in infos] == tasks
            assert all(c.statistics().outage.down is False for c in clients)
    said = [r.getMessage() for r in caplog.records]
    unreachable = [m for m in said if m.startswith("Redis at") and "unreachable" in m]
    assert len(unreachable) == 2  # once per coordinator, however many calls failed
