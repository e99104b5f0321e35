"""Soak: a long stream of tiny tasks through ``as_completed``, with memory sampled as it runs.

The simulator runs in its own process (the other core), its tasks finish at
once, and the client keeps ``MAX_PENDING`` jobs in hand. Once that bound is
reached, nothing should accumulate per task: the process's RSS and the
number of objects the garbage collector tracks are sampled at several points
after warm-up, and their growth must stay within a small fixed allowance plus
a few bytes (or a hundredth of an object) per task. Afterwards the client must
shut down cleanly: no pending task, no stray asyncio task, no warning.

``RUXA_SOAK_TASKS`` sets the number of tasks. The issue asks for 100,000, but
the pending bound must stay full, and a bound of 100 with a 0.4 s first check
paces the run at about 250 tasks a second: 100,000 tasks took 6 min 44 s here
(measured after the transport fix). CI runs the default of 6,000 (about half a
minute); run the full soak with ``RUXA_SOAK_TASKS=100000 pytest tests/test_soak.py``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from ruxa_async import Job, PollPolicy, ProgressEvent, RuxaClient

from .helpers_proc import NB, SimProcess

SOAK_TASKS = int(os.environ.get("RUXA_SOAK_TASKS", "6000"))
MAX_PENDING = 100
KEY = "sk-soak-0123456789"
# The pending bound is reached when the client can create MAX_PENDING tasks within a first
# check's delay: 100 in 0.4 s needs a quarter of what this machine manages, so even a busy CI
# machine keeps the bound full (and the bound, not the CPU, sets the pace: ~220 tasks/s).
POLL = PollPolicy(first_check=0.4, min_interval=0.1, max_interval=0.5, jitter=0.1)
WARM_UP = 0.2  # share of the tasks before the first sample
SAMPLES = 5
# Allowances: a fixed one for allocator and page-granularity noise, and a per-task one far
# below what keeping even one small object per task would cost (a dict entry and a slot
# object are already well over 100 bytes).
RSS_FIXED = 3 * 1024 * 1024
RSS_PER_TASK = 32
OBJECTS_FIXED = 2000
OBJECTS_PER_TASK = 0.02


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm", encoding="ascii") as stat:
        return int(stat.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@attrs.frozen
class Sample:
    """Memory at one point of the run."""

    done: int
    rss: int
    objects: int


def sample(done: int) -> Sample:
    """Collect garbage, then read RSS and the number of GC-tracked objects."""
    gc.collect()
    return Sample(done, rss_bytes(), len(gc.get_objects()))


def tiny_jobs(n: int) -> Iterator[Job]:
    """Distinct one-word jobs, generated lazily."""
    return (Job(model=NB, input={"prompt": f"s{i}"}) for i in range(n))


@pytest.fixture
def soak_sim(tmp_path: Path) -> Iterator[SimProcess]:
    """A simulator in its own process whose tasks finish at once."""
    sim = SimProcess(
        tmp_path, key=KEY, default_behavior={"median_seconds": 0.0, "sigma": 0.0}, seed=3
    )
    try:
        yield sim
    finally:
        sim.close()


@pytest.mark.timeout(90 + SOAK_TASKS // 100)
async def test_memory_stays_flat_and_the_client_shuts_down_cleanly(
    soak_sim: SimProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """After the pending bound is reached memory stays flat; closing leaves nothing behind."""
    caplog.set_level(logging.WARNING)
    n = SOAK_TASKS
    every = max(1, int(n * (1 - WARM_UP)) // SAMPLES)
    first_sample = n - every * SAMPLES
    seen = bytearray(n)
    samples: list[Sample] = []
    in_hand = peak = 0

    def on_event(event: ProgressEvent) -> None:
        nonlocal in_hand, peak
        if event.kind == "submitted":
            in_hand += 1
            peak = max(peak, in_hand)

    client = RuxaClient(KEY, base_url=soak_sim.url, poll=POLL)
    async with client:
        done = 0
        async for outcome in client.as_completed(
            tiny_jobs(n), max_pending=MAX_PENDING, on_event=on_event
        ):
            assert outcome.ok, outcome
            assert not seen[outcome.index], f"job {outcome.index} had a second outcome"
            seen[outcome.index] = 1
            in_hand -= 1
            done += 1
            if done >= first_sample and (done - first_sample) % every == 0 and done < n:
                samples.append(sample(done))
        stats = client.statistics()
        assert stats.pending == 0
        assert stats.rate.in_flight == 0
    samples.append(sample(n))

    assert done == n
    assert all(seen)
    assert peak == MAX_PENDING, f"the pending bound was never reached (peak {peak})"
    assert len(samples) == SAMPLES + 1
    sim = soak_sim.stats()
    assert (sim["tasks_created"], sim["duplicate_creates"]) == (n, 0)

    tasks = samples[-1].done - samples[0].done
    rss_growth = max(s.rss for s in samples) - samples[0].rss
    object_growth = max(s.objects for s in samples) - samples[0].objects
    shown = [(s.done, s.rss // 1024, s.objects) for s in samples]
    assert rss_growth <= RSS_FIXED + RSS_PER_TASK * tasks, f"RSS grew: (done, KiB, objects) {shown}"
    assert object_growth <= OBJECTS_FIXED + OBJECTS_PER_TASK * tasks, f"objects grew: {shown}"

    # Clean shutdown: no asyncio task left behind, nothing unclosed, nothing logged.
    for _ in range(3):
        await asyncio.sleep(0)
    leftover = asyncio.all_tasks() - {asyncio.current_task()}
    assert not leftover, leftover
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert not caught, [str(w.message) for w in caught]
    assert not caplog.records, [r.getMessage() for r in caplog.records]
