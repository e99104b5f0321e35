"""The one polling coroutine: every pending task id in a due-time heap.

Each pass it takes the task that is most overdue, checks it through the rate
controller (at most ``concurrency`` checks at once, so when the query budget is
the constraint the longest-waiting tasks go first), and either resolves the
task's future or puts it back in the heap at its next check time. There is no
coroutine and no timer per task: a pending task is one small record, one heap
entry and one future.

Futures resolve with the terminal :class:`TaskInfo` (success *or* failure); the
handle turns a failure into :class:`TaskFailedError`. Callbacks feed the same
futures through :meth:`PollScheduler.resolve`; whichever arrives first wins.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from ._config import PollPolicy
from ._errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    ClientClosedError,
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    ServerError,
    ServiceUnavailableError,
    TaskLostError,
)
from ._models import TaskInfo, TaskState

__all__ = ["PollScheduler", "SchedulerStatistics"]

log = logging.getLogger("ruxa_async")

QueryFn = Callable[[str, Any], Awaitable[TaskInfo]]
"""``query(task_id, tally)``: check one task once; ``tally`` is its owner's, from ``track``."""
_EARLY_LIMIT = 4096  # terminal callbacks kept for ids not (yet) tracked
Waiter = Callable[["asyncio.Future[None]", float], Awaitable[None]]


@attrs.frozen(kw_only=True)
class SchedulerStatistics:
    """A snapshot of the poll scheduler."""

    pending: int
    checks: int
    check_errors: int
    resolved_by_poll: int
    resolved_by_callback: int
    callbacks_ignored: int
    callbacks_early: int
    overdue: int
    expected_seconds: dict[str, float]
    safety_net_seconds: dict[str, float] = attrs.field(factory=dict)


class _Entry:
    __slots__ = (
        "callbacks",
        "checks",
        "created_at",
        "due",
        "errors",
        "exploring",
        "future",
        "in_check",
        "model",
        "not_found",
        "on_state",
        "seq",
        "state",
        "tally",
        "task_id",
    )

    def __init__(
        self, task_id: str, model: str | None, future: asyncio.Future[TaskInfo], now: float
    ) -> None:
        self.task_id = task_id
        self.model = model
        self.future = future
        self.created_at = now
        self.due = now
        self.seq = 0
        self.checks = 0
        self.errors = 0
        self.not_found = 0
        self.callbacks = False
        self.in_check = False
        self.exploring = False
        self.state = TaskState.WAITING
        self.on_state: Callable[[TaskState], None] | None = None
        self.tally: Any = None  # the owner's request counters, handed to every check


_LEARNED_AFTER = 3  # observed durations before the estimate replaces the prior
_EXPLORERS = 3  # tasks of a still-unknown model that are checked early to learn its duration
_EXPLORE_FRACTION = 0.125  # an explorer's first check, as a fraction of the prior


class _DurationModel:
    """Running estimate of a model's typical duration: an EWMA of log-seconds."""

    __slots__ = ("count", "explorers", "mean_log")

    def __init__(self) -> None:
        self.count = 0
        self.mean_log = 0.0
        self.explorers = 0

    def observe(self, seconds: float) -> None:
        value = math.log(max(seconds, 0.01))
        self.count += 1
        weight = max(1.0 / self.count, 0.05)
        self.mean_log += weight * (value - self.mean_log)

    @property
    def median(self) -> float:
        return math.exp(self.mean_log)


_CALLBACKS_LEARNED_AFTER = 8  # callbacks seen before their timing replaces the fixed grace
_CALLBACK_WINDOW = 128  # the most recent callback delays kept per model


