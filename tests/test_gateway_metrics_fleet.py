"""/metrics of gateways sharing one Redis: the fleet's spend on every instance, counters of
what went through each instance that add up, and a scrape that answers when Redis does not."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from ruxa_async.gateway import Gateway, GatewayConfig, Policy, RedisStore
from ruxa_async.gateway._policy import Denial, window_bounds
from ruxa_async.gateway._store import Scope
from ruxa_async.testing import CallbackDelivery, FakeRuxa, ModelBehavior, SimConfig
from tests.helpers_gateway import NB, PROMPT, SECRET, TOKENS, config_for, running, user_client
from tests.services import RedisServer
from tests.test_gateway_redis import shared, store, two_gateways

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

BUDGET = 100.0
PRICE = 4.0  # nano-banana's estimate, and what the simulator charges


async def scrape(http: aiohttp.ClientSession, base: str) -> tuple[Samples, str]:
    """One scrape of ``base``/metrics: every sample by (name, labels), and the text."""
    async with http.get(f"{base}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return samples, text


def of(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample ``name`` with exactly ``labels``, or None."""
    return samples.get((name, frozenset(labels.items())))


def base(gw: Gateway) -> str:
    """A listening gateway's URL."""
    assert gw.url is not None
    return gw.url


def today() -> str:
    return window_bounds("day", time.time())[0]


def slow_sim() -> FakeRuxa:
    return FakeRuxa(SimConfig(seed=31, default_behavior=ModelBehavior(median_seconds=60, sigma=0)))


@asynccontextmanager
async def mounted(config: GatewayConfig) -> AsyncIterator[str]:
    """A gateway mounted in an aiohttp app under /ruxa; yields its base URL."""
    app = web.Application()
    Gateway(config).mount(app, prefix="/ruxa")
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}/ruxa"
    finally:
        await runner.cleanup()


async def test_spend_through_one_instance_shows_at_once_on_the_other(redis_url: str) -> None:
    """Alice creates through A; B's very next scrape has her spend and remaining budget."""
    async with (
        slow_sim() as sim,
        two_gateways(shared(sim, redis_url, policy=Policy(budget=BUDGET))) as (one, two),
        user_client(one, TOKENS["alice"]) as alice,
        aiohttp.ClientSession() as http,
    ):
        before, _ = await scrape(http, base(two))
        await alice.create_task(NB, PROMPT)
        after, _ = await scrape(http, base(two))
    period = today()
    assert of(before, "ruxa_gateway_spend_credits", user="alice", period=period) == 0.0
    assert of(after, "ruxa_gateway_spend_credits", user="alice", period=period) == PRICE
    assert of(after, "ruxa_gateway_budget_remaining_credits", user="alice", period=period) == (
        BUDGET - PRICE
    )
    assert of(after, "ruxa_gateway_state_degraded") == 0.0
    assert of(after, "ruxa_gateway_instance_reserved_credits_total", user="alice") is None


async def test_a_user_only_seen_by_one_instance_appears_on_the_other_mounted_one(
    redis_url: str,
) -> None:
    """A minted-token user unknown to the config creates through a standalone instance; an
    instance mounted in an aiohttp app lists them, and no token or key is in either scrape."""
    async with slow_sim() as sim, aiohttp.ClientSession() as http:
        config = shared(sim, redis_url)
        async with running(config) as one, mounted(config) as two:
            dave = one.mint_token("dave", budget=50.0)
            async with user_client(one, dave) as client:
                await client.create_task(NB, PROMPT)
            theirs, text_two = await scrape(http, two)
            mine, text_one = await scrape(http, base(one))
    period = today()
    assert of(theirs, "ruxa_gateway_spend_credits", user="dave", period=period) == PRICE
    assert of(mine, "ruxa_gateway_spend_credits", user="dave", period=period) == PRICE
    assert of(mine, "ruxa_gateway_instance_reserved_credits_total", user="dave") == PRICE
    assert of(theirs, "ruxa_gateway_instance_reserved_credits_total", user="dave") is None
    assert of(theirs, "ruxa_gateway_users_indexed") == 1.0
    for secret in [*TOKENS.values(), dave, sim.api_key, SECRET, redis_url]:
        assert secret not in text_one + text_two


async def test_instance_counters_add_up_to_the_fleet_spend(redis_url: str) -> None:
    """Five tasks over two instances, each seen ending by both: the instances' spend counters
    sum to the fleet's spend (each settlement booked once), which both instances report."""
    fast = SimConfig(
        seed=32,
        default_behavior=ModelBehavior(median_seconds=0.05, sigma=0),
        callbacks=CallbackDelivery(drop=1.0),  # the instances learn each end by querying
    )
    async with FakeRuxa(fast) as sim:
        config = shared(sim, redis_url, policy=Policy(budget=BUDGET))
        async with (
            two_gateways(config) as (one, two),
            user_client(one, TOKENS["alice"]) as via_one,
            user_client(two, TOKENS["alice"]) as via_two,
            aiohttp.ClientSession() as http,
        ):
            ids = [await (via_one, via_two)[i % 2].create_task(NB, PROMPT) for i in range(5)]
            for task_id in ids:
                await asyncio.gather(
                    via_one.wait(task_id, timeout=20), via_two.wait(task_id, timeout=20)
                )
            await store(one).flush()
            await store(two).flush()
            scrapes = [(await scrape(http, base(gw)))[0] for gw in (one, two)]
    total = 5 * PRICE
    spent = [of(s, "ruxa_gateway_instance_spend_credits_total", user="alice") for s in scrapes]
    reserved = [
        of(s, "ruxa_gateway_instance_reserved_credits_total", user="alice") for s in scrapes
    ]
    assert sum(x or 0.0 for x in spent) == total
    assert reserved == [3 * PRICE, 2 * PRICE]
    for samples in scrapes:
        assert of(samples, "ruxa_gateway_spend_credits", user="alice", period=today()) == total


