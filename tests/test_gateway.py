"""The gateway end to end: a RuxaClient per user, the gateway, the simulator behind it."""

from __future__ import annotations

import asyncio

import aiohttp
import attrs
import pytest

from ruxa_async import (
    APIStatusError,
    AuthenticationError,
    InsufficientCreditsError,
    NotFoundError,
    ValidationError,
)
from ruxa_async.gateway import Policy, mint_token
from ruxa_async.testing import CallbackDelivery, Dialect, FakeRuxa, ModelBehavior, SimConfig
from tests.helpers_gateway import (
    NB,
    PROMPT,
    SECRET,
    SORA,
    TOKENS,
    config_for,
    raw,
    running,
    user_client,
)


@pytest.fixture
async def sim() -> FakeRuxa:
    async with FakeRuxa(SimConfig(seed=3)) as fake:
        yield fake


async def test_a_plain_ruxa_client_works_through_the_gateway(sim: FakeRuxa) -> None:
    """RuxaClient(api_key=<user token>, base_url=<gateway>) generates unchanged."""
    async with running(config_for(sim)) as gw, user_client(gw, TOKENS["alice"]) as client:
        info = await client.generate(NB, PROMPT, timeout=20)
    assert info.succeeded
    assert info.result_urls
    assert sim.stats().tasks_created == 1


async def test_another_users_task_is_the_same_404_as_an_unknown_one(sim: FakeRuxa) -> None:
    """Bob cannot see Alice's task: the same 404 and message as an id nobody created."""
    async with running(config_for(sim)) as gw, aiohttp.ClientSession() as http:
        async with user_client(gw, TOKENS["alice"]) as alice:
            task_id = await alice.create_task(NB, PROMPT)
            assert (await alice.get_task(task_id)).task_id == task_id
        theirs = await raw(
            http, "GET", f"{gw.url}/api/v1/tasks/query/{task_id}", token=TOKENS["bob"]
        )
        unknown = await raw(
            http, "GET", f"{gw.url}/api/v1/tasks/query/task_x_1_abc", token=TOKENS["bob"]
        )
        assert theirs[0] == unknown[0] == 404
        assert theirs[1] == unknown[1]
        async with user_client(gw, TOKENS["bob"]) as bob:
            with pytest.raises(NotFoundError):
                await bob.get_task(task_id)
        records = await gw.store.audit_records()
    refusals = [r for r in records if r["event"] == "ownership_refused"]
    assert refusals
    assert all(r["user"] == "bob" and r["owner"] == "alice" for r in refusals)
    assert gw.statistics().ownership_refusals == 2


async def test_budget_is_reserved_at_create_exactly_under_concurrency() -> None:
    """50 concurrent video creates against a budget of 10 videos create exactly 10 tasks."""
    slow = SimConfig(seed=1, models={SORA: ModelBehavior(median_seconds=30, sigma=0)})
    async with FakeRuxa(slow) as sim:
        price = 10.0  # the catalogue's sora-2 estimate
        policy = Policy(budget=10 * price)
        async with (
            running(config_for(sim, policy=policy)) as gw,
            user_client(gw, TOKENS["alice"]) as alice,
        ):
            results = await asyncio.gather(
                *(alice.create_task(SORA, {"prompt": f"video {i}"}) for i in range(50)),
                return_exceptions=True,
            )
            created = [r for r in results if isinstance(r, str)]
            refused = [r for r in results if isinstance(r, InsufficientCreditsError)]
            assert len(created) == 10
            assert len(refused) == 40
            assert "budget of 100 credits" in refused[0].message
            assert sim.stats().tasks_created == 10
            assert gw.statistics().spend["alice"] == pytest.approx(100.0)
            assert gw.statistics().remaining["alice"] == 0.0


