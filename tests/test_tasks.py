"""Stopping background loops for good, even when a cancellation gets lost."""

from __future__ import annotations

import asyncio
import uuid

from ruxa_async._tasks import stop
from ruxa_async.redis import RedisCoordinator


async def test_stop_ends_a_task_that_swallows_its_first_cancellation() -> None:
    """A loop that carries on after one cancellation is cancelled again until it ends."""
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()  # as a library's timeout that swallows a cancellation does

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)  # let it start waiting
    await stop([task])
    assert swallowed.is_set()
    assert task.cancelled()


async def test_stop_ends_a_loop_whose_wait_for_returned_instead_of_cancelling() -> None:
    """The cancellation arrives as wait_for's operation completes (Python 3.11 loses it)."""
    answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.Event()

    async def loop() -> None:
        while True:
            waiting.set()
            await asyncio.wait_for(answer, 5)
            await asyncio.sleep(0.01)

    task = asyncio.get_running_loop().create_task(loop())
    await waiting.wait()
    answer.set_result(None)  # done, its waiter not yet woken: the cancel below races it
    await stop([task])
    assert task.cancelled()


async def test_redis_coordinator_closes_when_its_heartbeat_loses_the_cancellation(
    redis_url: str,
) -> None:
    """The coordinator's close cancels its heartbeat while a Redis reply is arriving."""
    coordinator = RedisCoordinator(
        redis_url, namespace=f"tasks-{uuid.uuid4().hex[:8]}", heartbeat=0.01
    )
    answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    in_flight = asyncio.Event()
    async with coordinator:
        store = coordinator._store

        async def beat(*, probe: bool = False) -> None:
            in_flight.set()
            await store.call(lambda: answer, probe=probe)  # a reply the test delivers

        coordinator._beat = beat  # type: ignore[method-assign]
        await in_flight.wait()
        heartbeat = coordinator._tasks[0]
        answer.set_result(None)  # the reply is in, the heartbeat not yet resumed ...
        # ... when close cancels it; a guard so that a lost cancellation fails, not hangs
        await asyncio.wait_for(coordinator.aclose(), 30)
        assert heartbeat.cancelled()
