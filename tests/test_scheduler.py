"""The poll scheduler, driven by a virtual clock: no real sleeping."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from ruxa_async import (
    AuthenticationError,
    ClientClosedError,
    NotFoundError,
    PollPolicy,
    ServerError,
    TaskInfo,
    TaskState,
)
from ruxa_async._scheduler import PollScheduler


class VirtualTime:
    """A clock plus a scheduler waiter that jumps time forward when the loop would sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits = 0

    def clock(self) -> float:
        return self.now

    async def waiter(self, wake: asyncio.Future[None], delay: float) -> None:
        self.waits += 1
        for _ in range(20):  # let in-flight checks finish before time moves
            await asyncio.sleep(0)
            if wake.done():
                return
        self.now += delay


class FakeService:
    """Answers checks from a table of completion times, recording each check's time."""

    def __init__(self, vt: VirtualTime) -> None:
        self.vt = vt
        self.finish_at: dict[str, float] = {}
        self.created_at: dict[str, float] = {}
        self.outcome: dict[str, TaskState] = {}
        self.checks: dict[str, list[float]] = {}
        self.errors: dict[str, list[Exception]] = {}

    async def query(self, task_id: str, tally: object = None) -> TaskInfo:
        self.checks.setdefault(task_id, []).append(self.vt.now)
        await asyncio.sleep(0)
        queued = self.errors.get(task_id)
        if queued:
            raise queued.pop(0)
        if self.vt.now >= self.finish_at[task_id]:
            state = self.outcome.get(task_id, TaskState.SUCCESS)
        else:
            state = TaskState.GENERATING
        stamps = {}
        if task_id in self.created_at and state.is_terminal:
            stamps = {
                "create_time": EPOCH + timedelta(seconds=self.created_at[task_id]),
                "complete_time": EPOCH + timedelta(seconds=self.finish_at[task_id]),
            }
        return TaskInfo(task_id=task_id, state=state, raw_state=state.value, **stamps)


def make(
    policy: PollPolicy,
    typical: Callable[[str | None], float | None] | None = None,
    concurrency: int = 8,
    budget: Callable[[], float | None] | None = None,
) -> tuple[VirtualTime, FakeService, PollScheduler]:
    vt = VirtualTime()
    service = FakeService(vt)
    scheduler = PollScheduler(
        service.query,
        policy,
        concurrency=concurrency,
        typical_seconds=typical,
        clock=vt.clock,
        waiter=vt.waiter,
        rng=random.Random(1),
        budget=budget,
    )
    return vt, service, scheduler


EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
NO_JITTER = PollPolicy(
    jitter=0.0, default_duration=8.0, min_interval=0.5, max_interval=30.0, explore=False
)


async def run_until_done(scheduler: PollScheduler, *futures: asyncio.Future[TaskInfo]) -> None:
    runner = asyncio.create_task(scheduler.run())
    try:
        await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 5)
    finally:
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner


async def test_first_check_near_expected_duration_resolves_in_one_query() -> None:
    """A task that finishes before its expected duration costs exactly one check."""
    _vt, service, scheduler = make(NO_JITTER)
    service.finish_at["a"] = 7.0
    future = scheduler.track("a")
    await run_until_done(scheduler, future)
    assert future.result().succeeded
    assert service.checks["a"] == [8.0]


async def test_later_checks_back_off_geometrically_up_to_the_cap() -> None:
    """Checks after the first are spaced by age*(backoff-1), capped at max_interval."""
    _vt, service, scheduler = make(NO_JITTER)
    service.finish_at["a"] = 100.0
    future = scheduler.track("a")
    await run_until_done(scheduler, future)
    times = service.checks["a"]
    assert times[:4] == [8.0, 12.0, 18.0, 27.0]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) == 30.0
    assert times[-1] >= 100.0
    assert len(times) < 1 + 100 / 5  # far fewer than a fixed 5-second loop


