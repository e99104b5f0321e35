"""Idempotency keys without a coordinator: deduplicated within one process."""

from __future__ import annotations

import asyncio

import pytest

from ruxa_async import AmbiguousCreateError, RetryPolicy, RuxaClient, ServerError, ValidationError
from ruxa_async.testing import FakeRuxa, Faults, SimConfig
from tests.conftest import FAST_POLL, FAST_RETRY, make_client

NB = "google/nano-banana"


async def test_same_key_in_one_process_creates_once(fake: FakeRuxa) -> None:
    """Concurrent and later submits with one key share one task; no coordinator is involved."""
    async with RuxaClient(fake.api_key, base_url=fake.url, poll=FAST_POLL, retry=FAST_RETRY) as c:
        first, second = await asyncio.gather(
            c.submit(NB, {"prompt": "a"}, idempotency_key="same"),
            c.submit(NB, {"prompt": "a"}, idempotency_key="same"),
        )
        third = await c.submit(NB, {"prompt": "a"}, idempotency_key="same")
        assert first.task_id == second.task_id == third.task_id
        assert fake.stats().tasks_created == 1
        assert c.statistics().coordinator is None


async def test_an_ambiguous_create_is_not_repeated_under_raise() -> None:
    """A create that may have created a task leaves its key ambiguous: the next submit refuses."""
    config = SimConfig(seed=2, faults=Faults(error_500_after_create=1.0))
    strict = RetryPolicy(ambiguous_creates="raise", initial_delay=0.01, max_delay=0.05)
    async with FakeRuxa(config) as fake, make_client(fake, retry=strict) as client:
        with pytest.raises(ServerError):
            await client.submit(NB, {"prompt": "x"}, idempotency_key="k")
        with pytest.raises(AmbiguousCreateError):
            await client.submit(NB, {"prompt": "x"}, idempotency_key="k")
        assert fake.stats().tasks_created == 1


async def test_a_refused_create_frees_its_key(fake: FakeRuxa) -> None:
    """A create the service refused (422) created nothing: the key may be used again."""
    async with make_client(fake) as client:
        with pytest.raises(ValidationError):
            await client.submit("no/such-model", {"prompt": "x"}, idempotency_key="k")
        handle = await client.submit(NB, {"prompt": "x"}, idempotency_key="k")
        assert (await handle).succeeded
