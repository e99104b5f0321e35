"""Fan out a large batch with ``as_completed``: lazy intake, bounded pending, every outcome.

The job source is a generator, so even a million prompts never become a million
coroutines: at most ``max_pending`` jobs are in hand at once. Size it by
Little's law: creates per second times (typical duration + a little lag). Runs against the
built-in simulator with rate limits on: ``python examples/fan_out.py [N]``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Iterator

from ruxa_async import Job, OutcomeStatus, RateLimits, RuxaClient
from ruxa_async.testing import FakeRuxa, ModelBehavior, RateLimit, SimConfig


def prompts(n: int) -> Iterator[Job]:
    """A lazy job source: read a file or a database cursor the same way."""
    for i in range(n):
        yield Job(model="google/nano-banana", input={"prompt": f"postcard #{i}"}, key=f"card-{i}")


async def main(n: int) -> None:
    sim = SimConfig(
        create_limit=RateLimit(per_second=200, burst=20),
        query_limit=RateLimit(per_second=200, burst=20),
        default_behavior=ModelBehavior(median_seconds=1.5, sigma=0.5, fail_rate=0.02),
    )
    limits = RateLimits(
        create_per_second=200, query_per_second=200, create_burst=20, query_burst=20
    )
    async with (
        FakeRuxa(sim) as fake,
        RuxaClient(fake.api_key, base_url=fake.url, rate_limits=limits) as client,
    ):
        started = time.monotonic()
        counts: Counter[OutcomeStatus] = Counter()
        async for outcome in client.as_completed(prompts(n), max_pending=1000):
            counts[outcome.status] += 1
            if outcome.status is not OutcomeStatus.SUCCEEDED:
                reason = outcome.info.fail_msg if outcome.info else outcome.error
                print(f"{outcome.key} {outcome.status.value}: {reason}")
        elapsed = time.monotonic() - started
        stats = client.statistics()
        print(
            f"{n} jobs in {elapsed:.1f} s: {counts[OutcomeStatus.SUCCEEDED]} succeeded, "
            f"{counts[OutcomeStatus.FAILED]} failed; {stats.requests_sent / n:.2f} requests "
            f"per job, {stats.rate_limited} rate-limited replies"
        )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
