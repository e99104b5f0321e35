"""A batch for blocking callers: ``as_completed`` as a plain, lazy iterator.

The batch itself is the async :class:`AsCompleted`, running on the engine's
loop. Its jobs come from a small feed that the *calling* thread fills: each
``next()`` is one hop to the loop, which answers with an outcome, the end, or
"send me the next job". The caller then pulls one job from its own iterator
(so a generator reading a file or a database runs in the caller's thread,
never on the shared loop) and hands it over with the next hop. Nothing is
materialised: at most ``max_pending`` jobs are held plus the one in the feed.

A blocking batch takes the same :class:`BatchOptions` as an async one (its
``before_create`` hook, a plain function, runs in a worker thread), and its
report is the async batch's own (:func:`_batch.report`): the requests counted
are this batch's, whatever other threads send through the same client.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import anyio.to_thread
import attrs

from ._batch import AsCompleted, report
from ._batch_options import BatchOptions, ProgressEvent
from ._models import BatchReport, Job, JobOutcome

if TYPE_CHECKING:
    from ._client import RuxaClient
    from ._portal import Engine

__all__ = ["SyncAsCompleted", "sync_options"]

_END: Any = object()

Step = tuple[Literal["outcome", "want", "end"], JobOutcome | None]


def sync_options(
    *,
    max_pending: int,
    timeout: float | None,
    on_event: Callable[[ProgressEvent], None] | None,
    before_create: Callable[[Job], None] | None,
) -> BatchOptions:
    """The :class:`BatchOptions` of a blocking batch; ``before_create`` runs in a worker thread."""
    hook = None
    if before_create is not None:
        sync_hook = before_create

        async def hook(job: Job) -> None:
            await anyio.to_thread.run_sync(sync_hook, job)

    return BatchOptions(
        max_pending=max_pending, timeout=timeout, on_event=on_event, before_create=hook
    )


class _Feed:
    """Jobs handed over by the calling thread, read by the batch's intake (on the loop)."""

    def __init__(self) -> None:
        self._jobs: collections.deque[Job] = collections.deque()
        self._ended = False
        self.wanted = asyncio.Event()
        self._arrived = asyncio.Event()

    def push(self, jobs: list[Job], ended: bool) -> None:
        self._jobs.extend(jobs)
        self._ended = self._ended or ended
        self.wanted.clear()
        self._arrived.set()

    async def jobs(self) -> AsyncIterator[Job]:
        while True:
            if self._jobs:
                yield self._jobs.popleft()
                continue
            if self._ended:
                return
            self._arrived.clear()
            self.wanted.set()
            await self._arrived.wait()


class _Bridge:
    """The loop side of one blocking batch; only ever touched on the engine's loop."""

    def __init__(self, batch: AsCompleted, feed: _Feed) -> None:
        self.batch = batch
        self.feed = feed
        self._next: asyncio.Future[JobOutcome] | None = None

    @classmethod
    def open(cls, client: RuxaClient, options: BatchOptions) -> _Bridge:
        feed = _Feed()
        # BatchOptions' fields are as_completed's batch keywords, one for one.
        batch = client.as_completed(feed.jobs(), **attrs.asdict(options, recurse=False))
        return cls(batch, feed)

    async def step(self, jobs: list[Job], ended: bool) -> Step:
        """Hand over ``jobs``; then wait for an outcome, the end, or a request for a job."""
        if jobs or ended:
            self.feed.push(jobs, ended)
        if self._next is None:
            self._next = asyncio.ensure_future(self.batch.__anext__())
        if not self._next.done():
            if self.feed.wanted.is_set():
                return ("want", None)
            wanted = asyncio.ensure_future(self.feed.wanted.wait())
            try:
                await asyncio.wait((self._next, wanted), return_when=asyncio.FIRST_COMPLETED)
            finally:
                wanted.cancel()
            if not self._next.done():
                return ("want", None)
        done, self._next = self._next, None
        try:
            return ("outcome", done.result())
        except StopAsyncIteration:
            return ("end", None)

    async def aclose(self) -> None:
        if self._next is not None:
            self._next.cancel()
            await asyncio.gather(self._next, return_exceptions=True)
            self._next = None
        await self.batch.aclose()


class SyncAsCompleted(Iterator[JobOutcome]):
    """Iterator of :class:`JobOutcome` in completion order; see ``SyncRuxaClient.as_completed``.

    Use it in a ``for`` loop; to leave early, use it as a context manager (or
    call :meth:`close`), which stops submitting and stops tracking the batch's
    pending tasks. Once it has ended, :attr:`stop_reason` says why submitting
    stopped early (a rejected key, no credits, the deadline), or is None.
    """

    def __init__(self, engine: Engine, jobs: Iterable[Job], options: BatchOptions) -> None:
        self._engine = engine
        self._jobs = iter(jobs)
        self._lock = threading.Lock()
        self._finished = False
        self._ended = False
        self.stop_reason: str | None = None
        self._bridge: _Bridge = engine.call_sync(
            lambda: _Bridge.open(engine.client, options),
            timeout=30.0,
            what="as_completed",
        )
        self._finalizer = weakref.finalize(self, engine.spawn, self._bridge.aclose)

    def __iter__(self) -> SyncAsCompleted:
        return self

    def __next__(self) -> JobOutcome:
        with self._lock:
            if self._finished:
                raise StopIteration
            push: list[Job] = []
            try:
                while True:
                    kind, outcome = self._engine.call(
                        self._bridge.step, push, self._ended, timeout=None, what="as_completed"
                    )
                    push = []
                    if kind == "outcome":
                        assert outcome is not None
                        return outcome
                    if kind == "end":
                        break
                    job = next(self._jobs, _END)
                    if job is _END:
                        self._ended = True
                    else:
                        push.append(job)
            except BaseException:
                self._close_locked()
                raise
            self._close_locked()
            raise StopIteration

    def __enter__(self) -> SyncAsCompleted:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _collect(self) -> BatchReport:
        """Run the batch to the end: outcomes in input order and this batch's own counts."""
        started = time.monotonic()
        outcomes = list(self)
        return report(self._bridge.batch, outcomes, time.monotonic() - started)

    def close(self) -> None:
        """Stop submitting and stop tracking this batch's pending tasks."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._finalizer.detach()
        if not self._engine.closed:
            self.stop_reason = self._engine.call(self._finish, timeout=30.0, what="close")

    async def _finish(self) -> str | None:
        await self._bridge.aclose()
        return self._bridge.batch.stop_reason
