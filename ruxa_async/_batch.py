"""Fan-out of many jobs: lazy intake, a pending bound, one outcome per job.

``AsCompleted`` pulls jobs only as fast as there is room (``max_pending``
jobs taken but not yet handed back), submits them through the client's
shared rate controller, and turns each task's future into a
:class:`JobOutcome` with a done-callback: no coroutine waits per task.

A batch talks to its client only through a :class:`BatchPort` (create, track,
forget, validate, the callback URL), which the client builds for it. The
rate controller owns the bound on requests in flight; the batch keeps at most
that many creates under way (``BatchPort.max_under_way``, read from the
controller) so that it never piles waiters onto the controller's queue, and a
create still waiting for its permit when the batch stops is never sent. The
batch counts its own requests (a :class:`Tally`), so its report is exact when
other coroutines share the client.

Account-level errors stop submission once, for the whole batch: a rejected key
(401) or exhausted credits (402) ends submitting; tasks already created are
still awaited; every job never sent is reported NOT_SUBMITTED with the reason.
The first create is sent alone, so a bad key costs one request, not one per
concurrent sender. A service unreachable for longer than the outage policy
allows (:class:`ServiceUnavailableError`) stops the batch the same way, and
also ends the jobs still pending with that error (their task ids are kept).

Exactly-once bookkeeping: ``on_send`` is awaited for a job once its create
holds its permit and is about to be written to the socket (a journal commits
"in flight" there), and ``on_unsent`` is told when an answer proves nothing
was created (429, 401, 402, 4xx, a connection refused before sending) and no
earlier attempt of that job was ambiguous. Each ambiguous attempt is counted on
the job's :class:`JobOutcome` and logged with the job's key.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Literal

import attrs
from attrs import validators as v

from ._batch_port import BatchPort
from ._errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    InsufficientCreditsError,
    InvalidInputError,
    NotSubmittedError,
    RuxaError,
    ServiceUnavailableError,
    TaskLostError,
    TaskTimeoutError,
)
from ._models import BatchReport, Job, JobOutcome, TaskInfo, TaskState
from ._retry import is_ambiguous_create
from ._tally import Tally

__all__ = ["AsCompleted", "BatchOptions", "BatchPort", "ProgressEvent", "collect", "report"]

log = logging.getLogger("ruxa_async")

EventKind = Literal["submitted", "state", "finished"]


@attrs.frozen(kw_only=True)
class ProgressEvent:
    """A batch progress event: a job was submitted, its task changed state, or it finished."""

    kind: EventKind
    index: int
    job: Job
    task_id: str | None = None
    state: TaskState | None = None
    outcome: JobOutcome | None = None


@attrs.frozen(kw_only=True)
class BatchOptions:
    """How one batch runs; see :meth:`RuxaClient.as_completed` for each setting.

    ``validate`` None means the client's own setting.
    """

    max_pending: int = attrs.field(default=1000, validator=v.ge(1))
    timeout: float | None = None
    on_event: Callable[[ProgressEvent], None] | None = None
    before_create: Callable[[Job], Awaitable[None]] | None = None
    on_send: Callable[[Job], Awaitable[None]] | None = None
    on_unsent: Callable[[Job], None] | None = None
    validate: bool | None = None


def proves_not_created(exc: BaseException) -> bool:
    """True when a failed create attempt provably created nothing (an answer that refuses it)."""
    if isinstance(exc, APIConnectionError):
        return not exc.request_sent
    return isinstance(exc, APIStatusError) and not is_ambiguous_create(exc)


class _Slot:
    __slots__ = ("ambiguous", "done", "first", "index", "job", "marked", "task_id")

    def __init__(self, index: int, job: Job) -> None:
        self.index = index
        self.job = job
        self.task_id: str | None = None
        self.done = False
        self.first = True  # its create has not yet had an attempt let go
        self.marked = False  # on_send was told and no answer has cleared it since
        self.ambiguous = 0  # attempts that may have created a task without saying so


async def _iterate(jobs: Iterable[Job] | AsyncIterable[Job]) -> AsyncIterator[Job]:
    if isinstance(jobs, AsyncIterable):
        async for job in jobs:
            yield job
    else:
        for job in jobs:
            yield job


class AsCompleted:
    """Async iterator of :class:`JobOutcome` in completion order; see ``RuxaClient.as_completed``.

    Use it with ``async for``; leaving the loop early (or ``aclose()``) stops
    submitting and stops tracking this batch's pending tasks.
    """

    def __init__(
        self,
        port: BatchPort,
        jobs: Iterable[Job] | AsyncIterable[Job],
        options: BatchOptions,
    ) -> None:
        self._port = port
        self._jobs = jobs
        self._options = options
        self._timeout = options.timeout
        self._on_event = options.on_event
        self._before_create = options.before_create
        self.tally = Tally()
        self._ready: collections.deque[JobOutcome] = collections.deque()
        self._wakeup = asyncio.Event()
        self._room = asyncio.Semaphore(options.max_pending)
        self._under_way = asyncio.Semaphore(port.max_under_way)
        self._first_created = asyncio.Event()
        self._probe_running = False
        self._in_hand = 0
        self._pending: dict[str, _Slot] = {}
        self._producer: asyncio.Task[None] | None = None
        self._submissions: set[asyncio.Task[None]] = set()
        self._intake_done = False
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._closed = False
        self.stop_reason: str | None = None
        self.stop_error: RuxaError | None = None
        self._crashed: BaseException | None = None
        self._context = contextvars.copy_context()

    # ------------------------------------------------------------ iteration

    def __aiter__(self) -> AsCompleted:
        return self

    async def __anext__(self) -> JobOutcome:
        if self._producer is None:
            self._start()
        while True:
            if self._ready:
                outcome = self._ready.popleft()
                self._room.release()
                return outcome
            if self._crashed is not None:
                await self.aclose()
                raise self._crashed
            if self._intake_done and self._in_hand == 0:
                await self.aclose()
                raise StopAsyncIteration
            if self._producer is not None and self._producer.done():
                error = self._producer.exception()
                if error is not None:
                    await self.aclose()
                    raise error
            self._wakeup.clear()
            await self._wakeup.wait()

    async def __aenter__(self) -> AsCompleted:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop submitting and stop tracking this batch's pending tasks."""
        if self._closed:
            return
        self._closed = True
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
        tasks = [t for t in (self._producer, *self._submissions) if t is not None]
        in_flight = sum(1 for t in self._submissions if not t.done())
        if in_flight:
            log.warning(
                "batch closed while %d creates were in flight; their tasks may exist on the "
                "service without being tracked",
                in_flight,
            )
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._pending:
            log.warning(
                "batch closed with %d tasks still pending on the service; they are no longer "
                "tracked (re-attach with client.wait(task_id))",
                len(self._pending),
            )
            for task_id in self._pending:
                self._port.forget(task_id)
            self._pending.clear()

    # --------------------------------------------------------------- intake

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._producer = loop.create_task(self._produce(), name="ruxa_async batch intake")
        self._producer.add_done_callback(lambda _t: self._wakeup.set())
        if self._timeout is not None:
            self._deadline_handle = loop.call_later(self._timeout, self._on_deadline)

    async def _produce(self) -> None:
        index = 0
        try:
            async for job in _iterate(self._jobs):
                if not isinstance(job, Job):
                    raise TypeError(
                        f"jobs must be ruxa_async.Job objects, got {type(job).__name__}"
                    )
                await self._room.acquire()
                slot = _Slot(index, job)
                index += 1
                self._in_hand += 1
                if self.stop_reason is not None:
                    self._emit(slot, error=NotSubmittedError(self.stop_reason, self.stop_error))
                    continue
                if job.task_id is not None:
                    slot.task_id = job.task_id
                    self._track(slot)
                    continue
                if not self._valid(slot):
                    continue
                await self._under_way.acquire()
                if not self._first_created.is_set():
                    if self._probe_running:
                        await self._first_created.wait()
                    else:
                        self._probe_running = True
                if self.stop_reason is not None:
                    self._under_way.release()
                    self._emit(slot, error=NotSubmittedError(self.stop_reason, self.stop_error))
                    continue
                task = asyncio.get_running_loop().create_task(self._submit(slot))
                self._submissions.add(task)
                task.add_done_callback(self._submissions.discard)
        finally:
            self._intake_done = True
            self._wakeup.set()

    def _valid(self, slot: _Slot) -> bool:
        try:
            self._port.validate(slot.job, self._options.validate)
        except InvalidInputError as exc:
            self._emit(slot, error=exc)
            return False
        return True

    async def _sending(self, slot: _Slot) -> None:
        """Awaited as each attempt of ``slot``'s create is about to be sent (permit held)."""
        if slot.first:  # its first attempt: never send one once the batch has stopped
            slot.first = False
            if self.stop_reason is not None:
                raise NotSubmittedError(self.stop_reason, self.stop_error)
        on_send = self._options.on_send
        if on_send is not None and not slot.marked:
            try:
                await on_send(slot.job)
            except Exception as exc:
                self._crash(exc, "on_send")
                raise NotSubmittedError("the on_send hook failed", None) from exc
            slot.marked = True

    def _failed(self, slot: _Slot, exc: BaseException) -> None:
        """Told the error of each failed attempt of ``slot``'s create."""
        if is_ambiguous_create(exc):
            slot.ambiguous += 1
            log.warning(
                "job %s: its create may have reached the service before failing (%s); "
                "a task may exist for it (ambiguous attempt #%d)",
                self._key(slot),
                exc,
                slot.ambiguous,
            )
        elif slot.marked and slot.ambiguous == 0 and proves_not_created(exc):
            slot.marked = False
            if self._options.on_unsent is not None:
                try:
                    self._options.on_unsent(slot.job)
                except Exception:
                    log.exception("the on_unsent hook raised; ignoring")

    @staticmethod
    def _key(slot: _Slot) -> str:
        return slot.job.key if slot.job.key is not None else f"#{slot.index}"

    async def _submit(self, slot: _Slot) -> None:
        try:
            if self._before_create is not None:
                try:
                    await self._before_create(slot.job)
                except Exception as exc:
                    self._crash(exc)
                    return
            task_id = await self._port.create(
                slot.job,
                self.tally,
                functools.partial(self._sending, slot),
                functools.partial(self._failed, slot),
            )
        except NotSubmittedError as exc:
            self._emit(slot, error=exc)
            return
        except (AuthenticationError, InsufficientCreditsError) as exc:
            self._stop(exc)
            self._emit(slot, error=NotSubmittedError(self.stop_reason or str(exc), exc))
            return
        except ServiceUnavailableError as exc:
            self._stop(exc)
            reason = self.stop_reason or str(exc)
            self._emit(slot, error=exc if exc.request_sent else NotSubmittedError(reason, exc))
            return
        except RuxaError as exc:
            self._emit(slot, error=exc)
            return
        except Exception as exc:  # a bug must cost one job, never hang the batch
            log.exception("unexpected error creating job %s", slot.job.key or slot.index)
            self._emit(slot, error=exc)
            return
        finally:
            self._under_way.release()
            self._first_created.set()
        slot.task_id = task_id
        if self.stop_reason == "batch deadline passed":
            self._emit(slot, error=TaskTimeoutError(task_id, self._timeout))
            return
        self._event("submitted", slot)
        self._track(slot)

    def _track(self, slot: _Slot) -> None:
        task_id = slot.task_id
        assert task_id is not None
        self._pending[task_id] = slot
        future = self._port.track(
            task_id,
            slot.job.model,
            self.tally,
            (lambda state: self._event("state", slot, state)) if self._on_event else None,
        )
        # a partial and one shared context: a closure and a context copy per task cost ~200 B
        future.add_done_callback(functools.partial(self._settled, slot), context=self._context)

    def _settled(self, slot: _Slot, future: asyncio.Future[TaskInfo]) -> None:
        if slot.task_id is not None:
            self._pending.pop(slot.task_id, None)
        if future.cancelled():
            return
        error = future.exception()
        if isinstance(error, ServiceUnavailableError):
            self._stop(error)
        if error is not None:
            self._emit(slot, error=error)
        else:
            self._emit(slot, info=future.result())

    # ------------------------------------------------------------- stopping

    def _crash(self, exc: BaseException, hook: str = "before_create") -> None:
        """A hook of the caller's failed: stop the batch and raise it from the iterator."""
        log.error("batch stopped: the %s hook raised %r; that job was not sent", hook, exc)
        if self._crashed is None:
            self._crashed = exc
        self.stop_reason = self.stop_reason or f"the {hook} hook failed"
        self._wakeup.set()

    def _stop(self, exc: RuxaError) -> None:
        if self.stop_reason is not None:
            return
        if isinstance(exc, AuthenticationError):
            reason = "the API key was rejected (401)"
        elif isinstance(exc, ServiceUnavailableError):
            reason = "the Ruxa service could not be reached"
        else:
            reason = "the account has insufficient credits (402)"
        self.stop_reason = reason
        self.stop_error = exc
        if isinstance(exc, ServiceUnavailableError):
            self._give_up_pending(exc)
            return
        log.info("batch stopped submitting: %s; tasks already created are still awaited", reason)

    def _give_up_pending(self, exc: ServiceUnavailableError) -> None:
        """The service is gone: end every pending job with ``exc``; its task id is kept."""
        pending, self._pending = self._pending, {}
        log.info(
            "batch stopped: the service is unreachable; %d pending tasks are kept (their ids "
            "are on the outcomes: re-attach to them later)",
            len(pending),
        )
        for task_id, slot in pending.items():
            self._port.forget(task_id)
            self._emit(slot, error=exc)

    def _on_deadline(self) -> None:
        self._deadline_handle = None
        if self.stop_reason is None:
            self.stop_reason = "batch deadline passed"
        pending, self._pending = self._pending, {}
        if pending:
            log.warning(
                "batch deadline of %s s passed with %d tasks pending; they may still finish "
                "on the service",
                self._timeout,
                len(pending),
            )
        for task_id, slot in pending.items():
            self._port.forget(task_id)
            self._emit(slot, error=TaskTimeoutError(task_id, self._timeout))

    # -------------------------------------------------------------- outcomes

    def _emit(
        self, slot: _Slot, *, info: TaskInfo | None = None, error: BaseException | None = None
    ) -> None:
        if slot.done:
            return
        slot.done = True
        outcome = JobOutcome(
            job=slot.job,
            index=slot.index,
            task_id=slot.task_id,
            info=info,
            error=error,
            ambiguous_attempts=slot.ambiguous,
        )
        if isinstance(error, TaskLostError):
            log.warning(
                "job %s: the service no longer knows its task %s; it ends lost (create it "
                "again on purpose if its result is still wanted)",
                self._key(slot),
                error.task_id,
            )
        if slot.ambiguous and slot.task_id is not None:
            log.warning(
                "job %s: task %s was created after %d ambiguous attempts; the service may hold "
                "(and charge) another task for it",
                self._key(slot),
                slot.task_id,
                slot.ambiguous,
            )
        self._in_hand -= 1
        self._ready.append(outcome)
        self._wakeup.set()
        self._event("finished", slot, outcome=outcome)

    def _event(
        self,
        kind: EventKind,
        slot: _Slot,
        state: TaskState | None = None,
        outcome: JobOutcome | None = None,
    ) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(
                ProgressEvent(
                    kind=kind,
                    index=slot.index,
                    job=slot.job,
                    task_id=slot.task_id,
                    state=state,
                    outcome=outcome,
                )
            )
        except Exception:
            log.exception("the batch progress callback raised; ignoring")


async def collect(batch: AsCompleted) -> BatchReport:
    """Run ``batch`` to the end; outcomes in input order plus the batch's own counts."""
    started = time.monotonic()
    outcomes: list[JobOutcome] = []
    async with batch:
        async for outcome in batch:
            outcomes.append(outcome)
    return report(batch, outcomes, time.monotonic() - started)


def report(batch: AsCompleted, outcomes: Iterable[JobOutcome], wall_time: float) -> BatchReport:
    """The report of a finished ``batch``: ``outcomes`` in input order and its own tally."""
    tally = batch.tally
    return BatchReport(
        outcomes=tuple(sorted(outcomes, key=lambda o: o.index)),
        requests_sent=tally.requests_sent,
        rate_limited=tally.rate_limited,
        ambiguous_create_retries=tally.ambiguous_create_retries,
        wall_time=wall_time,
        stop_reason=batch.stop_reason,
    )