async def test_with_query_budget_to_spare_later_checks_come_at_a_tenth_of_the_age() -> None:
    """One task left and 50 queries/s allowed: the end of a long task is seen within 10 %."""
    _vt, service, scheduler = make(NO_JITTER, budget=lambda: 50.0)
    service.finish_at["a"] = 40.0
    future = scheduler.track("a")
    await run_until_done(scheduler, future)
    times = service.checks["a"]
    assert times[:3] == [8.0, 8.8, pytest.approx(9.68)]
    assert 40.0 <= times[-1] <= 44.0  # backing off by half the age: seen at 40.5 only by luck
    assert len(times) < 20


async def test_many_pending_tasks_on_a_small_budget_back_off_as_usual() -> None:
    """Checks of every pending task at a tenth of its age would overrun 2 queries/s: no change."""
    _vt, service, scheduler = make(NO_JITTER, budget=lambda: 2.0)
    futures = []
    for i in range(10):
        service.finish_at[f"t{i}"] = 100.0
        futures.append(scheduler.track(f"t{i}"))
    await run_until_done(scheduler, *futures)
    assert service.checks["t0"][:4] == [8.0, 12.0, 18.0, 27.0]


async def test_images_and_videos_are_polled_by_their_own_durations() -> None:
    """A 5-second model and a 2-minute model are each checked a handful of times."""
    typical = {"image": 5.0, "video": 120.0}
    _vt, service, scheduler = make(NO_JITTER, typical=typical.get)
    service.finish_at["img"] = 5.5
    service.finish_at["vid"] = 125.0
    futures = [scheduler.track("img", model="image"), scheduler.track("vid", model="video")]
    await run_until_done(scheduler, *futures)
    assert service.checks["img"][0] == 5.0
    assert service.checks["vid"][0] == 120.0
    assert len(service.checks["img"]) == 2
    assert len(service.checks["vid"]) == 2


async def test_most_overdue_tasks_are_checked_first() -> None:
    """With one check at a time, overdue tasks go in order of how long they have waited."""
    vt, service, scheduler = make(PollPolicy(jitter=0.0, first_check=1.0), concurrency=1)
    order = ["c", "a", "b"]
    for i, task_id in enumerate(order):
        service.finish_at[task_id] = 0.0
        vt.now = i * 0.1
        scheduler.track(task_id)
    vt.now = 50.0  # everything is long overdue
    futures = [scheduler.track(t) for t in order]
    await run_until_done(scheduler, *futures)
    first_checks = sorted(order, key=lambda t: service.checks[t][0])
    assert first_checks == order


async def test_auth_error_fails_every_pending_task_at_once() -> None:
    """A 401 while polling fails all pending futures with AuthenticationError."""
    _vt, service, scheduler = make(NO_JITTER, concurrency=1)
    for task_id in "abc":
        service.finish_at[task_id] = 1000.0
    service.errors["a"] = [AuthenticationError("bad key", code=401, http_status=401)]
    futures = [scheduler.track(t) for t in "abc"]
    await run_until_done(scheduler, *futures)
    for future in futures:
        assert isinstance(future.exception(), AuthenticationError)
    assert sum(len(v) for v in service.checks.values()) == 1
    assert scheduler.pending == 0


async def test_not_found_gives_up_after_the_policy_limit() -> None:
    """An unknown task id fails with NotFoundError after max_not_found checks."""
    _vt, service, scheduler = make(PollPolicy(jitter=0.0, first_check=1.0, max_not_found=3))
    service.errors["ghost"] = [
        NotFoundError("recordInfo is null", code=422, http_status=200) for _ in range(5)
    ]
    service.finish_at["ghost"] = 0.0
    future = scheduler.track("ghost")
    await run_until_done(scheduler, future)
    assert isinstance(future.exception(), NotFoundError)
    assert len(service.checks["ghost"]) == 3


async def test_transient_errors_are_retried_later() -> None:
    """A 5xx during a check reschedules the task; it still resolves."""
    _vt, service, scheduler = make(NO_JITTER)
    service.finish_at["a"] = 0.0
    service.errors["a"] = [ServerError("oops", code=500, http_status=500)] * 2
    future = scheduler.track("a")
    await run_until_done(scheduler, future)
    assert future.result().succeeded
    assert len(service.checks["a"]) == 3
    assert scheduler.check_errors == 2


