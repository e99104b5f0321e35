"""The orchestration engine end to end: handles, fan-out, account errors, deadlines, chaos."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterator

import pytest

from ruxa_async import (
    AuthenticationError,
    ClientClosedError,
    InvalidInputError,
    Job,
    NotSubmittedError,
    OutcomeStatus,
    PollPolicy,
    ProgressEvent,
    RateLimits,
    RetryPolicy,
    RuxaClient,
    TaskFailedError,
    TaskState,
    TaskTimeoutError,
)
from ruxa_async.testing import FakeRuxa, Faults, ModelBehavior, RateLimit, SimConfig

from .conftest import make_client

MODEL = "google/nano-banana"


def jobs(n: int, model: str = MODEL) -> list[Job]:
    return [Job(model=model, input={"prompt": f"prompt {i}"}, key=f"k{i}") for i in range(n)]


FAST = ModelBehavior(median_seconds=0.05, sigma=0.0)


def slow(seconds: float) -> SimConfig:
    return SimConfig(default_behavior=ModelBehavior(median_seconds=seconds, sigma=0.0), seed=5)


async def test_submit_returns_an_awaitable_handle(fake: FakeRuxa) -> None:
    """await handle gives the TaskInfo; task_id, done() and state follow the task."""
    async with make_client(fake) as client:
        handle = await client.submit(MODEL, {"prompt": "p"})
        assert handle.task_id.startswith("task_")
        assert not handle.done()
        assert handle.state in (TaskState.WAITING, TaskState.QUEUING, TaskState.GENERATING)
        info = await handle
        assert handle.done()
        assert handle.state is TaskState.SUCCESS
        assert info.task_id == handle.task_id
        assert handle.info is info


async def test_failed_task_raises_task_failed_error() -> None:
    """A task that ends in fail raises TaskFailedError with its code and message."""
    config = SimConfig(default_behavior=ModelBehavior(median_seconds=0.05, fail_rate=1.0))
    async with FakeRuxa(config) as sim, make_client(sim) as client:
        handle = await client.submit(MODEL, {"prompt": "p"})
        with pytest.raises(TaskFailedError) as caught:
            await handle
        assert caught.value.task_id == handle.task_id
        assert caught.value.fail_code == "500"
        failed = await handle.wait(raise_on_failure=False)
        assert failed.failed


async def test_timeout_raises_with_task_id_and_tracking_goes_on() -> None:
    """wait(timeout) raises TaskTimeoutError naming the task; a later wait still succeeds."""
    async with FakeRuxa(slow(0.6)) as sim, make_client(sim) as client:
        handle = await client.submit(MODEL, {"prompt": "p"})
        with pytest.raises(TaskTimeoutError) as caught:
            await handle.wait(timeout=0.05)
        assert caught.value.task_id == handle.task_id
        assert "may still finish" in str(caught.value)
        assert (await handle.wait(timeout=10)).succeeded


async def test_cancelling_one_waiter_leaves_the_others() -> None:
    """Cancelling one await of a handle does not disturb other awaits or other tasks."""
    async with FakeRuxa(slow(0.3)) as sim, make_client(sim) as client:
        handle = await client.submit(MODEL, {"prompt": "p"})
        other = await client.submit(MODEL, {"prompt": "q"})
        first = asyncio.create_task(handle.wait())
        second = asyncio.create_task(handle.wait())
        await asyncio.sleep(0)  # both waiters are now awaiting the handle
        assert not handle.done()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert (await second).succeeded
        assert (await other).succeeded


async def test_generate_submits_and_waits(client: RuxaClient) -> None:
    """generate() is submit plus wait."""
    info = await client.generate(MODEL, {"prompt": "p"}, timeout=10)
    assert info.succeeded


async def test_wait_reattaches_from_another_client() -> None:
    """A task created by one client is awaited by another (as another process would)."""
    async with FakeRuxa(slow(0.3)) as sim:
        async with make_client(sim) as first:
            task_id = await first.create_task(MODEL, {"prompt": "p"})
        async with make_client(sim) as second:
            info = await second.wait(task_id, timeout=10)
            assert info.task_id == task_id
            assert info.succeeded
            handle = second.attach(task_id)
            assert (await handle).succeeded
        assert sim.stats().creates == 1


async def test_wait_for_unknown_task_is_not_found(client: RuxaClient) -> None:
    """Re-attaching to a task id the service does not know fails with NotFoundError."""
    from ruxa_async import NotFoundError

    with pytest.raises(NotFoundError):
        await client.wait("task_gemini-2.5-flash-image_1766304530229_00000000", timeout=10)


async def test_key_revoked_while_polling_fails_every_handle_at_once() -> None:
    """A 401 during polling fails all pending handles with AuthenticationError, no retries."""
    async with FakeRuxa(slow(5.0)) as sim, make_client(sim) as client:
        handles = [await client.submit(MODEL, {"prompt": f"p{i}"}) for i in range(20)]
        before = sim.stats().queries
        sim.reconfigure(api_key="sk-rotated-elsewhere")
        results = await asyncio.gather(
            *(h.wait(timeout=10) for h in handles), return_exceptions=True
        )
        assert all(isinstance(r, AuthenticationError) for r in results)
        assert sim.stats().queries - before <= client.rate_limits.max_in_flight


async def test_closing_the_client_fails_pending_handles() -> None:
    """aclose() fails still-pending handles with ClientClosedError instead of hanging."""
    async with FakeRuxa(slow(5.0)) as sim:
        client = make_client(sim)
        async with client:
            handle = await client.submit(MODEL, {"prompt": "p"})
        with pytest.raises(ClientClosedError):
            await handle.wait(timeout=5)


async def test_many_coroutines_share_one_client(client: RuxaClient) -> None:
    """Two hundred concurrent generate() calls on one client all succeed."""
    infos = await asyncio.gather(*(client.generate(MODEL, {"prompt": f"{i}"}) for i in range(200)))
    assert len({i.task_id for i in infos}) == 200


async def test_as_completed_yields_every_job_once(fake: FakeRuxa) -> None:
    """Each job gets exactly one outcome, with its key, task id and info."""
    async with make_client(fake) as client:
        outcomes = [o async for o in client.as_completed(jobs(300))]
    assert sorted(o.index for o in outcomes) == list(range(300))
    assert all(o.ok and o.task_id and o.info for o in outcomes)
    assert {o.key for o in outcomes} == {f"k{i}" for i in range(300)}
    assert fake.stats().tasks_created == 300


async def test_jobs_are_pulled_lazily_within_the_pending_bound(fake: FakeRuxa) -> None:
    """A million-job generator is pulled only as far as max_pending allows."""
    pulled = 0

    def endless() -> Iterator[Job]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield Job(model=MODEL, input={"prompt": f"p{i}"})

    async with make_client(fake) as client:
        taken = 0
        async with client.as_completed(endless(), max_pending=25) as batch:
            async for outcome in batch:
                assert outcome.ok
                taken += 1
                if taken == 60:
                    break
    assert pulled <= 60 + 25 + 1
    assert fake.stats().tasks_created <= 60 + 25


async def test_pending_tasks_never_exceed_max_pending(fake: FakeRuxa) -> None:
    """At no point are more than max_pending jobs created but not yet handed back."""
    live = 0
    peak = 0

    def on_event(event: ProgressEvent) -> None:
        nonlocal live, peak
        if event.kind == "submitted":
            live += 1
            peak = max(peak, live)

    async with make_client(fake) as client:
        async for _ in client.as_completed(jobs(200), max_pending=10, on_event=on_event):
            live -= 1
    assert 1 <= peak <= 10


async def test_one_failure_never_cancels_the_others() -> None:
    """Failed tasks and invalid jobs get their own outcomes; the rest succeed."""
    config = SimConfig(default_behavior=ModelBehavior(median_seconds=0.05, fail_rate=0.3), seed=2)
    bad = [Job(model=MODEL, input={"prompt": "x", "image_size": "7:1"}, key="bad")]
    async with FakeRuxa(config) as sim, make_client(sim) as client:
        report = await client.run_batch(jobs(100) + bad)
    statuses = Counter(o.status for o in report.outcomes)
    assert statuses[OutcomeStatus.SUCCEEDED] + statuses[OutcomeStatus.FAILED] == 100
    assert statuses[OutcomeStatus.FAILED] > 0
    assert isinstance(report.outcomes[-1].error, InvalidInputError)
    assert report.outcomes[-1].error.field == "image_size"
    assert sim.stats().creates == 100
    assert [o.index for o in report.outcomes] == list(range(101))


async def test_bad_key_stops_a_batch_after_one_request() -> None:
    """A rejected key costs one create; every job is reported NOT_SUBMITTED."""
    async with FakeRuxa(SimConfig()) as sim, make_client(sim, api_key="sk-bad") as client:
        report = await client.run_batch(jobs(500))
    assert sim.stats().requests == 1
    assert report.not_submitted == 500
    assert report.stop_reason is not None
    assert "401" in report.stop_reason
    assert all(isinstance(o.error, NotSubmittedError) for o in report.outcomes)
    assert isinstance(report.outcomes[0].error.cause, AuthenticationError)  # type: ignore[union-attr]


async def test_no_credits_stops_submitting_but_keeps_what_was_paid_for() -> None:
    """402 mid-batch: created tasks finish, the rest are NOT_SUBMITTED, nothing is lost."""
    config = SimConfig(credits=4.0 * 30, seed=3)
    async with FakeRuxa(config) as sim, make_client(sim) as client:
        report = await client.run_batch(jobs(100))
    assert report.succeeded == 30
    assert report.not_submitted == 70
    assert report.failed == 0
    assert sim.stats().tasks_created == 30
    assert report.stop_reason is not None
    assert "credits" in report.stop_reason
    assert sim.stats().insufficient_credits <= client.rate_limits.max_in_flight


async def test_batch_deadline_times_out_pending_and_skips_the_rest() -> None:
    """A batch timeout reports pending tasks as TaskTimeoutError and unsent jobs NOT_SUBMITTED."""
    async with FakeRuxa(slow(30.0)) as sim, make_client(sim) as client:
        report = await client.run_batch(jobs(50), max_pending=20, timeout=0.5)
    statuses = Counter(o.status for o in report.outcomes)
    assert statuses[OutcomeStatus.ERROR] == sim.stats().tasks_created
    assert statuses[OutcomeStatus.NOT_SUBMITTED] == 50 - sim.stats().tasks_created
    timed_out = [o for o in report.outcomes if o.status is OutcomeStatus.ERROR]
    assert all(isinstance(o.error, TaskTimeoutError) and o.task_id for o in timed_out)
    assert client.statistics().pending == 0


async def test_reattach_jobs_with_task_ids_are_never_created_again(fake: FakeRuxa) -> None:
    """Jobs carrying a task_id are awaited, not created."""
    async with make_client(fake) as client:
        ids = [await client.create_task(MODEL, {"prompt": f"p{i}"}) for i in range(5)]
        again = [Job(model=MODEL, input={"prompt": f"p{i}"}, task_id=t) for i, t in enumerate(ids)]
        report = await client.run_batch(again)
    assert report.succeeded == 5
    assert [o.task_id for o in report.outcomes] == ids
    assert fake.stats().creates == 5


async def test_progress_events_cover_submitted_state_and_finished(fake: FakeRuxa) -> None:
    """on_event hears submitted, state changes and finished for every job."""
    fake.reconfigure(default_behavior=ModelBehavior(median_seconds=0.4, sigma=0.0))
    events: list[ProgressEvent] = []
    policy = PollPolicy(first_check=0.05, min_interval=0.05, max_interval=0.1, jitter=0.0)
    async with make_client(fake, poll=policy) as client:
        await client.run_batch(jobs(5), on_event=events.append)
    kinds = Counter(e.kind for e in events)
    assert kinds["submitted"] == 5
    assert kinds["finished"] == 5
    assert kinds["state"] >= 5


async def test_thousands_of_jobs_under_limits_and_faults_end_exactly_once() -> None:
    """2,000 jobs with rate limits, 500s and drops: one outcome each, nothing sent while gated."""
    config = SimConfig(
        create_limit=RateLimit(per_second=400, burst=20),
        query_limit=RateLimit(per_second=400, burst=20),
        faults=Faults(error_500_before=0.02, drop_before=0.01, error_500_after_create=0.005),
        default_behavior=ModelBehavior(median_seconds=0.3, sigma=0.5, fail_rate=0.02),
        seed=9,
    )
    retry = RetryPolicy(initial_delay=0.01, max_delay=0.2, max_attempts=8)
    limits = RateLimits(pause_without_retry_after=0.1)
    async with FakeRuxa(config) as sim, make_client(sim, retry=retry, rate_limits=limits) as client:
        report = await client.run_batch(jobs(2000), max_pending=500)
        stats = client.statistics()
    assert len(report.outcomes) == 2000
    assert [o.index for o in report.outcomes] == list(range(2000))
    assert report.succeeded + report.failed == 2000
    assert stats.rate.sent_while_gated == 0
    assert stats.pending == 0
    created_ids = [o.task_id for o in report.outcomes if o.task_id]
    assert len(set(created_ids)) == len(created_ids)
    # duplicates only where a create was retried after it may have reached the service
    assert sim.stats().duplicate_creates <= stats.ambiguous_create_retries


def test_works_under_uvloop() -> None:
    """The client runs a batch inside a uvloop event loop."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> int:
        async with FakeRuxa(SimConfig()) as sim, make_client(sim) as client:
            report = await client.run_batch(jobs(50))
        return report.succeeded

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == 50


