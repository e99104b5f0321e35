"""A batch's intake: pull jobs while there is room, validate them, submit their creates.

:class:`Intake` is the submitting half of ``_batch.AsCompleted``. It pulls a
job only when the batch has room for it (``max_pending`` jobs taken but not
yet handed back), re-attaches jobs that carry a ``task_id``, turns a job the
catalogue rejects into its outcome, and sends the others' creates through the
batch's port, at most ``BatchPort.max_under_way`` at a time (see
``_batch`` for why). The very first create goes alone, so a rejected key
costs one request. The exactly-once hooks (``on_send``, ``on_unsent``) are
called from here, around each create attempt. The intake reports back to
its batch through an :class:`Owner` (``_batch.AsCompleted`` is one).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TYPE_CHECKING, Protocol

from ._batch_options import BatchOptions, EventKind
from ._errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    InsufficientCreditsError,
    InvalidInputError,
    NotSubmittedError,
    RuxaError,
    ServiceUnavailableError,
    TaskTimeoutError,
)
from ._models import Job, TaskInfo
from ._retry import is_ambiguous_create
from ._tally import Tally

if TYPE_CHECKING:
    from ._batch_port import BatchPort

__all__ = ["Intake", "Owner", "Slot", "proves_not_created"]

log = logging.getLogger("ruxa_async")


def proves_not_created(exc: BaseException) -> bool:
    """True when a failed create attempt provably created nothing (an answer that refuses it)."""
    if isinstance(exc, APIConnectionError):
        return not exc.request_sent
    return isinstance(exc, APIStatusError) and not is_ambiguous_create(exc)


class Slot:
    """One job of a batch, from intake to its outcome."""

    __slots__ = ("ambiguous", "done", "first", "index", "job", "marked", "task_id")

    def __init__(self, index: int, job: Job) -> None:
        self.index = index
        self.job = job
        self.task_id: str | None = None
        self.done = False
        self.first = True  # its create has not yet had an attempt let go
        self.marked = False  # on_send was told and no answer has cleared it since
        self.ambiguous = 0  # attempts that may have created a task without saying so

    @property
    def label(self) -> str:
        """How log lines name the job: its key, else its position."""
        return self.job.key if self.job.key is not None else f"#{self.index}"


class Owner(Protocol):
    """The batch an intake works for: what the intake reads, and what it reports back."""

    stop_reason: str | None
    stop_error: RuxaError | None
    tally: Tally

    def _taken(self) -> None: ...

    def _wake(self) -> None: ...

    def _track(self, slot: Slot) -> None: ...

    def _crash(self, exc: BaseException, hook: str = "before_create") -> None: ...

    def _stop(self, exc: RuxaError) -> None: ...

    def _emit(
        self, slot: Slot, *, info: TaskInfo | None = None, error: BaseException | None = None
    ) -> None: ...

    def _event(self, kind: EventKind, slot: Slot) -> None: ...


async def _iterate(jobs: Iterable[Job] | AsyncIterable[Job]) -> AsyncIterator[Job]:
    if isinstance(jobs, AsyncIterable):
        async for job in jobs:
            yield job
    else:
        for job in jobs:
            yield job


class Intake:
    """Pulls and submits a batch's jobs; outcomes go back to ``batch``."""

    def __init__(
        self,
        batch: Owner,
        port: BatchPort,
        jobs: Iterable[Job] | AsyncIterable[Job],
        options: BatchOptions,
    ) -> None:
        self._batch = batch
        self._port = port
        self._jobs = jobs
        self._options = options
        self.room = asyncio.Semaphore(options.max_pending)
        """One unit per job taken; released when its outcome is handed back."""
        self._under_way = asyncio.Semaphore(port.max_under_way)
        self._first_created = asyncio.Event()
        self._probe_running = False
        self.producer: asyncio.Task[None] | None = None
        self.submissions: set[asyncio.Task[None]] = set()
        self.done = False
        """True once every job has been pulled (or pulling failed)."""

    def start(self) -> asyncio.Task[None]:
        """Start pulling jobs; the returned task ends when the jobs run out."""
        self.producer = asyncio.get_running_loop().create_task(
            self._produce(), name="ruxa_async batch intake"
        )
        return self.producer

    async def _produce(self) -> None:
        batch = self._batch
        index = 0
        try:
            async for job in _iterate(self._jobs):
                if not isinstance(job, Job):
                    raise TypeError(
                        f"jobs must be ruxa_async.Job objects, got {type(job).__name__}"
                    )
                await self.room.acquire()
                slot = Slot(index, job)
                index += 1
                batch._taken()
                if batch.stop_reason is not None:
                    batch._emit(slot, error=NotSubmittedError(batch.stop_reason, batch.stop_error))
                    continue
                if job.task_id is not None:
                    slot.task_id = job.task_id
                    batch._track(slot)
                    continue
                if not self._valid(slot):
                    continue
                await self._under_way.acquire()
                if not self._first_created.is_set():
                    if self._probe_running:
                        await self._first_created.wait()
                    else:
                        self._probe_running = True
                if batch.stop_reason is not None:
                    self._under_way.release()
                    batch._emit(slot, error=NotSubmittedError(batch.stop_reason, batch.stop_error))
                    continue
                task = asyncio.get_running_loop().create_task(self._submit(slot))
                self.submissions.add(task)
                task.add_done_callback(self.submissions.discard)
        finally:
            self.done = True
            batch._wake()

    def _valid(self, slot: Slot) -> bool:
        try:
            self._port.validate(slot.job, self._options.validate)
        except InvalidInputError as exc:
            self._batch._emit(slot, error=exc)
            return False
        return True

    async def _sending(self, slot: Slot) -> None:
        """Awaited as each attempt of ``slot``'s create is about to be sent (permit held)."""
        batch = self._batch
        if slot.first:  # its first attempt: never send one once the batch has stopped
            slot.first = False
            if batch.stop_reason is not None:
                raise NotSubmittedError(batch.stop_reason, batch.stop_error)
        on_send = self._options.on_send
        if on_send is not None and not slot.marked:
            try:
                await on_send(slot.job)
            except Exception as exc:
                batch._crash(exc, "on_send")
                raise NotSubmittedError("the on_send hook failed", None) from exc
            slot.marked = True

    def _failed(self, slot: Slot, exc: BaseException) -> None:
        """Told the error of each failed attempt of ``slot``'s create."""
        if is_ambiguous_create(exc):
            slot.ambiguous += 1
            log.warning(
                "job %s: its create may have reached the service before failing (%s); "
                "a task may exist for it (ambiguous attempt #%d)",
                slot.label,
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

    async def _submit(self, slot: Slot) -> None:
        batch = self._batch
        before_create = self._options.before_create
        try:
            if before_create is not None:
                try:
                    await before_create(slot.job)
                except Exception as exc:
                    batch._crash(exc)
                    return
            task_id = await self._port.create(
                slot.job,
                batch.tally,
                functools.partial(self._sending, slot),
                functools.partial(self._failed, slot),
            )
        except NotSubmittedError as exc:
            batch._emit(slot, error=exc)
            return
        except (AuthenticationError, InsufficientCreditsError) as exc:
            batch._stop(exc)
            batch._emit(slot, error=NotSubmittedError(batch.stop_reason or str(exc), exc))
            return
        except ServiceUnavailableError as exc:
            batch._stop(exc)
            reason = batch.stop_reason or str(exc)
            batch._emit(slot, error=exc if exc.request_sent else NotSubmittedError(reason, exc))
            return
        except RuxaError as exc:
            batch._emit(slot, error=exc)
            return
        except Exception as exc:  # a bug must cost one job, never hang the batch
            log.exception("unexpected error creating job %s", slot.job.key or slot.index)
            batch._emit(slot, error=exc)
            return
        finally:
            self._under_way.release()
            self._first_created.set()
        slot.task_id = task_id
        if batch.stop_reason == "batch deadline passed":
            batch._emit(slot, error=TaskTimeoutError(task_id, self._options.timeout))
            return
        batch._event("submitted", slot)
        batch._track(slot)