async def test_callback_resolves_first_and_duplicates_change_nothing() -> None:
    """A terminal snapshot fed from outside resolves the same future; repeats are ignored."""
    _vt, service, scheduler = make(NO_JITTER)
    service.finish_at["a"] = 1000.0
    future = scheduler.track("a", callbacks=True)
    done = TaskInfo(task_id="a", state=TaskState.SUCCESS, result_urls=("u",))
    late = TaskInfo(task_id="a", state=TaskState.GENERATING)
    assert scheduler.resolve(done) is True
    assert scheduler.resolve(done) is False
    assert scheduler.resolve(late) is False
    assert scheduler.resolve(TaskInfo(task_id="zzz", state=TaskState.SUCCESS)) is False
    assert future.result() is done
    assert scheduler.callbacks_ignored == 3
    assert service.checks == {}


async def test_callback_tasks_wait_for_the_safety_net_grace() -> None:
    """With callbacks on, the first poll comes only after the grace period."""
    policy = PollPolicy(jitter=0.0, first_check=10.0, callback_grace_factor=3.0, callback_grace=5.0)
    _vt, service, scheduler = make(policy)
    service.finish_at["a"] = 1.0
    future = scheduler.track("a", callbacks=True)
    await run_until_done(scheduler, future)
    assert service.checks["a"] == [35.0]


async def test_close_fails_pending_with_client_closed() -> None:
    """Closing fails still-pending futures with ClientClosedError; later tracks fail too."""
    _vt, _service, scheduler = make(NO_JITTER)
    future = scheduler.track("a")
    scheduler.close()
    assert isinstance(future.exception(), ClientClosedError)
    assert isinstance(scheduler.track("b").exception(), ClientClosedError)


async def test_learned_durations_replace_the_prior() -> None:
    """After a few tasks, the first check follows the service's durations, not the catalogue."""
    vt, service, scheduler = make(NO_JITTER, typical={"m": 20.0}.get)
    assert scheduler.expected_seconds("m") == 20.0
    for i in range(3):
        service.created_at[f"t{i}"] = vt.now
        service.finish_at[f"t{i}"] = vt.now + 2.0
        future = scheduler.track(f"t{i}", model="m")
        await run_until_done(scheduler, future)
    assert scheduler.expected_seconds("m") == pytest.approx(2.0)
    assert scheduler.expected_seconds("other") == 8.0
    service.finish_at["next"] = vt.now + 2.0
    start = vt.now
    future = scheduler.track("next", model="m")
    await run_until_done(scheduler, future)
    assert service.checks["next"] == [pytest.approx(start + 2.0)]


async def test_one_wake_up_serves_many_tasks_due_together() -> None:
    """Ten thousand tasks due at once need one timer wait, not one per task."""
    vt, service, scheduler = make(PollPolicy(jitter=0.0, first_check=5.0), concurrency=64)
    futures = []
    for i in range(10_000):
        service.finish_at[str(i)] = 0.0
        futures.append(scheduler.track(str(i)))
    await run_until_done(scheduler, *futures)
    assert all(f.result().succeeded for f in futures)
    assert vt.waits <= 3
    assert sum(len(v) for v in service.checks.values()) == 10_000


async def test_non_terminal_states_are_reported_once_each() -> None:
    """on_state hears each new state once, not on every check."""
    _vt, service, scheduler = make(NO_JITTER)
    service.finish_at["a"] = 40.0
    seen: list[TaskState] = []
    future = scheduler.track("a", on_state=seen.append)
    await run_until_done(scheduler, future)
    assert seen == [TaskState.GENERATING]


async def test_a_callback_that_beats_the_create_reply_still_resolves() -> None:
    """A terminal callback for a not-yet-tracked id resolves the task once it is tracked."""
    _vt, service, scheduler = make(NO_JITTER)
    done = TaskInfo(task_id="early", state=TaskState.SUCCESS)
    assert scheduler.resolve(done) is False
    future = scheduler.track("early", callbacks=True)
    assert future.done()
    assert future.result() is done
    assert scheduler.statistics().callbacks_early == 1
    assert service.checks == {}


