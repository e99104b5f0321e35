"""The fleet's lease, bucket and gate rules; rate controllers sharing one state, in fake time."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis as redis_sync

from ruxa_async import RateLimits
from ruxa_async._limiter import RateController
from ruxa_async._pace import Pace
from ruxa_async._ratestate import Kind, LearnedLimit, LocalRateState
from ruxa_async.redis import _ratestate, _scripts
from ruxa_async.redis._ratestate import RedisRateState
from ruxa_async.redis._store import Store
from tests.services import free_port
from tests.virtual_time import T0, VirtualTimeLoop


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


MakeState = Callable[..., RedisRateState]


@pytest.fixture
async def fleet_state(redis_url: str) -> AsyncIterator[MakeState]:
    """Makes members of one fleet: rate states on one fresh namespace, each with its own store."""
    namespace = f"u{uuid.uuid4().hex[:6]}"
    stores: list[Store] = []

    def make(clock: Clock, **options: Any) -> RedisRateState:
        store = Store(redis_url, namespace=namespace, timeout=1.0)
        stores.append(store)
        return RedisRateState(store, channel="c", clock=clock, **options)

    yield make
    for store in stores:
        await store.aclose()


def take(conn: redis_sync.Redis, wanted: int, least: int, rate: float, burst: float, now: float):
    script = conn.register_script(_scripts.TAKE)
    reply = script(keys=["b", "g1", "g2"], args=[wanted, least, rate, burst, now])
    return int(reply[0]), float(reply[1])


def test_bucket_grants_its_burst_then_refills_at_the_rate(conn: redis_sync.Redis) -> None:
    """A fresh bucket grants up to its burst; then one token per 1/rate seconds."""
    assert take(conn, 8, 1, 10.0, 5, now=100.0) == (5, 0.0)
    granted, wait = take(conn, 8, 1, 10.0, 5, now=100.0)
    assert granted == 0
    assert wait == pytest.approx(0.1)
    assert take(conn, 8, 1, 10.0, 5, now=100.35) == (3, 0.0)  # 3.5 tokens: a block of 3


def test_a_lease_may_borrow_what_the_lookahead_refills(conn: redis_sync.Redis) -> None:
    """Looking 0.5 s ahead at 10/s: 5 more tokens; a borrowed block's first one comes later."""
    script = conn.register_script(_scripts.TAKE)

    def lease(now: float) -> tuple[int, float]:
        reply = script(keys=["bl", "g1", "g2"], args=[8, 1, 10.0, 5, now, "0.5"])
        return int(reply[0]), float(reply[1])

    assert lease(100.0) == (8, 0.0)  # 5 saved + 3 of the next 0.5 s
    granted, start = lease(100.0)
    assert granted == 2  # the rest of the lookahead
    assert start == pytest.approx(0.4)  # after the 3 borrowed before it, at 10/s
    granted, wait = lease(100.0)
    assert granted == 0
    assert wait == pytest.approx(0.1)


def test_the_bucket_refills_at_the_slowest_pace_a_member_asked_for(
    conn: redis_sync.Redis,
) -> None:
    """Members pacing 100/s and 20/s: 20/s for both, until the slow one asked nothing for 1 s."""
    script = conn.register_script(_scripts.TAKE)

    def lease(member: str, rate: float, now: float) -> list[float]:
        reply = script(keys=["bp", "g1", "g2", "paces"], args=[1, 1, rate, 1, now, "0", member, 1])
        return [float(x) for x in reply]

    granted, _, _, rate, pacers = lease("a", 100.0, 10.0)
    assert (granted, rate, pacers) == (1, 100.0, 1)
    assert lease("b", 20.0, 10.0) == [0, pytest.approx(0.05)]  # refills at 20/s
    assert lease("a", 100.0, 10.02) == [0, pytest.approx(0.03)]  # 0.4 tokens, at 20/s
    granted, _, _, rate, pacers = lease("a", 100.0, 10.06)
    assert (granted, rate, pacers) == (1, 20.0, 2)
    granted, _, _, rate, pacers = lease("a", 100.0, 11.5)  # b's pace is over a second old
    assert (granted, rate, pacers) == (1, 100.0, 2)  # ... b still counts as a member (2 s)
    granted, _, _, rate, pacers = lease("a", 100.0, 12.1)
    assert (granted, rate, pacers) == (1, 100.0, 1)


