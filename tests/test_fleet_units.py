"""The fleet's lease, bucket, gate and pacing rules on an injected clock."""

from __future__ import annotations

import uuid

import pytest
import redis as redis_sync

from ruxa_async import RateLimits
from ruxa_async._fleetpace import FleetPacer
from ruxa_async._ratestate import LearnedLimit, LocalRateState
from ruxa_async.redis import _scripts
from ruxa_async.redis._ratestate import RedisRateState
from ruxa_async.redis._store import Store


class Clock:
    """A clock that moves only when told; ``sleep`` advances it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def conn(redis_url: str) -> redis_sync.Redis:
    """A synchronous connection to run the scripts with an injected time."""
    c = redis_sync.Redis.from_url(redis_url)
    yield c
    c.close()


def take(conn: redis_sync.Redis, wanted: int, least: int, rate: float, burst: float, now: float):
    script = conn.register_script(_scripts.TAKE)
    granted, wait = script(keys=["b", "g1", "g2"], args=[wanted, least, rate, burst, now])
    return int(granted), float(wait)


def test_bucket_grants_its_burst_then_refills_at_the_rate(conn: redis_sync.Redis) -> None:
    """A fresh bucket grants up to its burst; then one token per 1/rate seconds."""
    assert take(conn, 8, 1, 10.0, 5, now=100.0) == (5, 0.0)
    granted, wait = take(conn, 8, 1, 10.0, 5, now=100.0)
    assert granted == 0
    assert wait == pytest.approx(0.1)
    assert take(conn, 8, 1, 10.0, 5, now=100.35) == (3, 0.0)  # 3.5 tokens: a block of 3


def test_bucket_never_grants_fewer_than_asked_for(conn: redis_sync.Redis) -> None:
    """A caller needing 2 tokens waits for 2, even when 1 is there."""
    take(conn, 5, 1, 10.0, 5, now=0.0)
    granted, wait = take(conn, 2, 2, 10.0, 5, now=0.1)
    assert granted == 0
    assert wait == pytest.approx(0.1)


def test_closing_a_gate_refuses_tokens_and_leaves_no_burst(conn: redis_sync.Redis) -> None:
    """Closing the gate refuses every lease until it reopens, then only one token is saved."""
    close = conn.register_script(_scripts.CLOSE_GATE)
    take(conn, 1, 1, 10.0, 5, now=50.0)
    remaining = close(keys=["g1", "b"], args=["2.0", "chan", "gate|x|", 50.0])
    assert float(remaining) == pytest.approx(2.0)
    granted, wait = take(conn, 5, 1, 10.0, 5, now=51.0)
    assert granted == 0
    assert wait == pytest.approx(1.0)
    assert take(conn, 5, 1, 10.0, 5, now=52.0) == (1, 0.0)
    # a shorter pause never shortens a longer one
    close(keys=["g1", "b"], args=["5.0", "chan", "gate|x|", 52.0])
    assert float(close(keys=["g1", "b"], args=["1.0", "chan", "gate|x|", 53.0])) == pytest.approx(
        4.0
    )


def test_episode_is_a_compare_and_increment(conn: redis_sync.Redis) -> None:
    """Only the first 429 of an episode wins the counter."""
    episode = conn.register_script(_scripts.EPISODE)
    assert episode(keys=["e"], args=[0]) == 1
    assert episode(keys=["e"], args=[0]) == 0
    assert episode(keys=["e"], args=[1]) == 1


def test_credit_reservations_stop_at_the_budget_per_window(conn: redis_sync.Redis) -> None:
    """Reservations add up to the budget; the next window starts empty."""
    reserve = conn.register_script(_scripts.RESERVE)
    assert reserve(args=["cr:", "4", "10", 60, 120.0])[0] == 1
    assert reserve(args=["cr:", "4", "10", 60, 130.0])[0] == 1
    refused = reserve(args=["cr:", "4", "10", 60, 170.0])
    assert refused[0] == 0
    assert float(refused[1]) == pytest.approx(8.0)
    assert reserve(args=["cr:", "4", "10", 60, 181.0])[0] == 1  # a new window


async def test_lease_serves_permits_from_memory_until_it_expires(redis_url: str) -> None:
    """One Redis call leases a block; permits come from memory, spaced at the rate, until expiry."""
    clock = Clock()
    store = Store(redis_url, namespace=f"u{uuid.uuid4().hex[:6]}", timeout=1.0)
    state = RedisRateState(store, channel="c", lease_seconds=0.1, lease_ttl=0.5, clock=clock)
    try:
        for _ in range(5):
            assert await state.take("create", 1, 50.0, 10.0) == 0.0
            assert await state.take("create", 1, 50.0, 10.0) == pytest.approx(0.02)  # spaced
            clock.now += 0.02
        assert state.leases == 1
        assert state.leased_tokens == 5  # ceil(50/s * 0.1 s)
        clock.now += 1.0  # expired: unspent tokens are not used
        assert await state.take("create", 1, 50.0, 10.0) == 0.0
        assert state.leases == 2
    finally:
        await store.aclose()


async def test_a_gate_message_drops_the_lease(redis_url: str) -> None:
    """Another process's 429 closes the local gate copy and drops leased tokens."""
    clock = Clock()
    store = Store(redis_url, namespace=f"u{uuid.uuid4().hex[:6]}", timeout=1.0)
    state = RedisRateState(store, channel="c", lease_seconds=0.1, clock=clock)
    try:
        await state.take("query", 1, 50.0, 10.0)
        state.on_gate("client", 1.5)
        assert await state.gate_remaining("client") == pytest.approx(1.5)
        assert state._leases["query"].tokens == 0
        assert state.remote_pauses == 1
    finally:
        await store.aclose()