async def test_a_fleet_callback_is_held_for_a_bounded_time() -> None:
    """A callback from the fleet waits 10 s for its task to be tracked here, then is dropped."""
    vt, _service, scheduler = make(NO_JITTER)
    for task_id in ("soon", "late"):
        info = TaskInfo(task_id=task_id, state=TaskState.SUCCESS)
        assert scheduler.resolve(info, source="fleet") is False
    vt.now += 9.0
    assert scheduler.track("soon").done()
    vt.now += 2.0
    assert not scheduler.track("late").done()  # too old: polling resolves it
    assert scheduler.statistics().callbacks_ignored == 0  # most are other processes' tasks


async def test_unknown_models_are_explored_then_pending_tasks_replanned() -> None:
    """With no estimate, three explorers go early; then the rest move to the learned time."""
    policy = PollPolicy(jitter=0.0, min_interval=0.5, max_interval=30.0)
    _vt, service, scheduler = make(policy, typical={"m": 16.0}.get)
    futures = []
    for i in range(10):
        service.created_at[str(i)] = 0.0
        service.finish_at[str(i)] = 3.0
        futures.append(scheduler.track(str(i), model="m"))
    await run_until_done(scheduler, *futures)
    first_checks = sorted(service.checks[str(i)][0] for i in range(10))
    assert first_checks[:3] == [2.0, 2.0, 2.0]  # 16 s prior / 8
    assert first_checks[3:] == [pytest.approx(3.0)] * 7  # learned 3 s, not the 16 s prior
    assert scheduler.expected_seconds("m") == pytest.approx(3.0)
    assert sum(len(v) for v in service.checks.values()) == 3 * 2 + 7


async def test_exploration_is_off_when_disabled() -> None:
    """explore=False trusts the prior for the first check."""
    _vt, service, scheduler = make(NO_JITTER, typical={"m": 16.0}.get)
    service.finish_at["a"] = 3.0
    future = scheduler.track("a", model="m")
    await run_until_done(scheduler, future)
    assert service.checks["a"] == [16.0]


async def test_safety_net_learns_when_callbacks_arrive() -> None:
    """After a few callbacks, the safety-net check follows their timing, not the fixed grace."""
    policy = PollPolicy(
        jitter=0.0, default_duration=1.0, explore=False, callback_grace=30.0, min_interval=0.5
    )
    vt, service, scheduler = make(policy)
    assert scheduler.safety_net_seconds("m") == 33.0
    delivered = [scheduler.track(f"c{i}", model="m", callbacks=True) for i in range(8)]
    service.finish_at["lost"] = 1.0
    lost = scheduler.track("lost", model="m", callbacks=True)  # its callback never comes
    vt.now = 1.0
    for i in range(8):
        assert scheduler.resolve(TaskInfo(task_id=f"c{i}", state=TaskState.SUCCESS))
    assert all(f.done() for f in delivered)
    assert scheduler.safety_net_seconds("m") == 1.5
    assert scheduler.statistics().safety_net_seconds == {"m": 1.5}
    await run_until_done(scheduler, lost)
    # Replanned when the timing was learned: it has outlived those callbacks, so from now.
    assert service.checks["lost"] == [2.5]
    late = scheduler.track("late", model="m", callbacks=True)
    service.finish_at["late"] = vt.now
    start = vt.now
    await run_until_done(scheduler, late)
    assert service.checks["late"] == [start + 1.5]


async def test_safety_net_keeps_checking_a_slow_task_at_the_learned_pace() -> None:
    """A task still running at its learned safety-net check is checked again soon, not in 30 s."""
    policy = PollPolicy(jitter=0.0, default_duration=1.0, explore=False, max_interval=30.0)
    vt, service, scheduler = make(policy)
    for i in range(8):
        scheduler.track(f"c{i}", model="m", callbacks=True)
    vt.now = 2.0
    for i in range(8):
        scheduler.resolve(TaskInfo(task_id=f"c{i}", state=TaskState.SUCCESS))
    service.finish_at["slow"] = vt.now + 5.0
    slow = scheduler.track("slow", model="m", callbacks=True)
    await run_until_done(scheduler, slow)
    checks = [t - 2.0 for t in service.checks["slow"]]
    assert checks[0] == 3.0  # 1.5 x the learned 2 s
    assert all(b - a <= 3.0 for a, b in itertools.pairwise(checks))
    assert len(checks) <= 3