async def test_before_create_runs_before_every_create(fake: FakeRuxa) -> None:
    """The hook is awaited before each create is sent: the service has no task for it yet."""
    created_before_hook: dict[str, bool] = {}

    async def record(job: Job) -> None:
        assert job.key is not None
        await asyncio.sleep(0)  # let any create already under way reach the service
        prompts = {task.input["prompt"] for task in fake.tasks()}
        created_before_hook[job.key] = job.input["prompt"] in prompts

    async with make_client(fake) as client:
        report = await client.run_batch(jobs(40), before_create=record)
    assert report.succeeded == 40
    assert created_before_hook == {f"k{i}": False for i in range(40)}
    assert len(fake.tasks()) == 40


async def test_batch_report_counts_only_its_own_requests_under_concurrent_use() -> None:
    """generate() calls sharing the client while a batch runs are not in the batch's report."""
    config = SimConfig(default_behavior=ModelBehavior(median_seconds=0.05, sigma=0.0), seed=9)
    # Each task completes long before its only check: one create plus one query per task.
    poll = PollPolicy(first_check=0.4, jitter=0.0)
    async with FakeRuxa(config) as sim, make_client(sim, poll=poll) as client:

        async def side_calls() -> int:
            infos = await asyncio.gather(
                *(client.generate(MODEL, {"prompt": f"side {i}"}) for i in range(15))
            )
            return len(infos)

        report, side = await asyncio.gather(client.run_batch(jobs(25)), side_calls())
        total = client.statistics().requests_sent
    assert report.succeeded == 25
    assert side == 15
    assert sim.stats().requests == total == 2 * (25 + 15)
    assert report.requests_sent == 2 * 25
    assert report.rate_limited == report.ambiguous_create_retries == 0