def test_while_every_member_ramps_the_bucket_refills_at_the_fastest_pace(
    conn: redis_sync.Redis,
) -> None:
    """Nothing learned: the fastest ramp's pace; once one member has learned, the slowest again."""
    script = conn.register_script(_scripts.TAKE)

    def lease(member: str, rate: float, now: float, ramp: bool) -> tuple[int, float]:
        args = [1, 1, rate, 1, now, "0", member, 1, "ramp" if ramp else ""]
        reply = script(keys=["br", "g1", "g2", "paces-r", "ramps"], args=args)
        return int(reply[0]), float(reply[3]) if len(reply) > 3 else float(reply[1])

    assert lease("a", 40.0, 10.0, ramp=True) == (1, 40.0)
    assert lease("b", 160.0, 10.1, ramp=True) == (1, 160.0)
    assert lease("a", 40.0, 10.2, ramp=True) == (1, 160.0)  # the fastest ramp, not a's own
    assert lease("a", 80.0, 10.3, ramp=False) == (1, 80.0)  # a learned 80: the slowest again
    assert lease("b", 160.0, 10.4, ramp=True) == (1, 80.0)
    # a member of an older version (no ramp marks) is not known to ramp: the slowest
    old = [1, 1, 20.0, 1, 12.0, "0", "old", 1]
    script(keys=["br", "g1", "g2", "paces-r"], args=old)
    assert lease("b", 160.0, 12.1, ramp=True) == (1, 20.0)


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
    assert episode(keys=["gone"], args=[7]) == 1  # expired while idle: starts from the caller's
    assert episode(keys=["gone"], args=[7]) == 0


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


async def test_a_member_spends_its_block_at_its_part_of_the_rate(redis_url: str) -> None:
    """One of four members spends a block at a quarter of the fleet's rate, not in a burst."""
    clock = Clock()
    store = Store(redis_url, namespace=f"u{uuid.uuid4().hex[:6]}", timeout=1.0)
    state = RedisRateState(store, channel="c", lease_seconds=0.1, lease_ttl=0.5, clock=clock)
    state.members = 4  # before its leases measure it, the member count is its share
    try:
        assert state.share("create") == 4.0
        assert await state.take("create", 1, 40.0, 10.0) == 0.0
        assert await state.take("create", 1, 40.0, 10.0) == pytest.approx(0.1)  # 40/s / 4
        assert state.leases == 1
    finally:
        await store.aclose()


async def test_a_ramping_member_spends_its_block_at_its_pace_now(redis_url: str) -> None:
    """Nothing learned yet: a pace that doubled since the lease spends the block at the new pace.

    Spent at the pace of its lease, a block lags a doubling ramp by its length
    (a lease of the fleet's 50 ms is 400 ms of one of 8 members' sends).
    """
    clock = Clock()
    store = Store(redis_url, namespace=f"u{uuid.uuid4().hex[:6]}", timeout=1.0)
    state = RedisRateState(store, channel="c", lease_seconds=0.1, clock=clock)
    state.origin = "me"
    try:
        assert await state.read("create") is None  # the fleet has learned nothing
        assert await state.take("create", 1, 40.0, 4.0) == 0.0  # a block of 4
        assert await state.take("create", 1, 80.0, 4.0) == pytest.approx(1 / 40)
        clock.now += 1 / 40
        assert await state.take("create", 1, 80.0, 4.0) == 0.0
        assert await state.take("create", 1, 80.0, 4.0) == pytest.approx(1 / 80)  # the new pace
        assert state.leases == 1
        await state.write("create", LearnedLimit(rate=40.0, estimate=42.0, source="429s"))
        clock.now += 1 / 80
        assert await state.take("create", 1, 80.0, 4.0) == 0.0
        # learned: the block goes out at the pace it was leased at (the fleet's slowest)
        assert await state.take("create", 1, 80.0, 4.0) == pytest.approx(1 / 40)
    finally:
        await store.aclose()


