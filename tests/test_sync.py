"""SyncRuxaClient: real threads sharing one engine, against a standalone simulator process."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from ruxa_async import (
    ClientClosedError,
    ConfigurationError,
    Job,
    LocalCoordinator,
    OutcomeStatus,
    PollPolicy,
    RateLimits,
    RetryPolicy,
    SyncRuxaClient,
    TaskState,
    TaskTimeoutError,
)
from tests.helpers_proc import NB, ROOT, SimProcess, child_env

SLOW = "google/nano-banana-pro"  # 60 s tasks here: for waits that must still be pending
FAST_POLL = PollPolicy(first_check=0.05, min_interval=0.05, max_interval=0.3, jitter=0.1)
FAST_RETRY = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_time=20.0)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """One standalone simulator for the module; limits make the threads contend."""
    proc = SimProcess(
        tmp_path_factory.mktemp("sim"),
        key="sk-sync",
        default_behavior={"median_seconds": 0.1, "sigma": 0.3},
        models={SLOW: {"median_seconds": 60.0, "sigma": 0.0}},
        create_limit={"per_second": 200, "burst": 20},
        query_limit={"per_second": 200, "burst": 20},
        seed=3,
    )
    try:
        yield proc
    finally:
        proc.close()


def make_sync(sim: SimProcess, **options: Any) -> SyncRuxaClient:
    """A blocking client for ``sim`` with fast polling and retries."""
    options.setdefault("poll", FAST_POLL)
    options.setdefault("retry", FAST_RETRY)
    return SyncRuxaClient(sim.key, base_url=sim.url, **options)


def engine_threads() -> int:
    """How many engine threads are alive in this process."""
    return sum(1 for t in threading.enumerate() if t.name == "ruxa_async engine")


def test_threads_share_one_engine(sim: SimProcess) -> None:
    """20 threads x 10 generates: each resolved once, one engine, one create per task."""
    before = sim.stats()
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    with make_sync(sim, rate_limits=RateLimits(max_in_flight=16)) as client:

        def work(n: int) -> None:
            try:
                for i in range(10):
                    info = client.generate(NB, {"prompt": f"share {n}-{i}"}, timeout=30)
                    with lock:
                        results.append(info.task_id)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(50)
        assert engine_threads() == 1
        stats = client.statistics()
    after = sim.stats()
    assert errors == []
    assert len(results) == len(set(results)) == 200
    assert stats.creates == 200
    assert after["tasks_created"] - before["tasks_created"] == 200
    assert after["duplicate_creates"] == before["duplicate_creates"]
    assert engine_threads() == 0


def test_submit_returns_a_blocking_handle(sim: SimProcess) -> None:
    """submit() gives a handle whose result() blocks; a short timeout stops only that wait."""
    with make_sync(sim) as client:
        slow = client.submit(SLOW, {"prompt": "slow"})
        with pytest.raises(TaskTimeoutError):
            slow.result(timeout=0.05)
        assert not slow.done()
        fast = client.submit(NB, {"prompt": "fast"})
        info = fast.result(timeout=30)
        assert info.state is TaskState.SUCCESS
        assert fast.done()
        assert fast.info == info
        assert client.get_task(fast.task_id).state is TaskState.SUCCESS
        assert client.wait(fast.task_id, timeout=30).task_id == fast.task_id


def test_idempotency_keys_and_coordinators_reach_the_engine(sim: SimProcess) -> None:
    """The sync client takes the async client's coordinator; one key creates one task."""
    before = sim.stats()["tasks_created"]
    with make_sync(sim, coordinator=LocalCoordinator()) as client:
        first = client.submit(NB, {"prompt": "once"}, idempotency_key="job-1")
        again = client.submit(NB, {"prompt": "once"}, idempotency_key="job-1")
        info = client.generate(NB, {"prompt": "once"}, idempotency_key="job-1", timeout=30)
    assert first.task_id == again.task_id == info.task_id
    assert sim.stats()["tasks_created"] == before + 1


def test_create_then_wait_from_another_client(sim: SimProcess) -> None:
    """A task id created by one client is awaited by another (a Celery redelivery's path)."""
    with make_sync(sim) as first:
        task_id = first.create_task(NB, {"prompt": "re-attach"})
    with make_sync(sim) as second:
        info = second.wait(task_id, timeout=30)
    assert info.task_id == task_id
    assert info.state is TaskState.SUCCESS


def test_wait_timeout_raises_task_timeout(sim: SimProcess) -> None:
    """wait() on a task that is still running raises TaskTimeoutError with its id."""
    with make_sync(sim) as client:
        task_id = client.create_task(SLOW, {"prompt": "still running"})
        with pytest.raises(TaskTimeoutError) as caught:
            client.wait(task_id, timeout=0.05)
    assert caught.value.task_id == task_id