async def test_settled_failure_without_charge_frees_its_reservation() -> None:
    """With charge_failed off and no cost reported, a failed task's reservation comes back."""
    failing = SimConfig(
        seed=1,
        default_behavior=ModelBehavior(median_seconds=0, fail_rate=1.0),
        dialect=Dialect(callback_style="flat"),  # no consumeCredits in the callback
    )
    async with FakeRuxa(failing) as sim:
        config = config_for(sim, policy=Policy(budget=4.0), charge_failed=False)
        async with running(config) as gw, user_client(gw, TOKENS["alice"]) as alice:
            first = await alice.create_task(NB, PROMPT)
            with pytest.raises(InsufficientCreditsError):
                await alice.create_task(NB, PROMPT)
            assert (await alice.get_task(first)).failed
            await alice.create_task(NB, PROMPT)  # the failure's 4 credits came back


async def test_in_flight_cap_answers_429_with_retry_after(sim: FakeRuxa) -> None:
    """With max_in_flight=2 a third task gets 429 + Retry-After; other users are unaffected."""
    sim.reconfigure(default_behavior=ModelBehavior(median_seconds=30, sigma=0))
    config = config_for(sim, per_user={"alice": Policy(max_in_flight=2)})
    async with running(config) as gw, aiohttp.ClientSession() as http:
        url = f"{gw.url}/api/v1/tasks/create"
        body = {"model": NB, "input": PROMPT}
        for _ in range(2):
            assert (await raw(http, "POST", url, token=TOKENS["alice"], body=body))[0] == 200
        status, envelope, headers = await raw(http, "POST", url, token=TOKENS["alice"], body=body)
        assert status == 429
        assert envelope["code"] == 429
        assert "in flight" in envelope["message"]
        assert int(headers["Retry-After"]) >= 1
        assert (await raw(http, "POST", url, token=TOKENS["bob"], body=body))[0] == 200
    assert gw.statistics().denials["in_flight"] == 1


async def test_request_rate_answers_429_with_retry_after(sim: FakeRuxa) -> None:
    """Past the user's burst, requests get 429 with a Retry-After header."""
    config = config_for(sim, policy=Policy(requests_per_second=0.5, burst=3))
    async with running(config) as gw, aiohttp.ClientSession() as http:
        url = f"{gw.url}/api/v1/tasks/query/nothing"
        codes = [(await raw(http, "GET", url, token=TOKENS["alice"]))[0] for _ in range(4)]
        status, envelope, headers = await raw(http, "GET", url, token=TOKENS["alice"])
    assert codes == [404, 404, 404, 429]
    assert status == 429
    assert headers["Retry-After"] == "2"
    assert "per second" in envelope["message"]


async def test_models_and_inputs_are_checked_before_anything_is_spent(sim: FakeRuxa) -> None:
    """A disallowed model is 403, a bad input 422; nothing reaches the service."""
    config = config_for(sim, policy=Policy(models=[NB], max_prompt_chars=20))
    async with running(config) as gw, user_client(gw, TOKENS["alice"]) as alice:
        with pytest.raises(APIStatusError) as denied:
            await alice.create_task(SORA, PROMPT)
        assert denied.value.code == 403
        assert "not allowed" in denied.value.message
        with pytest.raises(ValidationError, match="image_size"):
            await alice.create_task(NB, {"prompt": "x", "image_size": "7:1"}, validate=False)
        with pytest.raises(ValidationError, match="allows 20"):
            await alice.create_task(NB, {"prompt": "x" * 21}, validate=False)
    assert sim.stats().requests == 0


async def test_unknown_and_forged_tokens_get_401(sim: FakeRuxa) -> None:
    """No token, a wrong token, the upstream key itself, a forged scoped token: all 401."""
    forged = mint_token("not-the-secret", "alice")
    async with running(config_for(sim)) as gw:
        for key in ("rxu_nobody", sim.api_key, forged, forged[:-2] + "AA"):
            async with user_client(gw, key) as client:
                with pytest.raises(AuthenticationError):
                    await client.create_task(NB, PROMPT)
        async with aiohttp.ClientSession() as http:
            status, envelope, _ = await raw(http, "POST", f"{gw.url}/api/v1/tasks/create", body={})
    assert status == 401
    assert envelope["data"] is None
    assert sim.stats().requests == 0