async def test_a_member_spreads_its_block_over_the_members_leasing_lately(redis_url: str) -> None:
    """Eight live processes, the other creator done: this one spends at the whole rate at once.

    At first it counts the heartbeat's set as each lease reads it (its own
    beat may be older than the fleet).

    The heartbeat counts every live process, and the share is measured over
    8 s: a batch's last creates, spread over members done creating, would go
    out at a fraction of the rate for seconds.
    """
    clock = Clock()
    store = Store(redis_url, namespace=f"u{uuid.uuid4().hex[:6]}", timeout=1.0)
    state = RedisRateState(store, channel="c", lease_seconds=0.1, lease_ttl=0.5, clock=clock)
    state.origin = "me"
    paces, bucket = (store.key("rate", part, "create") for part in ("paces", "bucket"))

    async def other(seconds_ago: float, tokens: int) -> None:
        """Member "o" took ``tokens`` (and the bucket refilled: a second passed here)."""
        seconds, micros = await store.redis.time()
        now = seconds + micros / 1e6
        await store.redis.hset(paces, "o", f"{1e6:.6f}|{now - seconds_ago:.6f}")
        await store.redis.hset(bucket, mapping={"tokens": "4", "stamp": f"{now:.6f}"})
        await store.redis.hincrby(bucket, "granted", tokens)

    await store.redis.zadd(store.key("members"), {f"m{i}": 1.0 for i in range(8)})
    state.members = 1  # its last beat is old: the fleet was starting
    try:
        assert await state.take("create", 1, 80.0, 4.0) == 0.0
        assert state.members == 8  # the lease read the heartbeat's set
        assert await state.take("create", 1, 80.0, 4.0) == pytest.approx(8 / 80)  # new: all 8
        for _ in range(4):  # "o" and this one take alike: the fleet takes 2 tokens per one here
            clock.now += 1.0
            await other(0.0, 8)
            assert await state.take("create", 1, 80.0, 4.0) == 0.0
        assert await state.take("create", 1, 80.0, 4.0) == pytest.approx(2 / 80)
        clock.now += 1.0
        await other(2.5, 0)  # "o" is done creating
        assert await state.take("create", 1, 80.0, 4.0) == 0.0
        assert state.share("create") == pytest.approx(2.0, rel=0.2)  # measured over 8 s
        assert await state.take("create", 1, 80.0, 4.0) == pytest.approx(1 / 80)
    finally:
        await store.aclose()


async def test_a_late_caller_catches_up_on_its_lease_like_a_saved_burst(redis_url: str) -> None:
    """Wake-ups that come late are not lost: one process keeps its pace, as in-process.

    Each wait is slept 5 ms too long (an event loop's wake-up); losing that
    every permit would send at 40/s, not 50.
    """
    clock = Clock()
    store = Store(redis_url, namespace=f"u{uuid.uuid4().hex[:6]}", timeout=1.0)
    state = RedisRateState(store, channel="c", lease_seconds=0.2, lease_ttl=0.5, clock=clock)
    try:
        sent: list[float] = []
        while len(sent) < 8:
            wait = await state.take("create", 1, 50.0, 10.0)
            if wait > 0:
                clock.now += wait + 0.005
            else:
                sent.append(clock.now)
        assert state.leases == 1  # one block of 10, served from memory
        assert sent[-1] - sent[0] == pytest.approx(7 * 0.02 + 0.005)  # not 7 * 0.025
        assert all(b - a >= 0.02 - 1e-9 for a, b in itertools.pairwise(sent))  # still paced
    finally:
        await store.aclose()


async def test_a_refusal_whose_wait_rounds_to_nothing_is_no_grant(fleet_state: MakeState) -> None:
    """A gate reopening within a microsecond: the script's six decimals read 0.000000.

    Taken as a grant, every caller at that instant sent at once (11 creates
    at a gate's reopening, in the ledger's tests).
    """
    clock = Clock()
    state = fleet_state(clock, script_clock=clock)
    await state._store.redis.set(state._key("gate", "create"), f"{clock.now + 4e-7:.7f}")
    assert await state.take("create", 1, 50.0, 10.0) > 0.0
    assert state.leases == 0


async def test_the_bucket_refills_at_the_fleets_learned_pace(fleet_state: MakeState) -> None:
    """A process whose own pace lags the fleet's learned one still spends at the fleet's."""
    clock = Clock()
    a, b = (fleet_state(clock, lease_ttl=0.5) for _ in range(2))
    await a.write("create", LearnedLimit(rate=100.0, estimate=103.0, source="429s"))
    assert (await b.read("create")) is not None
    assert await b.take("create", 1, 10.0, 5.0) == 0.0
    assert await b.take("create", 1, 10.0, 5.0) == pytest.approx(0.01)  # 100/s, not 10


