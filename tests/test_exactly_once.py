"""Exactly once: the in-flight mark follows the wire, lost tasks end, ambiguity is attributed.

SDK-level tests run against the in-process simulator; the CLI tests against a
standalone one (``tests/helpers_proc.SimProcess``) whose counters outlive the run.
"""

from __future__ import annotations

import functools
import logging
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ruxa_async import Job, NotFoundError, PollPolicy, RetryPolicy, RuxaClient, TaskLostError
from ruxa_async.testing import FakeRuxa, Faults, ModelBehavior, RateLimit, SimConfig
from ruxa_async.webhooks import CallbackServer

from .conftest import make_client
from .helpers_proc import (
    FAST_CLI,
    SimProcess,
    journal_jobs,
    kill_when,
    nb_job,
    read_results,
    run_cli,
    start_cli,
    started_sims,
    write_jobs,
)

MODEL = "google/nano-banana"
KEY = "sk-exactly-once-0123456789"


def jobs(n: int, prefix: str = "j") -> list[Job]:
    return [
        Job(model=MODEL, input={"prompt": f"{prefix} {i}"}, key=f"{prefix}{i}") for i in range(n)
    ]


# ------------------------------------------------------------------ the SDK seam


async def test_on_send_marks_only_creates_on_the_wire_and_429s_clear_them(
    fake: FakeRuxa,
) -> None:
    """on_send comes after the permit; every 429 answer clears its mark; one create per job."""
    # A bucket of one token: any two creates within 100 ms meet a 429, however slow the machine.
    fake.reconfigure(create_limit=RateLimit(per_second=10, burst=1))
    marked: set[str] = set()
    most_marked = 0
    sends = unsent = 0

    async def on_send(job: Job) -> None:
        nonlocal sends, most_marked
        assert job.key is not None
        assert job.key not in marked
        sends += 1
        marked.add(job.key)
        most_marked = max(most_marked, len(marked))

    def on_unsent(job: Job) -> None:
        nonlocal unsent
        assert job.key is not None
        unsent += 1
        marked.remove(job.key)

    async with make_client(fake) as client:
        report = await client.run_batch(jobs(20), on_send=on_send, on_unsent=on_unsent)
        limit = client.rate_limits.max_in_flight
    assert all(o.ok for o in report.outcomes)
    stats = fake.stats()
    assert stats.tasks_created == 20
    assert stats.duplicate_creates == 0
    assert report.rate_limited > 0, "the create limit never answered 429"
    assert unsent == report.rate_limited  # each 429 cleared exactly its own mark
    assert sends == 20 + unsent
    assert most_marked <= limit


