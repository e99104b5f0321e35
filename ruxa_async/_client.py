"""RuxaClient: the async context manager that owns the session, limiter and scheduler.

A client's life: *new* (built, nothing open) -> *open* (``async with`` or
``await client.start()``) -> *closing* -> *closed*. Nothing starts by itself:
every call that talks to the service needs an open client and says so
otherwise. A client that was opened and is garbage-collected without being
closed emits a ``ResourceWarning``, as an unclosed aiohttp session does.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import time
import warnings
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs

from . import _wire
from ._batch import AsCompleted, BatchOptions, ProgressEvent, collect
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
from ._coordinator import Coordinator, CoordinatorStatistics
from ._errors import (
    APIConnectionError,
    APIStatusError,
    ClientClosedError,
    ClientNotStartedError,
    ConfigurationError,
    MalformedResponseError,
    RateLimitError,
    RuxaError,
    TaskTimeoutError,
)
from ._fleet import Fleet
from ._handles import TaskHandle
from ._limiter import Permit, RateController, RateStatistics
from ._models import BatchReport, Job, RequestEvent, TaskInfo, TaskState
from ._outage import OutageCoordinator, OutageGate, OutageStatistics, call_deadline
from ._ratehints import parse_rate_headers
from ._retry import Retrier, is_ambiguous_create
from ._scheduler import PollScheduler, SchedulerStatistics
from ._tally import Tally
from ._transport import Transport
from ._version import __version__
from .catalog import get_model, validate_input

__all__ = ["CallbackReceiver", "ClientStatistics", "RuxaClient"]

log = logging.getLogger("ruxa_async")
_PROBE_PATH = _wire.query_path("ruxa-async-probe")
_GATED = object()  # an attempt that found the outage gate closed once it had its permit


@attrs.frozen(kw_only=True)
class ClientStatistics:
    """A snapshot of everything one client has done so far."""

    requests_sent: int
    creates: int
    queries: int
    retries: int
    ambiguous_create_retries: int
    rate_limited: int
    pending: int
    rate: RateStatistics
    scheduler: SchedulerStatistics
    outage: OutageStatistics
    coordinator: CoordinatorStatistics | None = None  # with coordinator=... only
    ambiguous_recovered: int = 0
    """Ambiguous creates (a 5xx or timeout after sending) whose task was then named by its
    own attempt's callback: resolved without sending the create again."""


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


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


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
        outage: OutagePolicy | None = None,
        validate: bool = True,
        on_request: Callable[[RequestEvent], None] | None = None,
    ) -> None:
        self._state = _State.NEW
        self._on_request = on_request
        self._key = _key_source(api_key)
        self._callbacks = callbacks
        self._validate = validate
        self._base_url = resolve_base_url(base_url)
        self.timeouts = timeouts or Timeouts()
        self.retry_policy = retry or RetryPolicy()
        self.rate_limits = rate_limits or RateLimits()
        self.poll_policy = poll or PollPolicy()
        # fleet (coordinator) hooks: see _fleet.py; a shared pacer owns rate discovery
        self._fleet = Fleet(coordinator, self.rate_limits, self.retry_policy)
        local_limits = self.rate_limits
        if self._fleet.shares_rate:
            local_limits = attrs.evolve(local_limits, adaptive=False)
        self._limiter = RateController(local_limits)
        self._transport = Transport(
            base_url=self._base_url,
            key=self._key,
            timeouts=self.timeouts,
            max_connections=max_connections or self._limiter.max_in_flight,
            user_agent=f"ruxa-async/{__version__}",
        )
        self.outage_policy = outage or OutagePolicy()
        self._outage: OutageCoordinator = OutageGate(
            self.outage_policy, url=self._transport.base_url
        )
        self._retrier = Retrier(self.retry_policy)
        self._scheduler = PollScheduler(
            self._check,
            self.poll_policy,
            concurrency=self._limiter.max_in_flight,
            typical_seconds=_typical_seconds,
        )
        self._runner: asyncio.Task[None] | None = None
        self._counts = {"create": 0, "query": 0}
        self._attempts: dict[str, asyncio.Future[str]] = {}  # callback token -> task id
        self._recovered = 0

    def __repr__(self) -> str:
        return f"<RuxaClient {self._base_url} {self._state.value}>"

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_state", None) in (_State.OPEN, _State.CLOSING):
            _warn(
                f"unclosed {self!r}: use `async with RuxaClient(...)` or await client.aclose()",
                ResourceWarning,
                source=self,
            )

    @property
    def state(self) -> str:
        """Where the client is in its life: ``"new"``, ``"open"``, ``"closing"`` or ``"closed"``."""
        return self._state.value

    @property
    def base_url(self) -> str:
        """The API base URL this client talks to."""
        return self._transport.base_url

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
        if self._state is not _State.NEW:
            self._require_open()
            return
        self._state = _State.OPEN
        self._transport.open()
        self._runner = asyncio.get_running_loop().create_task(
            self._scheduler.run(), name="ruxa_async scheduler"
        )
        await self._fleet.start(self._resolve_published)
        if self._callbacks is not None:
            await self._callbacks.start(self)

    async def aclose(self) -> None:
        """Stop polling, fail still-pending handles with ClientClosedError, close connections."""
        if self._state is _State.CLOSED or self._state is _State.CLOSING:
            return
        if self._state is _State.NEW:
            self._state = _State.CLOSED
            return
        self._state = _State.CLOSING
        try:
            await self._shut_down()
        finally:
            self._state = _State.CLOSED

    async def _shut_down(self) -> None:
        if self._callbacks is not None:
            await self._callbacks.aclose()
        self._scheduler.close()
        await self._fleet.aclose()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            # gather() hands back the runner's CancelledError as a value; a cancellation
            # of the task calling aclose() itself still propagates.
            await asyncio.gather(runner, return_exceptions=True)
        await self._transport.aclose()

    def _require_open(self) -> None:
        """Raise unless the client is open: the one rule for every call that needs the service."""
        state = self._state
        if state is _State.OPEN:
            return
        if state is _State.NEW:
            raise ClientNotStartedError(
                "this client is not open yet: use `async with RuxaClient(...) as client:` "
                "or `await client.start()` (and `await client.aclose()` when done)"
            )
        raise ClientClosedError(
            f"this client is {state.value}: it cannot be used or reopened; create a new "
            "RuxaClient (tasks already created can be re-attached with client.wait(task_id))"
        )

    # ---------------------------------------------------------- the one path

    async def _send(
        self,
        kind: Kind,
        method: str,
        path: str,
        body: bytes | None = None,
        tally: Tally | None = None,
        sending: Callable[[], Awaitable[None]] | None = None,
    ) -> Any:
        """One request, waiting first while the outage gate is closed.

        A failure that closed (or met) the gate is sent again once it opens,
        unless it was a create that may have reached the service: the retry
        policy decides about those. ``sending`` and ``tally``: see :meth:`_attempt`.
        """
        self._require_open()
        outage = self._outage
        while True:
            if not outage.is_open():
                await outage.wait_open(self._probe)
            try:
                data = await self._attempt(kind, method, path, body, tally=tally, sending=sending)
            except APIConnectionError as exc:
                if outage.on_failure(exc) and (kind == "query" or not exc.request_sent):
                    continue
                raise
            if data is not _GATED:
                return data

    async def _attempt(
        self,
        kind: Kind,
        method: str,
        path: str,
        body: bytes | None,
        *,
        tally: Tally | None = None,
        sending: Callable[[], Awaitable[None]] | None = None,
        probe: bool = False,
    ) -> Any:
        """One attempt: permit from the rate controller, the request, the parsed reply.

        Returns ``_GATED`` without sending when the outage gate closed while
        this attempt waited for its permit. ``sending`` is awaited once the
        permit is granted, right before the request goes out (it may raise to
        send nothing); ``tally`` counts the attempt for its owner (a batch).
        """
        fleet = self._fleet if self._fleet.shares_rate else None
        epoch = await fleet.admit(kind) if fleet is not None else 0
        async with self._limiter.permit(kind) as permit:
            if not (probe or self._outage.is_open()):
                return _GATED
            if sending is not None:
                await sending()
            if fleet is not None:
                await fleet.sending(kind)
            self._counts[kind] += 1
            if tally is not None:
                tally.requests_sent += 1
            try:
                reply = await self._transport.request(method, path, body)
            except RuxaError:
                if self._on_request is not None:
                    self._observe(kind, path, permit, None)
                raise
        self._outage.on_reply()
        hint = parse_rate_headers(reply.rate_headers) if reply.rate_headers else None
        try:
            data = _wire.parse_reply(reply.status, reply.body, reply.retry_after)
        except RateLimitError as exc:
            if self._on_request is not None:  # stamped before the gate closes
                self._observe(kind, path, permit, 429)
            await self._limiter.on_rate_limited(permit, exc.retry_after, hint)
            if tally is not None:
                tally.rate_limited += 1
            if fleet is not None:
                await fleet.rate_limited(kind, epoch, exc.retry_after)
            raise
        except APIStatusError as exc:
            await self._limiter.on_success(permit, hint)
            if fleet is not None:
                fleet.succeeded(kind)
            if self._on_request is not None:
                self._observe(kind, path, permit, exc.code or exc.http_status)
            raise
        except RuxaError:
            if self._on_request is not None:
                self._observe(kind, path, permit, reply.status)
            raise
        await self._limiter.on_success(permit, hint)
        if fleet is not None:
            fleet.succeeded(kind)
        if self._on_request is not None:
            self._observe(kind, path, permit, 200)
        return data

    async def _probe(self) -> None:
        """The outage gate's probe: a query for a task that does not exist; any reply will do."""
        with contextlib.suppress(APIStatusError, MalformedResponseError):
            await self._attempt("query", "GET", _PROBE_PATH, None, probe=True)

    def _observe(self, kind: Kind, path: str, permit: Permit, code: int | None) -> None:
        event = RequestEvent(
            kind=kind, path=path, sent_at=permit.granted_at, replied_at=time.monotonic(), code=code
        )
        try:
            self._on_request(event)  # type: ignore[misc]
        except Exception:
            log.exception("the on_request callback raised; ignoring")

    async def _check(self, task_id: str, tally: Tally | None = None) -> TaskInfo:
        data = await self._send("query", "GET", _wire.query_path(task_id), None, tally)
        return _wire.parse_task(data, task_id=task_id)

    async def _create(
        self,
        model: str,
        input: Mapping[str, Any],
        callback_url: str | None,
        tally: Tally | None = None,
        sending: Callable[[], Awaitable[None]] | None = None,
        failed: Callable[[BaseException], None] | None = None,
        label: str | None = None,
    ) -> str:
        """Create a task with retries; each attempt is counted in ``tally``, told to ``sending``.

        ``failed`` is told each failed attempt's error (after ``sending``, or
        before it when the attempt was refused earlier). With the client's own
        callback receiver, each attempt carries its own token in the callback
        URL; an attempt that fails ambiguously waits (up to the scheduler's
        safety-net delay for ``model``) for that attempt's callback, which names
        the task if one was created: then nothing is sent again. ``label``
        names the job in log lines.
        """
        body = _wire.build_create_body(model, input, callback_url)
        tokens = self._callbacks is not None and callback_url == self.callback_url

        async def send() -> str:
            if tokens and callback_url is not None:
                return await self._create_with_tokens(
                    model, input, callback_url, tally, sending, failed, label
                )
            if tally is None and sending is None and failed is None:
                data = await self._retrier.call(
                    "create", lambda: self._send("create", "POST", _wire.CREATE_PATH, body)
                )
                return _wire.parse_task_id(data)
            last: list[BaseException] = []

            async def attempt() -> Any:
                if tally is not None and last and is_ambiguous_create(last[-1]):
                    tally.ambiguous_create_retries += 1
                try:
                    return await self._send(
                        "create", "POST", _wire.CREATE_PATH, body, tally, sending
                    )
                except BaseException as exc:
                    last.append(exc)
                    if failed is not None:
                        failed(exc)
                    raise

            data = await self._retrier.call("create", attempt)
            return _wire.parse_task_id(data)

        task_id = await self._fleet.create(model, input, send)
        log.debug("created task %s (%s)", task_id, model)
        return task_id

    async def _create_with_tokens(
        self,
        model: str,
        input: Mapping[str, Any],
        callback_url: str,
        tally: Tally | None,
        sending: Callable[[], Awaitable[None]] | None,
        failed: Callable[[BaseException], None] | None,
        label: str | None,
    ) -> str:
        """``_create`` with a callback token per attempt (see there)."""
        last: list[BaseException] = []
        sep = "&" if "?" in callback_url else "?"

        async def attempt() -> Any:
            if tally is not None and last and is_ambiguous_create(last[-1]):
                tally.ambiguous_create_retries += 1
            token = secrets.token_urlsafe(12)
            waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._attempts[token] = waiter
            body = _wire.build_create_body(model, input, f"{callback_url}{sep}attempt={token}")
            try:
                return await self._send("create", "POST", _wire.CREATE_PATH, body, tally, sending)
            except RuxaError as exc:
                if is_ambiguous_create(exc):
                    task_id = await self._recover(waiter, model)
                    if task_id is not None:
                        self._recovered += 1
                        log.warning(
                            "job %s: its create failed ambiguously (%s) but its callback named "
                            "task %s; not sent again",
                            label or "(no key)",
                            exc,
                            task_id,
                        )
                        return {"taskId": task_id}
                last.append(exc)
                if failed is not None:
                    failed(exc)
                raise
            except BaseException as exc:
                last.append(exc)
                if failed is not None:
                    failed(exc)
                raise
            finally:
                self._attempts.pop(token, None)

        data = await self._retrier.call("create", attempt)
        return _wire.parse_task_id(data)

    async def _recover(self, waiter: asyncio.Future[str], model: str) -> str | None:
        """The task id the attempt's callback names, if it comes within the safety-net delay."""
        if not waiter.done():
            delay = self._scheduler.safety_net_seconds(model)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), delay)
            except asyncio.TimeoutError:
                return None
        return waiter.result()

    def _check_input(self, model: str, input: Mapping[str, Any], validate: bool | None) -> None:
        if self._validate if validate is None else validate:
            validate_input(model, input)

    @property
    def callback_url(self) -> str | None:
        """The callback URL sent with every create, when a receiver is configured."""
        return self._callbacks.callback_url if self._callbacks is not None else None

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
        self._require_open()
        self._check_input(model, input, validate)
        return await self._create(model, input, callback_url)

    async def get_task(self, task_id: str) -> TaskInfo:
        """Fetch a task's current state once (retried per the retry policy)."""
        self._require_open()
        return await self._retrier.call("query", lambda: self._check(task_id))

    # --------------------------------------------------------------- waiting

    def _handle(self, task_id: str, model: str | None, callbacks: bool) -> TaskHandle:
        future = self._scheduler.track(task_id, model=model, callbacks=callbacks)
        return TaskHandle(task_id, future, self._scheduler.last_state)

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
        if idempotency_key is not None:
            self._require_open()
            self._check_input(model, input, validate)
            task_id = await self._fleet.create_once(
                idempotency_key,
                lambda: self.create_task(model, input, callback_url=url, validate=False),
            )
        else:
            task_id = await self.create_task(model, input, callback_url=url, validate=validate)
        return self._handle(task_id, model, callbacks=url is not None)

    def attach(self, task_id: str, *, model: str | None = None) -> TaskHandle:
        """A handle for a task created earlier (perhaps by another process); starts tracking it."""
        self._require_open()
        return self._handle(task_id, model, callbacks=False)

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
        self._require_open()
        already = self._scheduler.last_state(task_id) is not None
        handle = self._handle(task_id, model, callbacks=False)
        try:
            return await handle.wait(timeout)
        except (TaskTimeoutError, asyncio.CancelledError):
            if not already:
                self._scheduler.forget(task_id)
            raise

    async def download(self, url: str, dest: str | os.PathLike[str], **options: Any) -> Path:
        """Stream a result file to ``dest`` (via a temporary name, renamed when complete).

        Retried on transient errors; returns the final path. See
        ``ruxa_async._download.download_to_file`` for ``options``.
        """
        from ._download import download_to_file

        self._require_open()
        return await download_to_file(self._transport, url, Path(dest), **options)

    def forget(self, task_id: str) -> None:
        """Stop tracking ``task_id``: no more checks; a handle still waiting on it stays pending.

        For code that hands a long task over to a later attempt (e.g. a queue's
        retry that re-attaches by idempotency key) instead of keeping it polled here.
        """
        self._scheduler.forget(task_id)

    def is_tracking(self, task_id: str) -> bool:
        """True while the client is waiting for ``task_id`` to finish."""
        return self._scheduler.last_state(task_id) is not None

    def feed_callback(self, info: TaskInfo, *, attempt: str | None = None) -> bool:
        """Resolve a pending task from a callback parsed elsewhere; True if it resolved one.

        With a ``coordinator``, a terminal callback for a task this client does
        not track is handed to the fleet, where the process awaiting it resolves it.
        ``attempt`` is the ``attempt`` query parameter of the callback URL, when
        present: it names the create attempt the task came from, so an attempt
        that failed ambiguously learns its task id (and is not sent again).
        """
        if attempt is not None:
            waiter = self._attempts.get(attempt)
            if waiter is not None and not waiter.done():
                waiter.set_result(info.task_id)  # its snapshot is kept until the task is tracked
        resolved = self._scheduler.resolve(info, source="callback")
        if not resolved and self._scheduler.last_state(info.task_id) is None:
            self._fleet.forward_callback(info)
        return resolved

    def _resolve_published(self, info: TaskInfo) -> None:
        if self._scheduler.last_state(info.task_id) is not None:
            self._scheduler.resolve(info, source="callback")

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
        self._require_open()
        options = BatchOptions(
            max_pending=max_pending,
            timeout=timeout,
            on_event=on_event,
            before_create=before_create,
            on_send=on_send,
            on_unsent=on_unsent,
            validate=validate,
        )
        return AsCompleted(_BatchPort(self), jobs, options)

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
        rate = self._limiter.statistics()
        return ClientStatistics(
            requests_sent=self._transport.requests_sent,
            creates=self._counts["create"],
            queries=self._counts["query"],
            retries=self._retrier.retries,
            ambiguous_create_retries=self._retrier.ambiguous_create_retries,
            rate_limited=rate.rate_limited,
            pending=self._scheduler.pending,
            rate=rate,
            scheduler=self._scheduler.statistics(),
            outage=self._outage.statistics(),
            coordinator=self._fleet.coordinator.statistics() if self._fleet.explicit else None,
            ambiguous_recovered=self._recovered,
        )