async def test_a_hung_redis_gets_a_prompt_scrape_of_the_last_figures_flagged_degraded(
    redis_url: str, redis_service: RedisServer
) -> None:
    """Redis stopped (SIGSTOP): both instances still answer /metrics, with the spend last read
    and the degraded flag; once Redis answers, the flag clears."""
    assert redis_service.proc is not None
    async with (
        slow_sim() as sim,
        two_gateways(shared(sim, redis_url, policy=Policy(budget=BUDGET))) as (one, two),
        user_client(one, TOKENS["alice"]) as alice,
        aiohttp.ClientSession() as http,
    ):
        await alice.create_task(NB, PROMPT)
        fresh, _ = await scrape(http, base(two))
        redis_service.proc.send_signal(signal.SIGSTOP)
        try:
            stale = [(await scrape(http, base(gw)))[0] for gw in (two, one, two)]
        finally:
            redis_service.proc.send_signal(signal.SIGCONT)
        await asyncio.gather(store(one).wait_available(), store(two).wait_available())
        back, _ = await scrape(http, base(two))
    period = today()
    assert of(fresh, "ruxa_gateway_state_degraded") == 0.0
    for samples in stale:
        assert of(samples, "ruxa_gateway_state_degraded") == 1.0
        assert of(samples, "ruxa_gateway_spend_credits", user="alice", period=period) == PRICE
        assert (of(samples, "ruxa_gateway_spend_age_seconds") or 0.0) > 0.0
    assert of(back, "ruxa_gateway_state_degraded") == 0.0


async def test_a_scrape_reads_the_fleet_in_one_round_trip_and_a_bounded_listing(
    redis_url: str,
) -> None:
    """The given users plus at most ``limit`` of the most recently active others, in one Redis
    call; users without a ledger in the period are left out, and the index counts everyone."""
    now = [1_000_000.0]

    async with RedisStore(redis_url, clock=lambda: now[0]) as shared_store:

        async def reserve(user: str, period: str = "p") -> None:
            now[0] += 1
            held = await shared_store.areserve(
                user, 2.0, [Scope(f"user:{user}", period, None)], None
            )
            assert not isinstance(held, Denial)

        async def read() -> tuple[dict[str, tuple[str, float, float]], int]:
            calls = shared_store._redis.calls
            got = await shared_store.fleet_ledgers({"u1": "p", "nobody": "p"}, "p", limit=2)
            assert got.fresh
            assert got.indexed == indexed
            return got.ledgers, shared_store._redis.calls - calls

        for user in ("u1", "u2", "u3"):
            await reserve(user)
        await reserve("old", "before")
        indexed = 4
        first, again = await read(), await read()
        await reserve("u4")
        await reserve("u5")
        indexed = 6
        later = await read()
    known = {"u1": ("p", 0.0, 2.0), "nobody": ("p", 0.0, 0.0)}
    # the two most recent were "old" (no ledger in "p") and u3; then u5 and u4
    assert first == again == ({**known, "u3": ("p", 0.0, 2.0)}, 1)
    assert later == ({**known, "u4": ("p", 0.0, 2.0), "u5": ("p", 0.0, 2.0)}, 1)


async def test_a_charged_release_is_counted_once(redis_url: str) -> None:
    """A failed create charged to the budget counts in this instance's spend once, even when
    its release is written twice."""
    async with RedisStore(redis_url) as shared_store:
        held = await shared_store.areserve("u", 3.0, [Scope("user:u", "p", None)], None)
        assert not isinstance(held, Denial)
        shared_store.release(held, charge=True)
        shared_store.release(held, charge=True)
        await shared_store.flush()
        read = await shared_store.fleet_ledgers({}, "p")
    assert dict(shared_store.spent_here) == dict(shared_store.reserved_here) == {"u": 3.0}
    assert read.ledgers == {"u": ("p", 3.0, 0.0)}


async def test_a_single_gateway_reports_its_own_spend_as_before() -> None:
    """With the SQLite state: spend per user and period (any user name, escaped), never
    degraded, no instance counters."""
    odd = 'a "quoted"\\ user\nname'
    async with (
        slow_sim() as sim,
        running(config_for(sim, policy=Policy(budget=BUDGET))) as gw,
        user_client(gw, TOKENS["alice"]) as alice,
        user_client(gw, gw.mint_token(odd)) as oddly,
        aiohttp.ClientSession() as http,
    ):
        await alice.create_task(NB, PROMPT)
        await oddly.create_task(NB, PROMPT)
        samples, text = await scrape(http, base(gw))
    period = today()
    assert of(samples, "ruxa_gateway_spend_credits", user="alice", period=period) == PRICE
    assert of(samples, "ruxa_gateway_spend_credits", user="bob", period=period) == 0.0
    assert of(samples, "ruxa_gateway_budget_remaining_credits", user="alice", period=period) == (
        BUDGET - PRICE
    )
    assert of(samples, "ruxa_gateway_spend_credits", user=odd, period=period) == PRICE
    assert of(samples, "ruxa_gateway_state_degraded") == 0.0
    assert "ruxa_gateway_instance_" not in text
