"""RuxaClient: the async context manager that owns the session, limiter and scheduler.

A client's life: *new* (built, nothing open) -> *open* (``async with`` or
``await client.start()``) -> *closing* -> *closed*. Nothing starts by itself:
every call that talks to the service needs an open client and says so
otherwise. A client that was opened and is garbage-collected without being
closed emits a ``ResourceWarning``, as an unclosed aiohttp session does.

This module is the public face: each method says what it does and delegates.
The parts and their wiring live in ``_core`` (:class:`ClientCore`), the one
request path in ``_request``, creating a task in ``_creator``, and a batch's
view of the client in ``_batch_port``.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ._batch import AsCompleted, collect
from ._batch_options import BatchOptions, ProgressEvent
from ._batch_port import ClientPort
from ._config import (
    Kind,
    OutagePolicy,
    PollPolicy,
    RateLimits,
    RetryPolicy,
    Timeouts,
    env_api_key,
    resolve_base_url,
)
from ._coordinator import Coordinator
from ._core import ClientCore, ClientStatistics, State
from ._errors import ConfigurationError
from ._fleet_outage import policy_of
from ._handles import TaskHandle
from ._models import BatchReport, Job, RequestEvent, TaskInfo
from ._outage import OutageCoordinator, call_deadline
from ._transport import Transport

__all__ = ["CallbackReceiver", "ClientStatistics", "RuxaClient"]


class CallbackReceiver(Protocol):
    """What a client needs from a callback receiver (see ``ruxa_async.webhooks``).

    The client calls :meth:`start` when it starts (the receiver then feeds
    each verified callback into ``client.feed_callback``, or confirms it with
    ``client.get_task`` first) and :meth:`aclose` when it closes; every task the
    client creates carries :attr:`callback_url`.
    """

    @property
    def callback_url(self) -> str:
        """The URL Ruxa should POST to, secret token included."""
        ...

    async def start(self, client: RuxaClient) -> None:
        """Begin receiving callbacks for ``client``."""
        ...

    async def aclose(self) -> None:
        """Stop receiving callbacks."""
        ...


def _key_source(api_key: str | Callable[[], str] | None) -> Callable[[], str]:
    if callable(api_key):
        return api_key
    key = api_key if api_key is not None else env_api_key()
    if not key:
        raise ConfigurationError(
            "no API key: pass api_key=... or set the RUXA_API_KEY environment variable"
        )
    return lambda: key


class RuxaClient:
    """An asyncio client for the Ruxa AI task API.

    Use it as an async context manager, share it between coroutines::

        async with RuxaClient() as client:            # key from RUXA_API_KEY
            info = await client.generate("google/nano-banana", {"prompt": "a red fox"})
            print(info.result_urls)

    ``api_key`` may be a string or a zero-argument callable returning the
    current key (to rotate keys without a restart). One client holds one
    connection pool, one rate controller shared by all its requests, and one
    polling coroutine for all its pending tasks.

    Open it before use (``async with``, or ``await client.start()`` paired
    with ``await client.aclose()``); a closed client cannot be reopened.
    ``validate`` (default True) checks a known model's input against
    :mod:`ruxa_async.catalog` before anything is sent, raising
    :class:`InvalidInputError`; pass False (or ``validate=False`` per call)
    when the catalogue is wrong about a model. Unknown models always go to the
    service, which answers a bad input with :class:`ValidationError`.
    ``RateLimits.max_in_flight`` is the one bound on API requests in flight
    (the rate controller's); ``max_connections`` sizes the connection pool
    that API requests and downloads share (by default the rate controller's
    bound; an uncapped pool cost more CPU per task in our measurements).
    ``on_request`` is called with a :class:`RequestEvent` for every request
    sent (for metrics or tests; it must be quick and must not raise).

    ``outage``: an :class:`OutagePolicy` (None: the default one), or an
    :class:`OutageCoordinator` of your own, which is used as given and wins
    over the coordinator's. Otherwise, with a ``coordinator`` that shares
    outages (``RedisCoordinator``), the gate under that policy is the fleet's:
    one process noticing an outage pauses all, one probe per fleet.
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
        coordinator: Coordinator | None = None,
        outage: OutagePolicy | OutageCoordinator | None = None,
        validate: bool = True,
        on_request: Callable[[RequestEvent], None] | None = None,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        self.retry_policy = retry or RetryPolicy()
        self.rate_limits = rate_limits or RateLimits()
        self.poll_policy = poll or PollPolicy()
        self.outage_policy = policy_of(outage)
        self._base_url = resolve_base_url(base_url)
        self._core = ClientCore(
            key=_key_source(api_key),
            base_url=self._base_url,
            timeouts=self.timeouts,
            retry=self.retry_policy,
            rate_limits=self.rate_limits,
            poll=self.poll_policy,
            outage=outage,
            max_connections=max_connections,
            callbacks=callbacks,
            coordinator=coordinator,
            validate=validate,
            on_request=on_request,
        )
        self._callbacks = callbacks

    def __repr__(self) -> str:
        return f"<RuxaClient {self._base_url} {self._core.state.value}>"

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        core = getattr(self, "_core", None)
        if core is not None and core.state in (State.OPEN, State.CLOSING):
            _warn(
                f"unclosed {self!r}: use `async with RuxaClient(...)` or await client.aclose()",
                ResourceWarning,
                source=self,
            )

    @property
    def state(self) -> str:
        """Where the client is in its life: ``"new"``, ``"open"``, ``"closing"`` or ``"closed"``."""
        return self._core.state.value

    @property
    def base_url(self) -> str:
        """The API base URL this client talks to."""
        return self._core.transport.base_url

    @property
    def callback_url(self) -> str | None:
        """The callback URL sent with every create, when a receiver is configured."""
        return self._core.callback_url

    # -------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> RuxaClient:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the connection pool and start the polling coroutine (``async with`` does this).

        Starting an open client does nothing; a closed one raises :class:`ClientClosedError`.
        """
        if await self._core.start() and self._callbacks is not None:
            await self._callbacks.start(self)

    async def aclose(self) -> None:
        """Stop polling, fail still-pending handles with ClientClosedError, close connections."""
        await self._core.aclose()

    # -------------------------------------------------------------- requests

    async def create_task(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        callback_url: str | None = None,
        validate: bool | None = None,
    ) -> str:
        """Create a task and return its id (retried per the retry policy).

        A known model's input is checked first (see the class docstring):
        :class:`InvalidInputError` before anything is sent.
        """
        return await self._core.create(model, input, callback_url, validate)

    async def get_task(self, task_id: str) -> TaskInfo:
        """Fetch a task's current state once (retried per the retry policy)."""
        return await self._core.get_task(task_id)

    # --------------------------------------------------------------- waiting

    async def submit(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        callback_url: str | None = None,
        validate: bool | None = None,
        idempotency_key: str | None = None,
    ) -> TaskHandle:
        """Create a task and return an awaitable :class:`TaskHandle` for it.

        With a callback receiver configured, the task carries its URL unless
        ``callback_url`` names another one. A known model's bad input raises
        :class:`InvalidInputError` before anything is sent (unless ``validate``
        is False). With ``idempotency_key``, the first
        caller (in this process, or in the fleet with a ``coordinator``) creates
        the task and every other caller with the same key gets a handle for that
        same task; a key whose creator died after sending its create follows
        ``RetryPolicy.ambiguous_creates`` (``"raise"``: :class:`AmbiguousCreateError`).
        """
        url = callback_url if callback_url is not None else self.callback_url
        task_id = await self._core.create(model, input, url, validate, idempotency_key)
        return self._core.handle(task_id, model, callbacks=url is not None)

    def attach(self, task_id: str, *, model: str | None = None) -> TaskHandle:
        """A handle for a task created earlier (perhaps by another process); starts tracking it."""
        self._core.require_open()
        return self._core.handle(task_id, model, callbacks=False)

    async def generate(
        self,
        model: str,
        input: Mapping[str, Any],
        *,
        timeout: float | None = None,
        validate: bool | None = None,
        idempotency_key: str | None = None,
    ) -> TaskInfo:
        """Create a task and wait for it: the successful :class:`TaskInfo`, or an error.

        Raises :class:`InvalidInputError` before sending when the catalogue
        rejects a known model's input (unless ``validate`` is False),
        :class:`TaskFailedError` if the task fails and
        :class:`TaskTimeoutError` after ``timeout`` seconds; if the service is
        unreachable for longer than ``timeout`` while the task is being
        created, :class:`ServiceUnavailableError` (an :class:`APIConnectionError`
        whose ``request_sent`` says whether the create may have arrived).
        ``idempotency_key``: as for :meth:`submit`.
        """
        started = time.monotonic()
        with call_deadline(timeout):  # an outage may not hold the create past the timeout
            handle = await self.submit(
                model, input, validate=validate, idempotency_key=idempotency_key
            )
        if timeout is not None:
            timeout = max(0.0, timeout - (time.monotonic() - started))
        return await handle.wait(timeout)

    async def wait(
        self, task_id: str, *, timeout: float | None = None, model: str | None = None
    ) -> TaskInfo:
        """Re-attach to a task created earlier (perhaps by another process) and wait for it."""
        return await self._core.wait(task_id, timeout, model)

    async def download(self, url: str, dest: str | os.PathLike[str], **options: Any) -> Path:
        """Stream a result file to ``dest`` (via a temporary name, renamed when complete).

        Retried on transient errors; returns the final path. See
        ``ruxa_async._download.download_to_file`` for ``options``.
        """
        from ._download import download_to_file

        self._core.require_open()
        return await download_to_file(self._core.transport, url, Path(dest), **options)

    def forget(self, task_id: str) -> None:
        """Stop tracking ``task_id``: no more checks; a handle still waiting on it stays pending.

        For code that hands a long task over to a later attempt (e.g. a queue's
        retry that re-attaches by idempotency key) instead of keeping it polled here.
        """
        self._core.scheduler.forget(task_id)

    def is_tracking(self, task_id: str) -> bool:
        """True while the client is waiting for ``task_id`` to finish."""
        return self._core.scheduler.last_state(task_id) is not None

    def feed_callback(self, info: TaskInfo, *, attempt: str | None = None) -> bool:
        """Resolve a pending task from a callback parsed elsewhere; True if it resolved one.

        With a ``coordinator``, a terminal callback for a task this client does
        not track is handed to the fleet, where the process awaiting it resolves it.
        ``attempt`` is the ``attempt`` query parameter of the callback URL, when
        present: it names the create attempt the task came from, so an attempt
        that failed ambiguously learns its task id (and is not sent again).
        """
        return self._core.feed_callback(info, attempt)

    # ----------------------------------------------------------------- batches

    def as_completed(
        self,
        jobs: Iterable[Job] | AsyncIterable[Job],
        *,
        max_pending: int = 1000,
        timeout: float | None = None,
        on_event: Callable[[ProgressEvent], None] | None = None,
        before_create: Callable[[Job], Awaitable[None]] | None = None,
        validate: bool | None = None,
        on_send: Callable[[Job], Awaitable[None]] | None = None,
        on_unsent: Callable[[Job], None] | None = None,
    ) -> AsCompleted:
        """Run ``jobs`` and yield a :class:`JobOutcome` for each, in completion order.

        ``jobs`` is pulled lazily; at most ``max_pending`` jobs are created but
        not yet yielded. One job's failure never stops the others. A rejected
        key (401) or exhausted credits (402) stops *submitting*: tasks already
        created are still awaited, and every job not sent is yielded as
        NOT_SUBMITTED. ``timeout`` bounds the whole batch. ``on_event`` receives
        progress events; ``before_create`` is awaited before each create is sent
        (a journal records the job there; if it raises, that job is not sent and
        the batch stops with its error). Jobs with a ``task_id`` are re-attached,
        never created again. A known model's bad input is that job's
        :class:`InvalidInputError` outcome, found before sending (unless
        ``validate`` is False, or the client's ``validate`` is and this is None).

        ``on_send`` is awaited for a job each time one of its create attempts
        holds its rate permit and is about to be written to the socket (and no
        earlier attempt of it is still unaccounted for): the place to record
        durably that a create is in flight. ``on_unsent`` is then told when an
        answer proves nothing was created (429, 401, 402, other 4xx, a
        connection refused before sending) and no attempt of the job was
        ambiguous; the record can be cleared. A crash between the two leaves at
        most the creates actually in flight unaccounted for.
        """
        self._core.require_open()
        options = BatchOptions(
            max_pending=max_pending,
            timeout=timeout,
            on_event=on_event,
            before_create=before_create,
            on_send=on_send,
            on_unsent=on_unsent,
            validate=validate,
        )
        return AsCompleted(ClientPort(self._core), jobs, options)

    async def run_batch(
        self,
        jobs: Iterable[Job] | AsyncIterable[Job],
        *,
        max_pending: int = 1000,
        timeout: float | None = None,
        on_event: Callable[[ProgressEvent], None] | None = None,
        before_create: Callable[[Job], Awaitable[None]] | None = None,
        validate: bool | None = None,
        on_send: Callable[[Job], Awaitable[None]] | None = None,
        on_unsent: Callable[[Job], None] | None = None,
    ) -> BatchReport:
        """Run ``jobs`` to the end: outcomes in input order plus a summary.

        Takes the same arguments as :meth:`as_completed`. The report's request
        counts are this batch's own, whatever else shares the client.
        """
        return await collect(
            self.as_completed(
                jobs,
                max_pending=max_pending,
                timeout=timeout,
                on_event=on_event,
                before_create=before_create,
                validate=validate,
                on_send=on_send,
                on_unsent=on_unsent,
            )
        )

    # ------------------------------------------------------------- statistics

    def statistics(self) -> ClientStatistics:
        """A frozen snapshot of requests, retries, 429s, pending tasks, rates and outages."""
        return self._core.statistics()


def send_once(
    client: RuxaClient, kind: Kind, path: str, body: bytes | None = None
) -> Awaitable[Any]:
    """One request on ``client``, through its outage gate and rate controller, never retried.

    The seam for relays (the gateway): returns the reply envelope's ``data``
    or raises the matching error, and builds nothing else (no retry wrapper,
    no input check, no task object). ``body`` given means a POST. After
    :func:`send_directly`, the short path of ``_direct`` instead. (Not a coroutine
    itself: it hands back the one that sends, one frame less per request.)
    """
    core = client._core
    if core.direct is not None:
        return core.direct.send(kind, path, body)
    return core.requester.send(kind, "GET" if body is None else "POST", path, body)


def send_directly(client: RuxaClient, *, max_pause: float) -> None:
    """Have :func:`send_once` on ``client`` skip its rate controller and outage gate.

    The seam for relays that pace nothing and keep their own rules per key (see
    ``_direct``): a 429 pauses that class of requests for its ``Retry-After``
    (at most ``max_pause``), and sends during the pause fail at once.
    """
    client._core.send_directly(max_pause)


def use_transport(client: RuxaClient, cls: type[Transport]) -> None:
    """Have a new (not yet opened) ``client`` send its API requests through ``cls``.

    The seam for relays (the gateway's lighter upstream client, see
    ``_light_transport``); ``cls`` takes :class:`Transport`'s constructor arguments.
    """
    client._core.use_transport(cls)
