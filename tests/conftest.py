"""Shared fixtures: a simulator over loopback and a client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ruxa_async import PollPolicy, RetryPolicy, RuxaClient
from ruxa_async.testing import FakeRuxa, SimConfig

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