async def test_scoped_tokens_expire_narrow_models_and_carry_a_budget(sim: FakeRuxa) -> None:
    """A minted token works until its expiry, only for its models, within its own budget."""
    now = [1_800_000_000.0]
    token = mint_token(SECRET, "dana", ttl=60, models=[NB], budget=8.0, now=now[0])
    async with running(config_for(sim), clock=lambda: now[0]) as gw, user_client(gw, token) as c:
        await c.create_task(NB, PROMPT)
        await c.create_task(NB, PROMPT)
        with pytest.raises(InsufficientCreditsError, match="this token's budget"):
            await c.create_task(NB, PROMPT)
        with pytest.raises(APIStatusError) as denied:
            await c.create_task(SORA, PROMPT)
        assert denied.value.code == 403
        now[0] += 61
        with pytest.raises(AuthenticationError):
            await c.create_task(NB, PROMPT)
    assert sim.stats().tasks_created == 2


async def test_a_verified_scoped_token_follows_a_policy_reload(sim: FakeRuxa) -> None:
    """A token already verified (and remembered) is judged by the reloaded policy."""
    token = mint_token(SECRET, "gina")
    config = config_for(sim)
    async with running(config) as gw, user_client(gw, token) as client:
        await client.create_task(NB, PROMPT)
        assert gw.reload(attrs.evolve(config, defaults=Policy(models=[SORA])))
        with pytest.raises(APIStatusError) as denied:
            await client.create_task(NB, PROMPT)
        assert denied.value.code == 403
    assert sim.stats().tasks_created == 1


async def test_a_scoped_tokens_owner_is_its_user(sim: FakeRuxa) -> None:
    """Two tokens minted for the same user see each other's tasks; another user's do not."""
    one, two = mint_token(SECRET, "erin"), mint_token(SECRET, "erin")
    other = mint_token(SECRET, "frank")
    async with running(config_for(sim)) as gw:
        async with user_client(gw, one) as first:
            task_id = await first.create_task(NB, PROMPT)
        async with user_client(gw, two) as second:
            assert (await second.get_task(task_id)).task_id == task_id
        async with user_client(gw, other) as third:
            with pytest.raises(NotFoundError):
                await third.get_task(task_id)


async def test_unsettled_tasks_are_settled_by_the_sweeper() -> None:
    """A task nobody polls and no callback reports is settled by a sweep, freeing its slot."""
    silent = SimConfig(seed=1, callbacks=CallbackDelivery(drop=1.0))
    async with FakeRuxa(silent) as sim:
        config = config_for(sim, per_user={"alice": Policy(max_in_flight=1)})
        async with running(config) as gw, aiohttp.ClientSession() as http:
            url = f"{gw.url}/api/v1/tasks/create"
            body = {"model": NB, "input": PROMPT}
            assert (await raw(http, "POST", url, token=TOKENS["alice"], body=body))[0] == 200
            assert (await raw(http, "POST", url, token=TOKENS["alice"], body=body))[0] == 429
            while gw.store.open_tasks():
                await gw.sweep()
            assert (await raw(http, "POST", url, token=TOKENS["alice"], body=body))[0] == 200
            settled = [r for r in await gw.store.audit_records() if r["event"] == "settled"]
        assert gw.statistics().settled == 1
        assert settled[0]["source"] == "sweep"


async def test_an_upstream_outage_answers_within_the_upstream_timeout(sim: FakeRuxa) -> None:
    """An upstream that goes down gives the caller a clear 5xx after upstream_timeout.

    Not after the client's default ``max_outage`` of minutes: this test would time out.
    """
    config = attrs.evolve(config_for(sim), upstream_timeout=1.0)
    async with running(config) as gw, aiohttp.ClientSession() as http:
        assert gw.url is not None
        create = gw.url + "/api/v1/tasks/create"
        body = {"model": NB, "input": PROMPT}
        status, _, _ = await raw(http, "POST", create, token=TOKENS["alice"], body=body)
        assert status == 200
        await sim.outage("refuse")
        try:  # enough failures in a row to close the client's outage gate
            replies = await asyncio.gather(
                *(raw(http, "POST", create, token=TOKENS["alice"], body=body) for _ in range(8))
            )
        finally:
            await sim.restore()
    for status, envelope, _ in replies:
        assert status in (502, 503)
        assert envelope["code"] == status
        assert sim.api_key not in str(envelope)
    assert sim.stats().tasks_created == 1