class _BatchPort:
    """The narrow view of a client that a batch gets (see ``_batch.BatchPort``)."""

    __slots__ = ("_client",)

    def __init__(self, client: RuxaClient) -> None:
        self._client = client

    @property
    def callback_url(self) -> str | None:
        return self._client.callback_url

    @property
    def max_under_way(self) -> int:
        return self._client._limiter.max_in_flight

    def validate(self, job: Job, wanted: bool | None) -> None:
        self._client._check_input(job.model, job.input, wanted)

    async def create(
        self,
        job: Job,
        tally: Tally,
        sending: Callable[[], Awaitable[None]],
        failed: Callable[[BaseException], None],
    ) -> str:
        client = self._client
        return await client._create(
            job.model, job.input, client.callback_url, tally, sending, failed, job.key
        )

    def track(
        self,
        task_id: str,
        model: str | None,
        tally: Tally,
        on_state: Callable[[TaskState], None] | None,
    ) -> asyncio.Future[TaskInfo]:
        client = self._client
        client._require_open()
        return client._scheduler.track(
            task_id,
            model=model,
            callbacks=client.callback_url is not None,
            on_state=on_state,
            tally=tally,
        )

    def forget(self, task_id: str) -> None:
        self._client._scheduler.forget(task_id)


def _typical_seconds(model: str | None) -> float | None:
    spec = get_model(model) if model else None
    return spec.typical_seconds if spec is not None else None


async def send_once(client: RuxaClient, kind: Kind, path: str, body: bytes | None = None) -> Any:
    """One request on ``client``, through its outage gate and rate controller, never retried.

    The seam for relays (the gateway): returns the reply envelope's ``data``
    or raises the matching error, and builds nothing else (no retry wrapper,
    no input check, no task object). ``body`` given means a POST.
    """
    return await client._send(kind, "GET" if body is None else "POST", path, body)