async def test_an_ambiguous_attempt_is_named_and_never_cleared(
    fake: FakeRuxa, caplog: pytest.LogCaptureFixture
) -> None:
    """500 after create: the outcome counts the attempt, the WARNING names the job key."""
    fake.reconfigure(faults=Faults(error_500_after_create=1.0))
    unsent: list[Job] = []

    async def on_send(job: Job) -> None:
        return None

    retry = RetryPolicy(max_attempts=2, initial_delay=0.01, ambiguous_creates="retry")
    caplog.set_level(logging.WARNING, logger="ruxa_async")
    async with make_client(fake, retry=retry) as client:
        report = await client.run_batch(jobs(1, "amb"), on_send=on_send, on_unsent=unsent.append)
    (outcome,) = report.outcomes
    assert outcome.task_id is None
    assert outcome.ambiguous_attempts == 2
    assert not unsent
    assert fake.stats().tasks_created == 2
    assert any("job amb0" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


async def test_a_refused_connection_clears_the_mark(fake: FakeRuxa) -> None:
    """Nothing listening: the create provably never left, so the mark is cleared."""
    events: list[str] = []

    async def on_send(job: Job) -> None:
        events.append("send")

    async with make_client(fake, retry=RetryPolicy(max_attempts=1)) as client:
        await fake.aclose()
        report = await client.run_batch(
            jobs(1), on_send=on_send, on_unsent=lambda job: events.append("unsent")
        )
    assert report.outcomes[0].ambiguous_attempts == 0
    assert events == ["send", "unsent"]


# ------------------------------------------------------- ambiguity resolved by callbacks


async def test_callbacks_name_the_task_of_an_ambiguous_create(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """500 after create with callbacks on: the attempt's own callback names its task.

    Goal (issue 12): duplicate creates <= 20 % of the injected 500-after-create.
    """
    n = 120
    config = SimConfig(
        seed=5,
        default_behavior=ModelBehavior(median_seconds=0.2, sigma=0.2),
        faults=Faults(error_500_after_create=0.1),
    )
    retry = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_time=30.0)
    poll = PollPolicy(first_check=0.05, min_interval=0.05, max_interval=0.5)
    caplog.set_level(logging.WARNING, logger="ruxa_async")
    async with (
        FakeRuxa(config) as fake,
        RuxaClient(
            fake.api_key, base_url=fake.url, callbacks=CallbackServer(), retry=retry, poll=poll
        ) as client,
    ):
        report = await client.run_batch(jobs(n, "cb"))
        recovered = client.statistics().ambiguous_recovered
    stats = fake.stats()
    injected = stats.faults.get("error_500_after_create", 0)
    assert all(o.ok for o in report.outcomes)
    assert injected >= 5, "too few faults injected to measure anything"
    assert stats.duplicate_creates <= 0.2 * injected
    assert recovered >= injected - stats.duplicate_creates
    named = [r.getMessage() for r in caplog.records if "its callback named" in r.getMessage()]
    assert len(named) == recovered
    assert all(m.startswith("job cb") for m in named)


# ------------------------------------------------------------------ lost tasks


async def test_a_task_the_service_forgot_ends_lost(fake: FakeRuxa) -> None:
    """After the service forgets a task, waiting on it raises TaskLostError, not forever."""
    fake.reconfigure(default_behavior=ModelBehavior(median_seconds=30.0, sigma=0.0))
    async with make_client(fake) as client:
        task_id = await client.create_task(MODEL, {"prompt": "forgotten"})
        fake.reset()
        with pytest.raises(TaskLostError) as caught:
            await client.wait(task_id, timeout=30)
        assert isinstance(caught.value, NotFoundError)
        assert caught.value.task_id == task_id
        report = await client.run_batch([Job(model=MODEL, input={}, key="old", task_id=task_id)])
    (outcome,) = report.outcomes
    assert isinstance(outcome.error, TaskLostError)
    assert outcome.task_id == task_id


@pytest.fixture
def make_sim(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    """Start standalone simulators (``make_sim(**config)``) and stop them after the test."""
    with started_sims(functools.partial(SimProcess, tmp_path, key=KEY)) as make:
        yield make


def test_cli_records_lost_tasks_and_resends_them_only_when_asked(
    tmp_path: Path, make_sim: Callable[..., SimProcess]
) -> None:
    """Killed while polling, the service forgets: the resume ends them lost; the flag resends."""
    sim = make_sim(default_behavior={"median_seconds": 60.0, "sigma": 0.0})
    keys = [f"l{i}" for i in range(4)]
    jobs_file = write_jobs(tmp_path / "jobs.jsonl", [nb_job(k, f"lost {k}") for k in keys])
    out = tmp_path / "out"
    journal = out / "journal.sqlite"
    args = ("run", str(jobs_file), "--out", str(out), "--base-url", sim.url, "--no-download")
    args += tuple(FAST_CLI)

    def all_recorded() -> bool:
        rows = journal_jobs(journal)
        return len(rows) == len(keys) and all(t is not None for _, t, _ in rows.values())

    kill_when(start_cli(*args, key=KEY), all_recorded, what="every task recorded")
    urllib.request.urlopen(urllib.request.Request(sim.url + "/_sim/reset", method="POST"))
    sim.configure(default_behavior={"median_seconds": 0.1})

    second = run_cli(*args, key=KEY)
    assert second.returncode == 1, second.stderr
    results = read_results(out)
    assert {r["status"] for r in results} == {"lost"}
    assert all("--resubmit-lost" in r["error"] for r in results)
    assert {s for s, _, _ in journal_jobs(journal).values()} == {"lost"}
    assert sim.stats()["tasks_created"] == 0

    before = sim.stats()["requests"]
    third = run_cli(*args, key=KEY)  # lost stays lost: nothing sent, nothing waited on
    assert third.returncode == 1, third.stderr
    assert sim.stats()["requests"] == before

    fourth = run_cli(*args, "--resubmit-lost", key=KEY)
    assert fourth.returncode == 0, fourth.stderr
    assert {r["status"] for r in read_results(out)} == {"succeeded"}
    assert sim.stats()["tasks_created"] == len(keys)
    assert sim.stats()["duplicate_creates"] == 0
