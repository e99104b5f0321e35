"""Shared fixtures: a simulator over loopback and a client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from ruxa_async import PollPolicy, RetryPolicy, RuxaClient
from ruxa_async.testing import FakeRuxa, SimConfig
from tests.services import RedisServer, redis_server

FAST_POLL = PollPolicy(first_check=0.05, min_interval=0.05, max_interval=0.5, jitter=0.1)
FAST_RETRY = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_time=20.0)


def make_client(fake: FakeRuxa, **options: Any) -> RuxaClient:
    """A client for ``fake`` with fast polling and retries unless overridden."""
    options.setdefault("poll", FAST_POLL)
    options.setdefault("retry", FAST_RETRY)
    return RuxaClient(options.pop("api_key", fake.api_key), base_url=fake.url, **options)


@pytest.fixture
async def fake() -> AsyncIterator[FakeRuxa]:
    """A fresh simulator with default (fast) behaviour and a fixed seed."""
    async with FakeRuxa(SimConfig(seed=7)) as sim:
        yield sim


@pytest.fixture
async def client(fake: FakeRuxa) -> AsyncIterator[RuxaClient]:
    """A client talking to the ``fake`` simulator."""
    async with make_client(fake) as c:
        yield c


@pytest.fixture(scope="session")
def redis_service() -> Iterator[RedisServer]:
    """One real ``redis-server`` for the session (tests use their own namespaces or DB keys)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_service: RedisServer) -> str:
    """The session's Redis, flushed before the test; restarted first if a test killed it."""
    if redis_service.proc is None or redis_service.proc.poll() is not None:
        redis_service.start()
    import redis as redis_sync  # the `redis` extra, part of `.[test]`

    conn = redis_sync.Redis.from_url(redis_service.url)
    try:
        conn.flushall()
    finally:
        conn.close()
    return redis_service.url