async def test_slow_start_doubles_only_while_requests_wait() -> None:
    """With nothing known, the pace starts low and doubles per `doubling` seconds of demand."""
    clock = Clock()
    pacer = FleetPacer(LocalRateState(clock), RateLimits(), clock=clock, sleep=clock.sleep)
    assert pacer.pace("create", None, clock.now) == pytest.approx(10.0)
    clock.now += 10.0  # idle time does not ramp
    assert pacer.pace("create", None, clock.now) == pytest.approx(10.0)
    start = clock.now
    while clock.now - start < 1.0:
        await pacer.admit("create")
    assert pacer.rates["create"] is not None
    assert pacer.rates["create"] > 20.0
    pacer._ramped["create"] = 10.0
    assert pacer.pace("create", None, clock.now) is None  # past `unlimited`: no bucket


async def test_a_429_backs_off_once_per_episode() -> None:
    """The first 429 of an episode lowers the rate once; later 429s of it only pause."""
    clock = Clock()
    state = LocalRateState(clock)
    measured = {"create": 100.0}

    async def admitted_rate(kind: str) -> float | None:
        return measured[kind]

    state.admitted_rate = admitted_rate  # type: ignore[attr-defined]
    pacer = FleetPacer(state, RateLimits(gate_scope="client"), clock=clock, sleep=clock.sleep)
    await state.write("create", LearnedLimit(rate=160.0, source="slow start"))
    await pacer.on_rate_limited("create", 0, retry_after=1.0)
    learned = await state.read("create")
    assert learned is not None
    assert learned.rate == pytest.approx(147.2)  # 0.92 x 160, above 0.9 x 100 accepted
    assert learned.estimate == pytest.approx(160.0)  # the upper bound the probes aim under
    assert learned.episode == 1
    assert await state.gate_remaining("client") == pytest.approx(1.0)
    await pacer.on_rate_limited("create", 0, retry_after=2.0)  # same episode
    assert (await state.read("create")) == learned
    assert pacer.decreases == 1
    assert await state.gate_remaining("client") == pytest.approx(2.0)


async def test_admit_waits_for_the_gate_then_for_a_token() -> None:
    """admit() sleeps out a closed gate, then paces at the learned rate."""
    clock = Clock()
    state = LocalRateState(clock)
    await state.write("create", LearnedLimit(rate=10.0, burst=1.0, source="429s", episode=3))
    limits = RateLimits(create_burst=1, gate_scope="client")
    pacer = FleetPacer(state, limits, clock=clock, sleep=clock.sleep)
    await state.close_gate("client", 2.0)
    assert await pacer.admit("create") == 3
    assert clock.slept[0] == pytest.approx(2.0)
    start = clock.now
    for _ in range(5):
        await pacer.admit("create")
    assert clock.now - start == pytest.approx(0.5, abs=0.11)


async def test_configured_rate_is_a_ceiling() -> None:
    """A configured create_per_second caps the learned and the slow-start pace."""
    clock = Clock()
    limits = RateLimits(create_per_second=5.0)
    pacer = FleetPacer(LocalRateState(clock), limits, clock=clock, sleep=clock.sleep)
    assert pacer.pace("create", None, clock.now) == 5.0
    assert pacer.pace("create", LearnedLimit(rate=50.0), clock.now) == 5.0


async def test_the_end_of_slow_start_halves_the_rate() -> None:
    """A 429 during slow start: half the ramp's rate, or the accepted rate if that is higher."""
    clock = Clock()
    state = LocalRateState(clock)
    pacer = FleetPacer(state, RateLimits(), clock=clock, sleep=clock.sleep)
    pacer._ramped["create"] = 1.0  # a second of demand: the ramp is at 40/s
    await pacer.on_rate_limited("create", 0, retry_after=None)
    learned = await state.read("create")
    assert learned is not None
    assert learned.rate == pytest.approx(20.0)