def test_as_completed_pulls_jobs_lazily(sim: SimProcess) -> None:
    """as_completed takes jobs only as the pending bound allows, and yields each once."""
    pulled = 0
    thread_ids: set[int] = set()

    def jobs() -> Iterator[Job]:
        nonlocal pulled
        for i in range(60):
            pulled += 1
            thread_ids.add(threading.get_ident())
            yield Job(model=NB, input={"prompt": f"lazy {i}"}, key=str(i))

    seen: list[str | None] = []
    with make_sync(sim) as client:
        batch = client.as_completed(jobs(), max_pending=5)
        first = next(batch)
        assert pulled <= 5 + 2
        seen.append(first.job.key)
        seen.extend(o.job.key for o in batch)
    assert sorted(seen, key=lambda k: int(k or 0)) == [str(i) for i in range(60)]
    assert thread_ids == {threading.get_ident()}


def test_as_completed_left_early_stops_the_batch(sim: SimProcess) -> None:
    """Leaving a `with` block early stops intake; the client keeps working."""
    pulled = 0

    def jobs() -> Iterator[Job]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield Job(model=NB, input={"prompt": f"early {i}"})

    with make_sync(sim) as client:
        with client.as_completed(jobs(), max_pending=4) as batch:
            for _ in zip(range(3), batch, strict=False):
                pass
        assert pulled < 20
        assert client.generate(NB, {"prompt": "after"}, timeout=30).state is TaskState.SUCCESS


def test_as_completed_raises_the_job_source_error(sim: SimProcess) -> None:
    """An error raised by the caller's job iterator comes out of the loop; the client lives on."""

    def jobs() -> Iterator[Job]:
        for i in range(3):
            yield Job(model=NB, input={"prompt": f"broken {i}"})
        raise ValueError("the jobs file is corrupt")

    with make_sync(sim) as client:
        with pytest.raises(ValueError, match="corrupt"):
            list(client.as_completed(jobs()))
        assert client.generate(NB, {"prompt": "still fine"}, timeout=30).succeeded


def test_run_batch_reports_in_input_order(sim: SimProcess) -> None:
    """run_batch returns every outcome in input order, invalid input included."""
    jobs = [Job(model=NB, input={"prompt": f"ordered {i}"}) for i in range(12)]
    jobs.insert(5, Job(model=NB, input={}))  # no prompt: rejected before any request
    with make_sync(sim) as client:
        report = client.run_batch(jobs)
    assert [o.index for o in report.outcomes] == list(range(13))
    statuses = [o.status for o in report.outcomes]
    assert statuses.count(OutcomeStatus.SUCCEEDED) == 12
    assert report.outcomes[5].status is OutcomeStatus.ERROR
    assert report.requests_sent >= 24


def test_close_fails_a_waiting_thread(sim: SimProcess) -> None:
    """close() from one thread ends another thread's unbounded wait with ClientClosedError."""
    client = make_sync(sim)
    handle = client.submit(SLOW, {"prompt": "abandoned"})
    caught: list[BaseException] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        try:
            handle.result()
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    started.wait(10)
    client.close()
    thread.join(30)
    assert not thread.is_alive()
    assert len(caught) == 1
    assert isinstance(caught[0], ClientClosedError)
    with pytest.raises(ClientClosedError):
        client.statistics()


def test_missing_key_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key and no RUXA_API_KEY: ConfigurationError before any thread starts."""
    monkeypatch.delenv("RUXA_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="RUXA_API_KEY"):
        SyncRuxaClient(base_url="http://127.0.0.1:9")
    assert engine_threads() == 0


async def test_blocking_call_inside_event_loop_is_refused(sim: SimProcess) -> None:
    """A blocking call from async code raises at once and names RuxaClient."""
    client = make_sync(sim)
    try:
        with pytest.raises(RuntimeError, match="RuxaClient"):
            client.generate(NB, {"prompt": "x"})
        with pytest.raises(RuntimeError, match="RuxaClient"):
            client.statistics()
        assert engine_threads() == 0  # refused before any engine started
    finally:
        client.close()


def test_call_from_the_engine_thread_is_refused(sim: SimProcess) -> None:
    """A progress callback (on the engine thread) calling the client fails fast: no deadlock."""
    refused: list[BaseException] = []
    with make_sync(sim) as client:

        def on_event(event: Any) -> None:
            if event.kind == "finished":
                try:
                    client.statistics()
                except RuntimeError as exc:
                    refused.append(exc)

        report = client.run_batch([Job(model=NB, input={"prompt": "cb"})], on_event=on_event)
    assert report.succeeded == 1
    assert len(refused) == 1
    assert "RuxaClient" in str(refused[0])


def test_sync_view_example_runs() -> None:
    """examples/sync_view.py serves four concurrent views from one client and exits 0."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sync_view.py")],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("HTTP 200") == 4
    assert "4 views shared one client: 4 creates" in done.stdout
    assert done.stderr == ""
