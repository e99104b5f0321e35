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
When each check comes is the planner's business (``_pollplan``); the records
and the heap are in ``_pending``.
"""

from __future__ import annotations

import asyncio
import logging
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
from ._pending import DueHeap, EarlyCallbacks, Pending
from ._pollplan import PollPlanner

__all__ = ["PollScheduler", "SchedulerStatistics"]

log = logging.getLogger("ruxa_async")

_HELD_SECONDS = 10.0  # how long a fleet's callback waits for its task to be tracked here
_HELD_LIMIT = 2048  # ... and how many such callbacks are kept at most

QueryFn = Callable[[str, Any], Awaitable[TaskInfo]]
"""``query(task_id, tally)``: check one task once; ``tally`` is its owner's, from ``track``."""
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


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _fail_future(future: asyncio.Future[TaskInfo], error: BaseException) -> None:
    """Fail ``future`` (unless done) without a "never retrieved" warning if nobody awaits it."""
    if not future.done():
        future.set_exception(error)
        future.add_done_callback(_mark_retrieved)


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
    the catalogue); ``budget`` gives the queries per second the rate
    controller allows now (None: unknown), so checks come sooner while it has
    room to spare. ``clock`` and ``waiter`` are injectable for tests.
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
        budget: Callable[[], float | None] | None = None,
    ) -> None:
        self._query = query
        self._budget = budget
        self._plan = PollPlanner(policy, typical_seconds, rng or random.Random())
        self._concurrency = concurrency
        self._clock = clock
        self._waiter = waiter
        self._entries: dict[str, Pending] = {}
        self._due = DueHeap()
        self._wake: asyncio.Future[None] | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._checks_running: set[asyncio.Task[None]] = set()
        self._closed: BaseException | None = None
        self._early = EarlyCallbacks()
        # callbacks the fleet published, for tasks whose create reply may still be coming here
        self._held = EarlyCallbacks(_HELD_LIMIT, max_age=_HELD_SECONDS, clock=clock)
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
            _fail_future(future, self._closed)
            return future
        now = self._clock()
        entry = Pending(task_id, model, future, now)
        entry.callbacks = callbacks
        entry.on_state = on_state
        entry.tally = tally
        self._entries[task_id] = entry
        early = self._early.take(task_id) or self._held.take(task_id)
        if early is not None:  # its callback beat the create reply
            self.callbacks_early += 1
            self.resolved_by_callback += 1
            self._finish(entry, early)
            return future
        self._schedule(entry, now + self._plan.first_delay(entry))
        return future

    def forget(self, task_id: str) -> None:
        """Stop watching ``task_id`` (its future, if still pending, is left unresolved)."""
        entry = self._entries.pop(task_id, None)
        if entry is not None:
            self._plan.stop_exploring(entry)

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
        own create reply still resolves the task when it is tracked. A callback
        another process published to the fleet (``source="fleet"``) is kept
        for ``_HELD_SECONDS`` at most and not counted as ignored: most of
        those are for other processes' tasks.
        """
        entry = self._entries.get(info.task_id)
        if entry is None or entry.future.done():
            if source == "fleet":
                if entry is None and info.is_terminal:
                    self._held.keep(info)  # its create reply may still be on the way here
                return False
            self.callbacks_ignored += 1
            if entry is None and info.is_terminal and source == "callback":
                self._early.keep(info)  # in case its create reply is still coming
            return False
        if not info.is_terminal:
            if entry.state is TaskState.WAITING or entry.state is TaskState.UNKNOWN:
                entry.state = info.state
            return False
        self._finish(entry, info)
        if source in ("callback", "fleet"):
            self.resolved_by_callback += 1
            self._learn_callback(entry)
        else:
            self.resolved_by_poll += 1
        return True

    def fail_all(self, error: BaseException) -> None:
        """Fail every pending future with ``error`` and stop watching them."""
        entries = list(self._entries.values())
        self._entries.clear()
        self._due.clear()
        for entry in entries:
            _fail_future(entry.future, error)

    def _finish(self, entry: Pending, info: TaskInfo) -> None:
        self._entries.pop(entry.task_id, None)
        entry.state = info.state
        if self._plan.learn(entry, info, self._clock):
            moved = self._replan(entry.model)
            log.debug(
                "learned %s takes about %.2f s; moved %d first checks earlier",
                entry.model,
                self.expected_seconds(entry.model),
                moved,
            )
        if not entry.future.done():
            entry.future.set_result(info)

    def _fail(self, entry: Pending, error: BaseException) -> None:
        self._entries.pop(entry.task_id, None)
        self._plan.stop_exploring(entry)
        _fail_future(entry.future, error)

    # ------------------------------------------------------------ the schedule

    @property
    def policy(self) -> PollPolicy:
        """The poll policy the plan follows."""
        return self._plan.policy

    def expected_seconds(self, model: str | None) -> float:
        """Expected duration of ``model``: learned, else the catalogue's, else the default."""
        return self._plan.expected_seconds(model)

    def safety_net_seconds(self, model: str | None) -> float:
        """How long after tracking a task with callbacks its first safety-net check comes."""
        return self._plan.safety_net_seconds(model)

    def _schedule(self, entry: Pending, due: float) -> None:
        self._due.push(entry, due)
        if due < self._due.next_at and self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _learn_callback(self, entry: Pending) -> None:
        if self._plan.learn_callback(entry.model, max(self._clock() - entry.created_at, 0.0)):
            moved = self._replan(entry.model, callbacks=True)
            log.debug(
                "learned %s callbacks arrive within about %.2f s; safety-net checks at %.2f s "
                "(%d moved earlier)",
                entry.model,
                self._plan.callback_quantile(entry.model),
                self.safety_net_seconds(entry.model),
                moved,
            )

    def _replan(self, model: str | None, *, callbacks: bool = False) -> int:
        """Bring forward first checks that were planned from a prior, now the model is learned."""
        moves = self._plan.earlier_first_checks(
            self._entries.values(), model, callbacks=callbacks, now=self._clock()
        )
        for entry, due in moves:
            self._schedule(entry, due)
        return len(moves)

    # ---------------------------------------------------------------- the loop

    async def run(self) -> None:
        """The scheduler's one coroutine; runs until cancelled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                entry = self._due.pop_due(self._clock(), self._entries)
                if entry is None:
                    self._wake = loop.create_future()
                    delay = self._due.next_at - self._clock()
                    if self._due:
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

    async def _check(self, entry: Pending) -> None:
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
                self._reschedule(entry, self._plan.error_delay(entry))
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
            self._reschedule(entry, self._plan.error_delay(entry))
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
                budget = self._budget() if self._budget is not None else None
                delay = self._plan.next_delay(
                    entry, self._clock(), pending=len(self._entries), budget=budget
                )
                self._reschedule(entry, delay)
        finally:
            entry.in_check = False
            self._slots.release()

    def _reschedule(self, entry: Pending, delay: float) -> None:
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
            expected_seconds=self._plan.learned_durations(),
            safety_net_seconds=self._plan.learned_safety_nets(),
        )