class _CallbackDelays:
    """How long a model's callbacks took to arrive after tracking: a high quantile of the last few.

    The safety-net check of a task with callbacks is planned from this, so a lost
    callback costs a few typical durations instead of a fixed grace period.
    """

    __slots__ = ("_cached", "_next", "count", "samples")

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.count = 0
        self._next = 0
        self._cached: tuple[float, float] | None = None

    def observe(self, seconds: float) -> None:
        if len(self.samples) < _CALLBACK_WINDOW:
            self.samples.append(seconds)
        else:
            self.samples[self._next] = seconds
            self._next = (self._next + 1) % _CALLBACK_WINDOW
        self.count += 1
        if self.count <= _CALLBACKS_LEARNED_AFTER or self.count % 8 == 0:
            self._cached = None  # re-sorted every few samples, not on every track

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the recent delays, or None while too few were seen."""
        if self.count < _CALLBACKS_LEARNED_AFTER:
            return None
        if self._cached is None or self._cached[0] != q:
            ordered = sorted(self.samples)
            self._cached = (q, ordered[min(len(ordered) - 1, int(q * len(ordered)))])
        return self._cached[1]


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _loop_wait(wake: asyncio.Future[None], delay: float) -> None:
    loop = asyncio.get_running_loop()
    handle = loop.call_later(delay, _settle, wake)
    try:
        await wake
    finally:
        handle.cancel()


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class PollScheduler:
    """Owns every pending task id of one client and resolves one future per task.

    ``query`` checks one task once (through the rate controller) and raises
    the SDK's errors; ``concurrency`` bounds the checks under way (the client
    passes its rate controller's in-flight bound, so checks never queue behind
    it); ``typical_seconds`` gives a model's prior duration (from
    the catalogue). ``clock`` and ``waiter`` are injectable for tests.
    """

    def __init__(
        self,
        query: QueryFn,
        policy: PollPolicy,
        *,
        concurrency: int = 32,
        typical_seconds: Callable[[str | None], float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        waiter: Waiter = _loop_wait,
        rng: random.Random | None = None,
    ) -> None:
        self._query = query
        self.policy = policy
        self._concurrency = concurrency
        self._typical = typical_seconds
        self._clock = clock
        self._waiter = waiter
        self._rng = rng or random.Random()
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._wake: asyncio.Future[None] | None = None
        self._next_wake_at = math.inf
        self._slots = asyncio.Semaphore(concurrency)
        self._checks_running: set[asyncio.Task[None]] = set()
        self._durations: dict[str | None, _DurationModel] = {}
        self._callback_delays: dict[str | None, _CallbackDelays] = {}
        self._closed: BaseException | None = None
        self._early: collections.OrderedDict[str, TaskInfo] = collections.OrderedDict()
        self.checks = 0
        self.check_errors = 0
        self.resolved_by_poll = 0
        self.resolved_by_callback = 0
        self.callbacks_ignored = 0
        self.callbacks_early = 0

    # ------------------------------------------------------------------ intake

    def track(
        self,
        task_id: str,
        *,
        model: str | None = None,
        callbacks: bool = False,
        on_state: Callable[[TaskState], None] | None = None,
        tally: Any = None,
    ) -> asyncio.Future[TaskInfo]:
        """Start watching ``task_id``; return its future (the same one if already watched).

        ``on_state`` is called with each new non-terminal state a check sees;
        ``tally`` is passed to every check of the task (its owner's counters).
        """
        entry = self._entries.get(task_id)
        if entry is not None:
            entry.callbacks = entry.callbacks and callbacks
            return entry.future
        future: asyncio.Future[TaskInfo] = asyncio.get_running_loop().create_future()
        if self._closed is not None:
            future.set_exception(self._closed)
            future.add_done_callback(_mark_retrieved)
            return future
        now = self._clock()
        entry = _Entry(task_id, model, future, now)
        entry.callbacks = callbacks
        entry.on_state = on_state
        entry.tally = tally
        self._entries[task_id] = entry
        early = self._early.pop(task_id, None) if self._early else None
        if early is not None:  # its callback beat the create reply
            self.callbacks_early += 1
            self.resolved_by_callback += 1
            self._finish(entry, early)
            return future
        self._schedule(entry, now + self._first_delay(entry))
        return future

    def forget(self, task_id: str) -> None:
        """Stop watching ``task_id`` (its future, if still pending, is left unresolved)."""
        entry = self._entries.pop(task_id, None)
        if entry is not None and entry.exploring:
            entry.exploring = False
            self._durations[entry.model].explorers -= 1

    def last_state(self, task_id: str) -> TaskState | None:
        """The last state seen for a pending task, or None if it is not being watched."""
        entry = self._entries.get(task_id)
        return entry.state if entry is not None else None

    @property
    def pending(self) -> int:
        """How many tasks are being watched."""
        return len(self._entries)

    # -------------------------------------------------------------- resolution

    def resolve(self, info: TaskInfo, *, source: str = "callback") -> bool:
        """Feed a task snapshot from outside (a callback); True if it resolved a pending task.

        Non-terminal snapshots only update the last known state; snapshots for
        task ids this scheduler does not watch change nothing, except that the
        latest few thousand terminal ones are kept, so a callback that beats its
        own create reply still resolves the task when it is tracked.
        """
        entry = self._entries.get(info.task_id)
        if entry is None or entry.future.done():
            self.callbacks_ignored += 1
            if entry is None and info.is_terminal and source == "callback":
                self._early[info.task_id] = info  # kept in case its create reply is still coming
                if len(self._early) > _EARLY_LIMIT:
                    self._early.popitem(last=False)
            return False
        if not info.is_terminal:
            if entry.state is TaskState.WAITING or entry.state is TaskState.UNKNOWN:
                entry.state = info.state
            return False
        self._finish(entry, info)
        if source == "callback":
            self.resolved_by_callback += 1
            self._learn_callback(entry)
        else:
            self.resolved_by_poll += 1
        return True

    def fail_all(self, error: BaseException) -> None:
        """Fail every pending future with ``error`` and stop watching them."""
        entries = list(self._entries.values())
        self._entries.clear()
        self._heap.clear()
        for entry in entries:
            if not entry.future.done():
                entry.future.set_exception(error)
                entry.future.add_done_callback(_mark_retrieved)

    def _finish(self, entry: _Entry, info: TaskInfo) -> None:
        self._entries.pop(entry.task_id, None)
        entry.state = info.state
        self._learn(entry, info)
        if not entry.future.done():
            entry.future.set_result(info)

    def _fail(self, entry: _Entry, error: BaseException) -> None:
        self._entries.pop(entry.task_id, None)
        if entry.exploring:
            entry.exploring = False
            self._durations[entry.model].explorers -= 1
        if not entry.future.done():
            entry.future.set_exception(error)
            entry.future.add_done_callback(_mark_retrieved)

    # ------------------------------------------------------------ the schedule

    def expected_seconds(self, model: str | None) -> float:
        """Expected duration of ``model``: learned, else the catalogue's, else the default."""
        if self.policy.first_check is not None:
            return self.policy.first_check
        learned = self._durations.get(model)
        if learned is not None and learned.count >= _LEARNED_AFTER:
            return learned.median
        prior = self._typical(model) if self._typical is not None else None
        return prior if prior is not None else self.policy.default_duration

    def _jitter(self, delay: float) -> float:
        j = self.policy.jitter
        return delay * self._rng.uniform(1.0 - j, 1.0 + j) if j else delay

    def safety_net_seconds(self, model: str | None) -> float:
        """How long after tracking a task with callbacks its first safety-net check comes."""
        policy = self.policy
        delays = self._callback_delays.get(model)
        learned = delays.quantile(policy.callback_quantile) if delays is not None else None
        if learned is not None:
            return max(policy.callback_min_grace, policy.callback_quantile_factor * learned)
        expected = self.expected_seconds(model)
        return policy.callback_grace_factor * expected + policy.callback_grace

    def _first_delay(self, entry: _Entry) -> float:
        expected = self.expected_seconds(entry.model)
        if entry.callbacks:
            return self.safety_net_seconds(entry.model)
        if self.policy.explore and self.policy.first_check is None:
            model = self._durations.setdefault(entry.model, _DurationModel())
            if model.count < _LEARNED_AFTER and model.explorers < _EXPLORERS:
                # Nothing learned yet: check a few tasks early (then geometrically)
                # so the estimate comes from the service, not from the prior.
                model.explorers += 1
                entry.exploring = True
                return max(self.policy.min_interval, expected * _EXPLORE_FRACTION)
        return self._jitter(
            max(self.policy.min_interval, expected * self.policy.first_check_factor)
        )

    def _next_delay(self, entry: _Entry, now: float) -> float:
        policy = self.policy
        if entry.callbacks:
            age = now - entry.created_at
            step = min(policy.max_interval, self.safety_net_seconds(entry.model))
            return self._jitter(min(policy.max_interval * 4, max(step, age / 2)))
        age = max(now - entry.created_at, policy.min_interval)
        delay = age * (policy.backoff - 1.0)
        return self._jitter(min(policy.max_interval, max(policy.min_interval, delay)))

    def _error_delay(self, entry: _Entry) -> float:
        ceiling = min(self.policy.max_interval, self.policy.min_interval * 2.0**entry.errors)
        return self._rng.uniform(ceiling / 2, ceiling)

    def _schedule(self, entry: _Entry, due: float) -> None:
        self._seq += 1
        entry.seq = self._seq
        entry.due = due
        heapq.heappush(self._heap, (due, self._seq, entry.task_id))
        if due < self._next_wake_at and self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _learn(self, entry: _Entry, info: TaskInfo) -> None:
        model = self._durations.setdefault(entry.model, _DurationModel())
        if entry.exploring:
            entry.exploring = False
            model.explorers -= 1
        if not info.succeeded and not info.failed:
            return
        if info.create_time is not None and info.complete_time is not None:
            seconds = (info.complete_time - info.create_time).total_seconds()
        else:
            seconds = self._clock() - entry.created_at
        if seconds > 0:
            model.observe(seconds)
            if model.count == _LEARNED_AFTER:
                moved = self._replan(entry.model)
                log.debug(
                    "learned %s takes about %.2f s; moved %d first checks earlier",
                    entry.model,
                    self.expected_seconds(entry.model),
                    moved,
                )

    def _learn_callback(self, entry: _Entry) -> None:
        delays = self._callback_delays.setdefault(entry.model, _CallbackDelays())
        delays.observe(max(self._clock() - entry.created_at, 0.0))
        if delays.count == _CALLBACKS_LEARNED_AFTER:
            moved = self._replan(entry.model, callbacks=True)
            log.debug(
                "learned %s callbacks arrive within about %.2f s; safety-net checks at %.2f s "
                "(%d moved earlier)",
                entry.model,
                delays.quantile(self.policy.callback_quantile),
                self.safety_net_seconds(entry.model),
                moved,
            )

    def _replan(self, model: str | None, *, callbacks: bool = False) -> int:
        """Bring forward first checks that were planned from a prior, now the model is learned."""
        moved = 0
        now = self._clock()
        for entry in self._entries.values():
            if entry.model != model or entry.checks or entry.in_check:
                continue
            if entry.callbacks is not callbacks:
                continue
            # A task still waiting for its callback has outlived the fastest ones the estimate
            # was learned from, so its safety net counts from now, not from its creation.
            start = now if callbacks else entry.created_at
            due = start + self._first_delay(entry)
            if due < entry.due:
                self._schedule(entry, due)
                moved += 1
        return moved

    # ---------------------------------------------------------------- the loop

    async def run(self) -> None:
        """The scheduler's one coroutine; runs until cancelled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                entry = self._pop_due()
                if entry is None:
                    self._wake = loop.create_future()
                    delay = self._next_wake_at - self._clock()
                    if self._heap:
                        await self._waiter(self._wake, max(delay, 0.0))
                    else:
                        await self._wake
                    self._wake = None
                    continue
                await self._slots.acquire()
                if self._entries.get(entry.task_id) is not entry:
                    self._slots.release()
                    continue
                entry.in_check = True
                task = loop.create_task(self._check(entry))
                self._checks_running.add(task)
                task.add_done_callback(self._checks_running.discard)
        finally:
            for task in list(self._checks_running):
                task.cancel()

    def _pop_due(self) -> _Entry | None:
        """Pop the most overdue live entry if it is due; else set the next wake time."""
        heap = self._heap
        now = self._clock()
        while heap:
            due, seq, task_id = heap[0]
            entry = self._entries.get(task_id)
            if entry is None or entry.seq != seq:
                heapq.heappop(heap)
                continue
            if due > now:
                self._next_wake_at = due
                return None
            heapq.heappop(heap)
            return entry
        self._next_wake_at = math.inf
        return None

    async def _check(self, entry: _Entry) -> None:
        if self._closed is not None:
            return  # the client closed while this check waited for its first turn
        try:
            self.checks += 1
            entry.checks += 1
            info = await self._query(entry.task_id, entry.tally)
        except AuthenticationError as exc:
            log.error("polling stopped: the API key was rejected (%s)", exc.message or exc.code)
            self.fail_all(exc)
        except asyncio.CancelledError:
            raise
        except NotFoundError as exc:
            self.check_errors += 1
            entry.not_found += 1
            if entry.not_found >= self.policy.max_not_found:
                self._fail(entry, TaskLostError(entry.task_id, exc))
            else:
                entry.errors += 1
                self._reschedule(entry, self._error_delay(entry))
        except RateLimitError:
            self.check_errors += 1
            self._reschedule(entry, 0.0)
        except ServiceUnavailableError as exc:  # the outage outlasted its bound
            self.check_errors += 1
            self._fail(entry, exc)
        except (APIConnectionError, ServerError, MalformedResponseError) as exc:
            self.check_errors += 1
            entry.errors += 1
            log.debug("check of %s failed (%s); trying again later", entry.task_id, exc)
            self._reschedule(entry, self._error_delay(entry))
        except APIStatusError as exc:
            self.check_errors += 1
            self._fail(entry, exc)
        except Exception as exc:
            log.exception("unexpected error while checking task %s", entry.task_id)
            self._fail(entry, exc)
        else:
            entry.errors = 0
            entry.not_found = 0
            if info.is_terminal:
                if self._entries.get(entry.task_id) is entry:
                    self._finish(entry, info)
                    self.resolved_by_poll += 1
            else:
                if info.state is not entry.state:
                    entry.state = info.state
                    if entry.on_state is not None:
                        entry.on_state(info.state)
                self._reschedule(entry, self._next_delay(entry, self._clock()))
        finally:
            entry.in_check = False
            self._slots.release()

    def _reschedule(self, entry: _Entry, delay: float) -> None:
        if self._entries.get(entry.task_id) is entry:
            self._schedule(entry, self._clock() + delay)

    # ------------------------------------------------------------- the rest

    def close(self, error: BaseException | None = None) -> None:
        """Fail every pending future (with :class:`ClientClosedError` by default)."""
        self._closed = error or ClientClosedError(
            "the client was closed while the task was pending; it may still finish on the "
            "service (re-attach with client.wait(task_id))"
        )
        self.fail_all(self._closed)

    def statistics(self) -> SchedulerStatistics:
        """A snapshot of the scheduler's counters."""
        now = self._clock()
        overdue = sum(1 for e in self._entries.values() if e.due < now and not e.in_check)
        return SchedulerStatistics(
            pending=len(self._entries),
            checks=self.checks,
            check_errors=self.check_errors,
            resolved_by_poll=self.resolved_by_poll,
            resolved_by_callback=self.resolved_by_callback,
            callbacks_ignored=self.callbacks_ignored,
            callbacks_early=self.callbacks_early,
            overdue=overdue,
            expected_seconds={str(m): d.median for m, d in self._durations.items() if d.count},
            safety_net_seconds={
                str(m): self.safety_net_seconds(m)
                for m, d in self._callback_delays.items()
                if d.quantile(self.policy.callback_quantile) is not None
            },
        )
