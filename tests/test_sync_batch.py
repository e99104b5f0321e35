"""SyncRuxaClient.run_batch: the report counts the batch's own requests, not the client's."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from ruxa_async import Job, PollPolicy, SyncRuxaClient, TaskInfo
from tests.helpers_proc import NB, SimProcess

BATCH = 20
SIDE_THREADS = 5
SIDE_CALLS = 2


def test_run_batch_counts_only_its_own_requests_while_threads_share_the_client(
    tmp_path: Path,
) -> None:
    """generate() calls from other threads during a sync batch are not in the batch's report."""
    # Each task completes long before its only check: one create plus one query per task.
    sim = SimProcess(
        tmp_path, key="sk-tally", default_behavior={"median_seconds": 0.05, "sigma": 0.0}, seed=9
    )
    side_infos: list[TaskInfo] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    try:
        before = sim.stats()["requests"]
        with SyncRuxaClient(
            sim.key, base_url=sim.url, poll=PollPolicy(first_check=0.4, jitter=0.0)
        ) as client:

            def side(n: int) -> None:
                try:
                    for i in range(SIDE_CALLS):
                        info = client.generate(NB, {"prompt": f"side {n}-{i}"}, timeout=30)
                        with lock:
                            side_infos.append(info)
                except BaseException as exc:
                    errors.append(exc)

            def jobs() -> Iterator[Job]:
                # Pulled in this thread while the batch runs: the side calls happen mid-batch.
                for i in range(BATCH // 2):
                    yield Job(NB, {"prompt": f"batch {i}"})
                threads = [threading.Thread(target=side, args=(n,)) for n in range(SIDE_THREADS)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(30)
                for i in range(BATCH // 2, BATCH):
                    yield Job(NB, {"prompt": f"batch {i}"})

            report = client.run_batch(jobs())
            total = client.statistics().requests_sent
        sent = sim.stats()["requests"] - before
    finally:
        sim.close()
    assert errors == []
    assert len(side_infos) == SIDE_THREADS * SIDE_CALLS
    assert report.succeeded == BATCH
    assert sent == total == 2 * (BATCH + SIDE_THREADS * SIDE_CALLS)
    assert report.requests_sent == 2 * BATCH
    assert report.rate_limited == report.ambiguous_create_retries == 0