async def test_a_learned_limit_is_read_again_when_the_fleet_announces_one(
    fleet_state: MakeState,
) -> None:
    """The learned limit is cached; the fleet's message (invalidate) makes the next read fresh."""
    clock = Clock()
    a, b = (fleet_state(clock) for _ in range(2))
    await a.write("query", LearnedLimit(rate=50.0, source="429s"))
    assert (await b.read("query")) == LearnedLimit(rate=50.0, source="429s")
    await a.write("query", LearnedLimit(rate=40.0, source="429s", episode=1))
    calls = b._store.calls
    assert (await b.read("query")) == LearnedLimit(rate=50.0, source="429s")  # cached
    assert b._store.calls == calls
    b.invalidate("query")  # the pub/sub message "learned|query"
    assert (await b.read("query")) == LearnedLimit(rate=40.0, source="429s", episode=1)


async def test_a_learned_limit_from_a_newer_member_still_decodes(redis_url: str) -> None:
    """A learned limit with a field this version does not know is read, not dropped as garbage."""
    store = Store(redis_url, namespace=f"u{uuid.uuid4().hex[:6]}", timeout=1.0)
    state = RedisRateState(store, channel="c", clock=Clock())
    try:
        payload = '{"rate": 90.0, "source": "429s", "episode": 3, "from_the_future": 1}'
        await store.redis.set(store.key("rate", "learned", "create"), payload)
        assert await state.read("create") == LearnedLimit(rate=90.0, source="429s", episode=3)
    finally:
        await store.aclose()


async def test_a_borrowed_block_is_spent_from_memory_when_due(fleet_state: MakeState) -> None:
    """A process leasing from a bucket another just emptied gets a later block, not nothing."""
    clock = Clock()
    a, b = (fleet_state(clock, lease_seconds=0.5) for _ in range(2))
    assert await a.take("create", 1, 10.0, 2.0) == 0.0  # a block of 5: 2 saved, 3 borrowed
    wait = await b.take("create", 1, 10.0, 2.0)
    assert wait > 0  # b's block starts after a's
    assert b.leases == 1
    clock.now += wait
    assert await b.take("create", 1, 10.0, 2.0) == 0.0
    assert b.leases == 1  # served from the borrowed block, no second round trip
    assert b.leased_tokens >= 1


async def test_without_redis_a_member_paces_its_share_and_counts_the_fleet() -> None:
    """Degraded: the rate is split among the members, and share() says the fleet is that many."""
    clock = Clock()
    store = Store(f"redis://127.0.0.1:{free_port()}/0", namespace="gone", timeout=1.0)
    state = RedisRateState(store, channel="c", clock=clock)
    state.members = 4
    try:
        assert await state.take("create", 1, 40.0, 4.0) == 0.0  # refused: degraded, local
        assert store.degraded
        assert state.share("create") == 4.0
        assert await state.take("create", 1, 40.0, 4.0) == pytest.approx(0.1)  # 10/s here
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
        state.origin = "me"
        state.on_gate("client", 5.0, "me")  # this process's own gate, heard back: not remote
        assert await state.gate_remaining("client") == pytest.approx(1.5)
        assert state.remote_pauses == 1
    finally:
        await store.aclose()


async def test_share_is_the_fleets_tokens_per_token_of_this_process(fleet_state: MakeState) -> None:
    """Two processes leasing alike each learn that the fleet takes two tokens per one of theirs."""
    clock = Clock()
    a, b = (fleet_state(clock, lease_ttl=0.5) for _ in range(2))
    assert a.share("create") == 1.0
    for _ in range(4):
        for state in (a, b):
            assert await state.take("create", 1, 1e6, 4.0) == 0.0  # a block of 4
        clock.now += 1.0  # the leases expire: every take is a new lease
    assert a.share("create") == pytest.approx(2.0)
    assert b.share("create") == pytest.approx(2.0)
    assert a.share("query") == 1.0


