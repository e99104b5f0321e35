"""SyncRuxaClient: the blocking client for threads, WSGI views, scripts and Celery workers."""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ._batch_options import ProgressEvent
from ._client import CallbackReceiver, ClientStatistics, RuxaClient, _key_source
from ._config import OutagePolicy, PollPolicy, RateLimits, RetryPolicy, Timeouts
from ._coordinator import Coordinator
from ._errors import TaskTimeoutError
from ._fleet_outage import policy_of
from ._handles import TaskHandle
from ._models import BatchReport, Job, RequestEvent, TaskInfo, TaskState
from ._outage import OutageCoordinator
from ._portal import Engine, EngineSlot
from ._sync_batch import SyncAsCompleted, sync_options

__all__ = ["SyncRuxaClient", "SyncTaskHandle"]

T = TypeVar("T")

# A bound for calls that only touch the engine's memory (statistics, feed_callback, state).
_QUICK = 30.0
# Added to a wait's own timeout before the blocking side gives up on the engine.
_GRACE = 5.0


class SyncTaskHandle:
    """A blocking view of one submitted task; :meth:`result` waits for it.

    Timing out or interrupting a :meth:`result` stops that wait only: the
    client keeps tracking the task.
    """

    __slots__ = ("_engine", "_handle")

    def __init__(self, engine: Engine, handle: TaskHandle) -> None:
        self._engine = engine
        self._handle = handle

    def __repr__(self) -> str:
        return f"<SyncTaskHandle {self._handle.task_id}>"

    @property
    def task_id(self) -> str:
        """The service's id for this task."""
        return self._handle.task_id

    @property
    def state(self) -> TaskState:
        """The last state seen (WAITING until the first check)."""
        return self._engine.call_sync(lambda: self._handle.state, timeout=_QUICK, what="state")

    @property
    def info(self) -> TaskInfo | None:
        """The terminal snapshot once known, else None."""
        return self._engine.call_sync(lambda: self._handle.info, timeout=_QUICK, what="info")

    def done(self) -> bool:
        """True once the task's outcome is known."""
        return self._engine.call_sync(self._handle.done, timeout=_QUICK, what="done")

    def result(self, timeout: float | None = None, *, raise_on_failure: bool = True) -> TaskInfo:
        """Block until the task finishes, at most ``timeout`` seconds (None: no limit).

        Returns the terminal :class:`TaskInfo`; raises :class:`TaskFailedError`
        when the task failed (unless ``raise_on_failure=False``),
        :class:`TaskTimeoutError` on timeout, :class:`ClientClosedError` if the
        client is closed meanwhile.
        """
        return self._engine.call(
            lambda: self._handle.wait(timeout, raise_on_failure=raise_on_failure),
            timeout=None if timeout is None else timeout + _GRACE,
            what="result",
            timeout_error=lambda: TaskTimeoutError(self._handle.task_id, timeout),
        )