async def test_batch_report_counts_its_429s_and_retries() -> None:
    """A batch's report counts every attempt of its creates and checks, 429s included."""
    config = SimConfig(
        create_limit=RateLimit(per_second=40, burst=2), seed=4, default_behavior=FAST
    )
    async with FakeRuxa(config) as sim, make_client(sim) as client:
        report = await client.run_batch(jobs(30))
    stats = sim.stats()
    assert report.succeeded == 30
    assert report.rate_limited == stats.rate_limited_create + stats.rate_limited_query > 0
    assert report.requests_sent == stats.requests


async def test_a_stopped_batch_sends_none_of_its_queued_creates() -> None:
    """After a 402, creates still waiting for the rate controller are never sent."""
    config = SimConfig(credits=4.0 * 3, seed=3)
    limits = RateLimits(max_in_flight=1)  # one request at a time: the rest queue for a permit
    async with FakeRuxa(config) as sim, make_client(sim, rate_limits=limits) as client:
        report = await client.run_batch(jobs(40))
    assert report.succeeded == 3
    assert report.stop_reason is not None
    assert "credits" in report.stop_reason
    # the fourth create got the 402; the other 36 were waiting for the rate controller
    assert sim.stats().insufficient_credits == 1
    assert sim.stats().creates == 4
    assert report.not_submitted == 37


async def test_a_failing_before_create_sends_nothing_for_that_job(fake: FakeRuxa) -> None:
    """If the hook raises (say the journal is down), that job is not created; the batch stops."""

    class JournalDown(Exception):
        pass

    async def refuse(job: Job) -> None:
        if job.key == "k3":
            raise JournalDown("disk full")

    async with make_client(fake) as client:
        with pytest.raises(JournalDown):
            await client.run_batch(jobs(10), before_create=refuse)
    created_prompts = {record.input["prompt"] for record in fake.tasks()}
    assert "prompt 3" not in created_prompts