async def test_a_starting_members_share_is_measured_after_a_few_leases(
    fleet_state: MakeState,
) -> None:
    """Within its first second, a member taking a quarter of the tokens counts the fleet as 4.

    Weighed by the member count (2), its sends would count half the fleet's.
    """
    clock = Clock()
    a, b = (fleet_state(clock, lease_ttl=0.5) for _ in range(2))
    a.members = b.members = 2
    for _ in range(_ratestate._FIRST_LEASES):
        await a.take("create", 16, 1e6, 16.0)  # a block of 16 each
        for _ in range(3):
            clock.now += 0.02
            await b.take("create", 16, 1e6, 16.0)
        clock.now += 0.02
    await a.take("create", 16, 1e6, 16.0)
    assert clock.now - 1000.0 < 1.0
    assert a.share("create") == pytest.approx(4.0)
    assert b.share("create") == pytest.approx(4 / 3, rel=0.2)


async def test_share_is_steady_when_one_member_takes_a_few_blocks_more(
    fleet_state: MakeState,
) -> None:
    """A member that leased three blocks in one second barely moves the other's share.

    The share scales every drain the rate controller fits: measured over two
    seconds, a few blocks at the wrong moment scaled it by a half.
    """
    clock = Clock()
    a, b = (fleet_state(clock, lease_ttl=0.5) for _ in range(2))
    for second in range(10):
        for state in (a, b):
            await state.take("create", 16, 1e6, 16.0)
        if second == 8:
            for _ in range(2):
                clock.now += 0.001
                await b.take("create", 16, 1e6, 16.0)
        clock.now += 1.0
    await a.take("create", 16, 1e6, 16.0)
    assert a.share("create") == pytest.approx(2.0, rel=0.15)


# ------------------------------------------- rate controllers sharing one state


class FleetState(LocalRateState):
    """One in-process state shared by several controllers, reporting ``share`` like Redis's."""

    def __init__(self, clock: Callable[[], float], sharers: float | None) -> None:
        super().__init__(clock)
        self.sharers = sharers

    def __getattr__(self, name: str) -> object:
        if name == "share" and self.sharers is not None:
            return lambda kind: float(self.sharers)
        raise AttributeError(name)


def in_virtual_time(scenario: Callable[[VirtualTimeLoop], object]) -> None:
    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(scenario(loop))  # type: ignore[arg-type]
    finally:
        loop.close()


def controllers(loop: VirtualTimeLoop, count: int, state: LocalRateState) -> list[RateController]:
    async def sleep(delay: float) -> None:
        await asyncio.sleep(delay)

    return [
        RateController(RateLimits(), clock=loop.time, sleep=sleep, rng=lambda: 0.0, state=state)
        for _ in range(count)
    ]


async def send(ctl: RateController, kind: Kind, until: float, loop: VirtualTimeLoop) -> int:
    sent = 0
    while loop.time() < until:
        async with ctl.permit(kind) as permit:
            sent += 1
        await ctl.on_success(permit)
    return sent


def test_a_429_in_one_controller_sets_the_pace_of_all() -> None:
    """One 429 episode for the fleet: the others pause at the shared gate and adopt its pace."""

    async def scenario(loop: VirtualTimeLoop) -> None:
        state = FleetState(loop.time, None)
        a, b, c = controllers(loop, 3, state)
        await asyncio.gather(*(send(x, "create", T0 + 2.0, loop) for x in (a, b, c)))
        async with a.permit("create") as refused:
            pass
        async with b.permit("create") as refused_too:
            pass
        await a.on_rate_limited(refused, retry_after=1.0)
        await b.on_rate_limited(refused_too, retry_after=1.0)  # the same episode
        learned = await state.read("create")
        assert learned is not None
        assert learned.episode == 1
        start = loop.time()
        async with c.permit("create") as permit:
            assert loop.time() >= start + 1.0  # waited at the gate a closed
        assert permit.episode == 1
        assert c.statistics().paused_seconds >= 1.0
        async with b.permit("create"):
            pass  # b's next permit adopts the pace of the episode a began
        for ctl in (a, b, c):
            stats = ctl.statistics().classes["create"]
            assert stats.source == "429s"
            assert stats.rate == pytest.approx(learned.rate)
        assert a.statistics().episodes + b.statistics().episodes == 1

    in_virtual_time(scenario)


