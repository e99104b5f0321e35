"""Fan-out of many jobs: lazy intake, a pending bound, one outcome per job.

``AsCompleted`` pulls jobs only as fast as there is room (``max_pending``
jobs taken but not yet handed back), submits them through the client's
shared rate controller, and turns each task's future into a
:class:`JobOutcome` with a done-callback: no coroutine waits per task. The
pulling and submitting half is ``_batch_intake.Intake``; this module keeps
the outcomes, the pending tasks and the reasons a batch stops.

A batch talks to its client only through a :class:`BatchPort` (create, track,
forget, validate, the callback URL), which the client builds for it. The
rate controller owns the bound on requests in flight; the batch keeps at most
that many creates under way (``BatchPort.max_under_way``, read from the
controller) so that it never piles waiters onto the controller's queue, and a
create still waiting for its permit when the batch stops is never sent. That
second bound is on coroutines, not requests: without it a batch holds one
create coroutine per job taken, all queued at the controller (10,000 instant
jobs with ``max_pending`` = 10,000: peak RSS 46 -> 128 MB, and four to five
times the garbage collector's time per task). The
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
from collections.abc import AsyncIterable, Iterable

from ._batch_intake import Intake, Slot
from ._batch_options import BatchOptions, EventKind, ProgressEvent
from ._batch_port import BatchPort
from ._errors import (
    AuthenticationError,
    RuxaError,
    ServiceUnavailableError,
    TaskLostError,
    TaskTimeoutError,
)
from ._models import BatchReport, Job, JobOutcome, TaskInfo, TaskState
from ._tally import Tally

__all__ = ["AsCompleted", "BatchOptions", "BatchPort", "ProgressEvent", "collect", "report"]

log = logging.getLogger("ruxa_async")


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
        self._timeout = options.timeout
        self._on_event = options.on_event
        self.tally = Tally()
        self._ready: collections.deque[JobOutcome] = collections.deque()
        self._wakeup = asyncio.Event()
        self._intake = Intake(self, port, jobs, options)
        self._in_hand = 0
        self._pending: dict[str, Slot] = {}
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
        if self._intake.producer is None:
            self._start()
        while True:
            if self._ready:
                outcome = self._ready.popleft()
                self._intake.room.release()
                return outcome
            if self._crashed is not None:
                await self.aclose()
                raise self._crashed
            if self._intake.done and self._in_hand == 0:
                await self.aclose()
                raise StopAsyncIteration
            producer = self._intake.producer
            if producer is not None and producer.done():
                error = producer.exception()
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
        intake = self._intake
        tasks = [t for t in (intake.producer, *intake.submissions) if t is not None]
        in_flight = sum(1 for t in intake.submissions if not t.done())
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
        producer = self._intake.start()
        producer.add_done_callback(lambda _t: self._wakeup.set())
        if self._timeout is not None:
            loop = asyncio.get_running_loop()
            self._deadline_handle = loop.call_later(self._timeout, self._on_deadline)

    # ------------------------------------------- what the intake reports back

    def _taken(self) -> None:
        """The intake took one more job: it is in hand until its outcome is handed back."""
        self._in_hand += 1

    def _wake(self) -> None:
        self._wakeup.set()

    def _track(self, slot: Slot) -> None:
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

    def _settled(self, slot: Slot, future: asyncio.Future[TaskInfo]) -> None:
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
        self, slot: Slot, *, info: TaskInfo | None = None, error: BaseException | None = None
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
                slot.label,
                error.task_id,
            )
        if slot.ambiguous and slot.task_id is not None:
            log.warning(
                "job %s: task %s was created after %d ambiguous attempts; the service may hold "
                "(and charge) another task for it",
                slot.label,
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
        slot: Slot,
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
