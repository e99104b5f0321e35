"""Rate discovery end to end against the simulator: a drop, then a restore, counted by the server.

Time settings are compressed fourfold (``recovery_seconds=1``: a unit of
0.25 s; pauses capped at 0.25 s), as the benchmarks do, so each phase takes a
few seconds. Every assertion is a count from the simulator or a learned value
from ``statistics()``, never a wall-clock threshold.
"""

from __future__ import annotations

import asyncio

from ruxa_async import RateLimits, RuxaClient
from ruxa_async.testing import FakeRuxa, RateLimit, SimConfig

MODEL = "google/nano-banana"
HIGH, LOW = 80.0, 40.0
FAST = {"recovery_seconds": 1.0, "max_pause": 0.25, "pause_without_retry_after": 0.25}


async def _create(
    client: RuxaClient, fake: FakeRuxa, accepted: int, *, until: float = 0.0, cap: int = 0
) -> tuple[int, int, float]:
    """Create until the simulator accepted ``accepted`` more (and the estimate reached ``until``).

    With ``until``, creating goes on past ``accepted`` until the estimated
    limit is at least ``until``, or ``cap`` were accepted: a count, so a
    loaded machine (a slower climb in wall-clock terms) cannot end the phase
    before the controller had the demand it needs. Returns the creates sent,
    the 429s, and the lowest estimate of the limit seen on the way (a probe
    may be back at a configured limit as the phase ends).
    """
    before = fake.stats()
    target = before.tasks_created + accepted
    last = before.tasks_created + max(cap, accepted)
    counter = iter(range(10**9))
    lowest = [float("inf")]

    def done() -> bool:
        created = fake.stats().tasks_created
        if created < target:
            return False
        estimate = client.statistics().rate.classes["create"].estimated_limit or 0.0
        return estimate >= until or created >= last

    async def worker() -> None:
        while not done():
            await client.create_task(MODEL, {"prompt": f"p{next(counter)}"})
            estimate = client.statistics().rate.classes["create"].estimated_limit
            lowest[0] = min(lowest[0], estimate or 0.0)

    await asyncio.gather(*(worker() for _ in range(16)))
    after = fake.stats()
    sent, refused = (
        after.creates - before.creates,
        after.rate_limited_create - before.rate_limited_create,
    )
    return sent, refused, lowest[0]


async def _phases(limits: RateLimits, back: float) -> list[tuple[int, int, float, int, float]]:
    """Run HIGH, LOW, then HIGH req/s; per phase: (sent, 429s, estimated limit, episodes, lowest).

    The estimated limit is the one at the phase's end; lowest, the lowest seen
    in it. The last phase goes on until the estimate is back at ``back`` (at
    most 1,200 accepted: 15 s of demand at HIGH).
    """
    config = SimConfig(create_limit=RateLimit(per_second=HIGH, burst=10))
    out: list[tuple[int, int, float, int, float]] = []
    async with (
        FakeRuxa(config) as fake,
        RuxaClient(fake.api_key, base_url=fake.url, rate_limits=limits) as client,
    ):
        for per_second, accepted, until in ((HIGH, 240, 0.0), (LOW, 160, 0.0), (HIGH, 400, back)):
            fake.reconfigure(create_limit=RateLimit(per_second=per_second, burst=10))
            episodes = client.statistics().rate.classes["create"].episodes
            sent, refused, lowest = await _create(client, fake, accepted, until=until, cap=1200)
            learned = client.statistics().rate.classes["create"]
            estimate = learned.estimated_limit or 0.0
            out.append((sent, refused, estimate, learned.episodes - episodes, lowest))
    return out


async def test_unknown_limit_follows_a_drop_and_a_restore() -> None:
    """Limits unknown: the pace settles near each new limit, with few 429s per phase."""
    phases = await _phases(RateLimits(**FAST), back=0.7 * HIGH)
    (s1, r1, p1, *_), (s2, r2, p2, e2, _), (s3, r3, p3, *_) = phases
    assert 0.6 * HIGH <= p1 <= 1.3 * HIGH  # found the first limit from nothing
    assert 0.6 * LOW <= p2 <= 1.3 * LOW  # came down to the halved one
    assert p3 >= 0.7 * HIGH  # and found the restored one again (the old controller never did)
    assert r1 + r2 + r3 <= 0.05 * (s1 + s2 + s3)
    assert e2 >= 1  # the drop was noticed through 429s ...
    assert e2 <= 12  # ... a handful of episodes, not one per request


async def test_configured_limit_is_a_ceiling_and_a_starting_point() -> None:
    """A configured limit: lowered by 429s while the server allows half, back at it after."""
    limits = RateLimits(create_per_second=HIGH, create_burst=10, **FAST)
    (_, r1, p1, *_), (_, _, _, e2, low2), (_, _, p3, *_) = await _phases(limits, back=HIGH)
    assert p1 == HIGH
    assert r1 <= 2
    assert 0.6 * LOW <= low2 <= 1.3 * LOW  # (a probe may be back at the ceiling as it ends)
    assert 1 <= e2 <= 12
    assert p3 == HIGH  # back to the ceiling, never above it