def test_sharers_hold_after_an_episode_like_its_writer() -> None:
    """A sharer that was probing when another's 429 began an episode holds, as the writer does."""

    async def scenario(loop: VirtualTimeLoop) -> None:
        state = FleetState(loop.time, None)
        a, b = controllers(loop, 2, state)
        for episode, seconds in enumerate((1.0, 6.0)):  # a ramp; then a hold and a probe
            until = loop.time() + seconds
            await asyncio.gather(*(send(x, "create", until, loop) for x in (a, b)))
            assert b.statistics().classes["create"].phase == ("ramp", "probe")[episode]
            async with a.permit("create") as refused:
                pass
            await a.on_rate_limited(refused, retry_after=1.0)
            async with b.permit("create"):
                pass
            assert b.statistics().classes["create"].phase == "hold"
            assert b.statistics().classes["create"].rate == a.statistics().classes["create"].rate
            assert (await state.read("create")).episode == episode + 1  # type: ignore[union-attr]

    in_virtual_time(scenario)


@pytest.mark.parametrize("share", [None, 4])
def test_a_fleets_ramp_counts_every_sharers_sends(share: int | None) -> None:
    """Four controllers splitting one bucket ramp up only when each counts the fleet's sends."""

    async def scenario(loop: VirtualTimeLoop) -> None:
        state = FleetState(loop.time, share)
        fleet = controllers(loop, 4, state)
        start_rate = fleet[0].statistics().classes["query"].rate
        sent = 0
        while loop.time() < T0 + 3.0:  # the fleet's sends split evenly, one bucket
            for ctl in fleet:
                async with ctl.permit("query") as permit:
                    sent += 1
                await ctl.on_success(permit)
        rates = {x.statistics().classes["query"].rate for x in fleet}
        if share is None:  # each sees a quarter of the sends: held at twice that, the start
            assert sent <= 4 * start_rate
            assert max(rates) <= 2 * start_rate
        else:
            assert sent > 10 * start_rate
            assert min(rates) > 8 * start_rate

    in_virtual_time(scenario)


async def test_a_call_ending_in_a_stray_cancellation_degrades_and_spares_its_caller() -> None:
    """A CancelledError nobody sent the caller (a torn-down connection) is an outage.

    Raised on, it ended a batch's check or create as if cancelled: the job was
    dropped and the batch waited for it forever.
    """
    store = Store(f"redis://127.0.0.1:{free_port()}/0", namespace="stray", timeout=1.0)

    async def torn_down() -> None:
        raise asyncio.CancelledError

    assert await store.call(torn_down) is None
    assert store.degraded
    assert store.errors == 1
    await store.aclose()


async def test_cancelling_a_caller_still_cancels_its_redis_call() -> None:
    """A real cancellation of the caller propagates and is not counted as an outage."""
    store = Store(f"redis://127.0.0.1:{free_port()}/0", namespace="cancel", timeout=30.0)
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.Event().wait()

    call = asyncio.ensure_future(store.call(slow))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert not store.degraded
    assert store.errors == 0
    await store.aclose()


# ------------------------------------------------ paces of a fleet, on one server bucket


def fleet_paces(count: int) -> list[Pace]:
    return [
        Pace(
            ceiling=None, burst=10, start_rate=20.0, min_rate=0.2, unit=1.0, adaptive=True, now=0.0
        )
        for _ in range(count)
    ]


def send_evenly(pace: Pace, start: float, end: float, rate: float) -> None:
    """Send (and have admitted) evenly at ``rate`` over [start, end)."""
    t = start
    while t < end:
        pace.on_sent(t)
        pace.on_accepted(t, t)
        t += 1.0 / rate


def spread_sends(pace: Pace, at: float, weight: int) -> None:
    """As the limiter counts a fleet's sends: evenly back to this member's last one."""
    last = pace.history[-1] if pace.history else at
    spacing = min((at - last) / weight, 1.0 / pace.rate)
    for k in reversed(range(weight)):
        pace.on_sent(at - k * spacing)


def serve_fleet(paces: list[Pace], start: float, until: float, episodes: int = 0) -> int:
    """The fleet's sends, dealt in turn, against a 100/s bucket of 10 (1 s pauses).

    As over Redis: the fleet sends at its slowest member's pace; each member
    counts every send of its own as many (the fleet's sends per send of its);
    the k-th episode's 429 is reported to member k (any member may get one),
    whose finding every other member adopts after the pause.
    """
    tokens, stamp, t, sent = 10.0, start, start, 0
    while t < until:
        member = paces[sent % len(paces)]
        sent += 1
        tokens, stamp = min(10.0, tokens + (t - stamp) * 100.0), t
        spread_sends(member, t, len(paces))
        if tokens >= 1.0:
            tokens -= 1.0
            for _ in paces:
                member.on_accepted(t, t)
            step = 1.0 / min(p.rate for p in paces)
            t += step
            for p in paces:
                p.advance(step, t)
            continue
        writer = member
        episodes += 1
        writer.on_refused(t, writer.rate, t)
        learned = writer.learned(episodes)
        t += 1.0
        for p in paces:
            p.on_pause_end(t)
            if p is not writer:
                p.adopt(learned, new_episode=True)
    return episodes