class SyncRuxaClient:
    """A blocking Ruxa client that any number of threads may share.

    It takes the same arguments and policies as :class:`RuxaClient` and runs
    exactly one of them on an event loop in a background thread (started at the
    first call), so every thread of the process shares one scheduler, one rate
    controller and one connection pool::

        with SyncRuxaClient() as client:               # key from RUXA_API_KEY
            info = client.generate("google/nano-banana", {"prompt": "a red fox"}, timeout=300)
            print(info.result_urls)

    Every blocking method takes a ``timeout``. Request methods (``create_task``,
    ``get_task``, ``submit``) default to a bound derived from the retry policy;
    ``None`` on a wait means no limit, as in the async API. Calling it from a
    running event loop raises ``RuntimeError`` (use :class:`RuxaClient` there).

    Lifecycles: ``close()`` (or ``with``) shuts it down; one forgotten at exit
    is closed for you with a ``ResourceWarning``; a client inherited through
    ``fork()`` (Celery prefork, gunicorn) starts a fresh engine in the child on
    its first call there, and the parent's keeps working. ``outage`` is best
    given as an :class:`OutagePolicy` (shared by the fleet with a coordinator
    that shares outages, as in :class:`RuxaClient`): a gate object of your own
    belongs to one event loop, so a forked child cannot reuse it.
    """

    def __init__(
        self,
        api_key: str | Callable[[], str] | None = None,
        *,
        base_url: str | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        rate_limits: RateLimits | None = None,
        poll: PollPolicy | None = None,
        max_connections: int | None = None,
        callbacks: CallbackReceiver | None = None,
        outage: OutagePolicy | OutageCoordinator | None = None,
        coordinator: Coordinator | None = None,
        validate: bool = True,
        on_request: Callable[[RequestEvent], None] | None = None,
    ) -> None:
        key = _key_source(api_key)  # a missing key fails here, not at the first call
        options: dict[str, Any] = {
            "base_url": base_url,
            "timeouts": timeouts,
            "retry": retry,
            "rate_limits": rate_limits,
            "poll": poll,
            "max_connections": max_connections,
            "callbacks": callbacks,
            "outage": outage,
            "coordinator": coordinator,
            "validate": validate,
            "on_request": on_request,
        }
        self.timeouts = timeouts or Timeouts()
        self.retry_policy = retry or RetryPolicy()
        self.rate_limits = rate_limits or RateLimits()
        self.poll_policy = poll or PollPolicy()
        self.outage_policy = policy_of(outage)
        self.request_timeout = (
            max(self.retry_policy.max_time, self.outage_policy.max_outage)
            + self.timeouts.total
            + _GRACE
        )
        self._slot = EngineSlot(functools.partial(RuxaClient, key, **options))

    def __repr__(self) -> str:
        return f"<SyncRuxaClient {self._slot.state}>"

    # -------------------------------------------------------------- lifecycle

    def __enter__(self) -> SyncRuxaClient:
        self._running("__enter__")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Fail pending waits with ClientClosedError, close connections, stop the thread."""
        self._slot.close()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._slot.closed

    def _running(self, what: str) -> Engine:
        return self._slot.engine(what)

    def _call(
        self,
        what: str,
        func: Callable[[RuxaClient], Awaitable[T]],
        *,
        timeout: float | None,
        engine: Engine | None = None,
        timeout_error: Callable[[], Exception] | None = None,
    ) -> T:
        engine = engine or self._running(what)
        return engine.call(
            func, engine.client, timeout=timeout, what=what, timeout_error=timeout_error
        )

    def _call_sync(
        self, what: str, func: Callable[[RuxaClient], T], *, engine: Engine | None = None
    ) -> T:
        engine = engine or self._running(what)
        return engine.call_sync(func, engine.client, timeout=_QUICK, what=what)

    # -------------------------------------------------------------- requests

    def create_task(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        callback_url: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Create a task and return its id (retried per the retry policy).

        ``timeout`` (default :attr:`request_timeout`) bounds the whole call; when
        it passes, :class:`APITimeoutError` is raised and the task may exist.
        """
        return self._call(
            "create_task",
            lambda c: c.create_task(model, input, callback_url=callback_url),
            timeout=timeout or self.request_timeout,
        )

    def get_task(self, task_id: str, *, timeout: float | None = None) -> TaskInfo:
        """Fetch a task's current state once (retried per the retry policy)."""
        return self._call(
            "get_task", lambda c: c.get_task(task_id), timeout=timeout or self.request_timeout
        )

    def submit(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        callback_url: str | None = None,
        validate: bool | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> SyncTaskHandle:
        """Create a task and return a :class:`SyncTaskHandle`; ``handle.result()`` waits.

        ``validate`` and ``idempotency_key``: as for :meth:`RuxaClient.submit`.
        """
        engine = self._running("submit")
        handle = self._call(
            "submit",
            lambda c: c.submit(
                model,
                input,
                callback_url=callback_url,
                validate=validate,
                idempotency_key=idempotency_key,
            ),
            timeout=timeout or self.request_timeout,
            engine=engine,
        )
        return SyncTaskHandle(engine, handle)

    def attach(self, task_id: str, *, model: str | None = None) -> SyncTaskHandle:
        """A handle for a task created earlier (perhaps by another process)."""
        engine = self._running("attach")
        handle = self._call_sync("attach", lambda c: c.attach(task_id, model=model), engine=engine)
        return SyncTaskHandle(engine, handle)

    def generate(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        timeout: float | None = None,
        validate: bool | None = None,
        idempotency_key: str | None = None,
    ) -> TaskInfo:
        """Create a task and block until it finishes: the successful :class:`TaskInfo`.

        Raises :class:`TaskFailedError` if it fails and :class:`TaskTimeoutError`
        when it is not done ``timeout`` seconds after it was created.
        ``validate`` and ``idempotency_key``: as for :meth:`RuxaClient.generate`.
        """
        return self._call(
            "generate",
            lambda c: c.generate(
                model, input, timeout=timeout, validate=validate, idempotency_key=idempotency_key
            ),
            timeout=None if timeout is None else timeout + self.request_timeout,
            timeout_error=lambda: TaskTimeoutError(None, timeout),
        )

    def wait(
        self, task_id: str, *, timeout: float | None = None, model: str | None = None
    ) -> TaskInfo:
        """Re-attach to a task created earlier (perhaps by another process) and wait for it."""
        return self._call(
            "wait",
            lambda c: c.wait(task_id, timeout=timeout, model=model),
            timeout=None if timeout is None else timeout + _GRACE,
            timeout_error=lambda: TaskTimeoutError(task_id, timeout),
        )

    def download(
        self, url: str, dest: str | os.PathLike[str], *, timeout: float | None = None
    ) -> Path:
        """Stream a result file to ``dest`` (written under a temporary name, then renamed).

        ``timeout`` bounds the whole download (None: only the per-request timeouts).
        """
        return self._call("download", lambda c: c.download(url, dest), timeout=timeout)

    def feed_callback(self, info: TaskInfo) -> bool:
        """Resolve a pending task from a callback parsed elsewhere; True if it resolved one."""
        return self._call_sync("feed_callback", lambda c: c.feed_callback(info))

    def statistics(self) -> ClientStatistics:
        """A frozen snapshot of requests, retries, 429s, pending tasks and rates."""
        return self._call_sync("statistics", RuxaClient.statistics)

    # ----------------------------------------------------------------- batches

    def as_completed(
        self,
        jobs: Iterable[Job],
        *,
        max_pending: int = 1000,
        timeout: float | None = None,
        on_event: Callable[[ProgressEvent], None] | None = None,
        before_create: Callable[[Job], None] | None = None,
    ) -> SyncAsCompleted:
        """Run ``jobs`` and iterate their :class:`JobOutcome` in completion order.

        ``jobs`` is pulled lazily, in the calling thread, one job at a time as
        the batch has room (at most ``max_pending`` jobs taken but not yet
        yielded). ``timeout`` bounds the whole batch. ``on_event`` is called on
        the engine's thread (keep it quick; never call the client from it);
        ``before_create`` runs in a worker thread before each create is sent.
        Leaving the loop early: use ``with client.as_completed(...) as batch:``
        (or ``batch.close()``) to stop the batch at once.
        """
        options = sync_options(
            max_pending=max_pending, timeout=timeout, on_event=on_event, before_create=before_create
        )
        return SyncAsCompleted(self._running("as_completed"), jobs, options)

    def run_batch(
        self,
        jobs: Iterable[Job],
        *,
        max_pending: int = 1000,
        timeout: float | None = None,
        on_event: Callable[[ProgressEvent], None] | None = None,
        before_create: Callable[[Job], None] | None = None,
    ) -> BatchReport:
        """Run ``jobs`` to the end: outcomes in input order plus a summary.

        Takes the same arguments as :meth:`as_completed`. The report's request
        counts are this batch's own, whatever other threads send through the
        same client meanwhile.
        """
        with self.as_completed(
            jobs,
            max_pending=max_pending,
            timeout=timeout,
            on_event=on_event,
            before_create=before_create,
        ) as batch:
            return batch._collect()