def test_sharers_adopting_the_ramps_episode_probe_with_its_writer() -> None:
    """Adopters hold as long as the episode's writer (one unit after the ramp), not longer."""
    a, b = fleet_paces(2)
    assert serve_fleet([a, b], 0.0, 4.0) == 1
    assert a.hold == b.hold == 1.0


def test_a_probes_429_in_another_member_fits_the_servers_bucket() -> None:
    """The ramp's 429 in one member, the probe's in another: the second still fits rate and burst.

    Each member keeps its own sends before the adopted 429 as that episode's drain.
    """
    a, b = fleet_paces(2)
    episodes = serve_fleet([a, b], 0.0, 4.0)
    assert serve_fleet([a, b], 4.0, 12.0, episodes) == 2
    assert b.estimated_burst == pytest.approx(10.0, abs=3.0)
    assert b.estimate == pytest.approx(100.0, rel=0.04)


def test_a_member_counts_the_fleets_sends_evenly_between_its_own() -> None:
    """One of four members stamps the fleet's sends between its own evenly, not all at once.

    Stamped at one instant, four sends look like a burst of four the server
    never saw, and every burst fitted from them comes out too large.
    """

    async def scenario(loop: VirtualTimeLoop) -> None:
        (ctl,) = controllers(loop, 1, FleetState(loop.time, 4))
        await send(ctl, "create", T0 + 1.0, loop)
        history = list(ctl._lanes["create"].pace.history)
        assert len(history) > 8
        gaps = [b - a for a, b in itertools.pairwise(history[-9:])]
        assert min(gaps) > 0.5 * max(gaps)

    in_virtual_time(scenario)


def test_a_sharer_probing_alone_holds_when_the_writers_queries_follow() -> None:
    """The writer's queries follow its creates' finding and hold: a sharer's queries hold too.

    Else they probe alone, far past the pace the fleet's bucket keeps, and
    their 429 is read as a limit of twice the real one.
    """
    creates, queries, sharer = fleet_paces(3)
    send_evenly(creates, 0.0, 1.0, 150.0)
    send_evenly(queries, 0.0, 1.0, 150.0)
    creates.on_refused(1.0, 150.0, 1.0)
    assert queries.follow(creates, 1.0)
    sharer.adopt(queries.learned(0), new_episode=False)
    send_evenly(sharer, 2.0, 8.0, 80.0)
    sharer.advance(6.0, 8.0)
    assert sharer.phase == "probe"
    creates.hold = 16.0  # its next episode was found unchanged: holds long
    creates.base = creates.rate = 140.0
    assert queries.follow(creates, 8.0)
    sharer.adopt(queries.learned(0), new_episode=False)
    assert (sharer.phase, sharer.hold, sharer.rate) == ("hold", queries.hold, queries.rate)


def test_a_fractional_share_counts_the_fleets_sends_exactly() -> None:
    """A share of 2.5 counts 5 fleet sends per 2 of this member's, not 2 (rounded) or 3."""

    async def scenario(loop: VirtualTimeLoop) -> None:
        (ctl,) = controllers(loop, 1, FleetState(loop.time, 2.5))
        for _ in range(20):
            async with ctl.permit("create") as permit:
                pass
            await ctl.on_success(permit)
        pace = ctl._lanes["create"].pace
        assert (len(pace.history), len(pace.accepted)) == (50, 50)

    in_virtual_time(scenario)


@pytest.mark.parametrize(("guess", "fit", "believed"), [(19.4, 9.6, True), (15.9, 5.63, False)])
def test_a_fitted_burst_about_half_the_ramps_guess_is_believed(
    guess: float, fit: float, believed: bool
) -> None:
    """The ramp's burst guess runs about twice the server's: a fit of half is the usual case.

    A fit under 1/2.5 of it is not (a fleet's slow ramp gave 5.6 against 15.9, true 10).
    """
    (pace,) = fleet_paces(1)
    pace.estimated_burst = guess
    assert pace._believable(fit) is believed
