"""What one ``RuxaClient`` owns, wired together, and its life (new, open, closing, closed).

The client (``_client.py``) is the public face: its methods say what they do
and delegate here. :class:`ClientCore` builds the parts (fleet link, rate
controller, transport, outage gate, retrier, the :class:`Requester` request
path, the polling scheduler and the :class:`Creator`), starts and stops them
in order, enforces the one lifecycle rule (nothing talks to the service
unless the client is open) and assembles :class:`ClientStatistics`. A callback
receiver is held here as a :class:`CallbackEndpoint` (its URL, its closing);
the client attaches it to itself when it opens.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs

from ._config import OutagePolicy, PollPolicy, RateLimits, RetryPolicy, Timeouts
from ._coordinator import Coordinator, CoordinatorStatistics
from ._creator import Creator
from ._direct import DirectSender
from ._errors import ClientClosedError, ClientNotStartedError, TaskTimeoutError
from ._fleet import Fleet
from ._fleet_outage import outage_gate
from ._handles import TaskHandle
from ._limiter import RateController, RateStatistics
from ._models import RequestEvent, TaskInfo
from ._outage import OutageCoordinator, OutageStatistics
from ._request import Requester
from ._retry import Retrier
from ._scheduler import PollScheduler, SchedulerStatistics
from ._transport import Transport
from ._version import __version__
from .catalog import get_model, validate_input

__all__ = ["CallbackEndpoint", "ClientCore", "ClientStatistics", "State"]


class CallbackEndpoint(Protocol):
    """The part of a callback receiver the core uses: its URL, and closing it."""

    @property
    def callback_url(self) -> str:
        """The URL Ruxa should POST to, secret token included."""
        ...

    async def aclose(self) -> None:
        """Stop receiving callbacks."""
        ...


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


class State(enum.Enum):
    """Where a client is in its life."""

    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class ClientCore:
    """The parts of one client and their lifecycle; see the module docstring."""

    def __init__(
        self,
        *,
        key: Callable[[], str],
        base_url: str,
        timeouts: Timeouts,
        retry: RetryPolicy,
        rate_limits: RateLimits,
        poll: PollPolicy,
        outage: OutagePolicy | OutageCoordinator | None,
        max_connections: int | None,
        callbacks: CallbackEndpoint | None,
        coordinator: Coordinator | None,
        validate: bool,
        on_request: Callable[[RequestEvent], None] | None,
    ) -> None:
        self.state = State.NEW
        self.callbacks = callbacks
        self.validate = validate
        # fleet (coordinator) hooks: see _fleet.py; a fleet's controllers share one rate state
        self.fleet = Fleet(coordinator, rate_limits, retry)
        self.limiter = RateController(rate_limits, state=self.fleet.rate_state)
        self._transport_args: dict[str, Any] = {
            "base_url": base_url,
            "key": key,
            "timeouts": timeouts,
            "max_connections": max_connections or self.limiter.max_in_flight,
            "user_agent": f"ruxa-async/{__version__}",
        }
        self.transport = Transport(**self._transport_args)
        _, self.outage = outage_gate(outage, coordinator, url=self.transport.base_url)
        self.retrier = Retrier(retry)
        self.requester = Requester(
            transport=self.transport,
            limiter=self.limiter,
            outage=self.outage,
            fleet=self.fleet,
            require_open=self.require_open,
            on_request=on_request,
        )
        self.scheduler = PollScheduler(
            self.requester.check,
            poll,
            concurrency=self.limiter.max_in_flight,
            typical_seconds=_typical_seconds,
            budget=self.limiter.query_budget,
        )
        self.creator = Creator(
            requester=self.requester,
            retrier=self.retrier,
            fleet=self.fleet,
            own_callback_url=lambda: self.callback_url,
            safety_net_seconds=self.scheduler.safety_net_seconds,
        )
        self._runner: asyncio.Task[None] | None = None
        self.direct: DirectSender | None = None  # a relay's short path: see send_directly()

    @property
    def callback_url(self) -> str | None:
        """The callback receiver's URL, when one is configured."""
        return self.callbacks.callback_url if self.callbacks is not None else None

    def use_transport(self, cls: type[Transport]) -> None:
        """Build the transport as ``cls`` (a relay's lighter HTTP client); before opening only."""
        if self.state is not State.NEW:
            raise RuntimeError("the transport can only be replaced before the client opens")
        self.transport = self.requester.transport = cls(**self._transport_args)

    def send_directly(self, max_pause: float) -> None:
        """Send a relay's requests by :class:`DirectSender` (no rate controller, no outage gate)."""
        self.direct = DirectSender(
            lambda: self.transport,
            require_open=self.require_open,
            counts=self.requester.counts,
            max_pause=max_pause,
        )

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> bool:
        """Open the pool, start polling, join the fleet; True when this call opened the client.

        The client then starts its callback receiver (it attaches the client itself).
        """
        if self.state is not State.NEW:
            self.require_open()
            return False
        self.state = State.OPEN
        self.transport.open()
        self._runner = asyncio.get_running_loop().create_task(
            self.scheduler.run(), name="ruxa_async scheduler"
        )
        await self.fleet.start(self._resolve_published)
        return True

    async def aclose(self) -> None:
        """Stop everything :meth:`start` started, in reverse; the client ends closed."""
        if self.state is State.CLOSED or self.state is State.CLOSING:
            return
        if self.state is State.NEW:
            self.state = State.CLOSED
            return
        self.state = State.CLOSING
        try:
            await self._shut_down()
        finally:
            self.state = State.CLOSED

    async def _shut_down(self) -> None:
        if self.callbacks is not None:
            await self.callbacks.aclose()
        self.scheduler.close()
        await self.fleet.aclose()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            # gather() hands back the runner's CancelledError as a value; a cancellation
            # of the task calling aclose() itself still propagates.
            await asyncio.gather(runner, return_exceptions=True)
        await self.transport.aclose()

    def require_open(self) -> None:
        """Raise unless the client is open: the one rule for every call that needs the service."""
        state = self.state
        if state is State.OPEN:
            return
        if state is State.NEW:
            raise ClientNotStartedError(
                "this client is not open yet: use `async with RuxaClient(...) as client:` "
                "or `await client.start()` (and `await client.aclose()` when done)"
            )
        raise ClientClosedError(
            f"this client is {state.value}: it cannot be used or reopened; create a new "
            "RuxaClient (tasks already created can be re-attached with client.wait(task_id))"
        )

    # ------------------------------------------------------------------ tasks

    async def create(
        self,
        model: str,
        input: Mapping[str, Any],
        callback_url: str | None,
        validate: bool | None,
        idempotency_key: str | None = None,
    ) -> str:
        """See ``RuxaClient.create_task`` and ``RuxaClient.submit``."""
        self.require_open()
        self.check_input(model, input, validate)
        if idempotency_key is None:
            return await self.creator.create(model, input, callback_url)
        return await self.fleet.create_once(
            idempotency_key, lambda: self.create(model, input, callback_url, False)
        )

    async def get_task(self, task_id: str) -> TaskInfo:
        """See ``RuxaClient.get_task``."""
        self.require_open()
        return await self.retrier.call("query", lambda: self.requester.check(task_id))

    async def wait(self, task_id: str, timeout: float | None, model: str | None) -> TaskInfo:
        """See ``RuxaClient.wait``."""
        self.require_open()
        already = self.scheduler.last_state(task_id) is not None
        handle = self.handle(task_id, model, callbacks=False)
        try:
            return await handle.wait(timeout)
        except (TaskTimeoutError, asyncio.CancelledError):
            if not already:
                self.scheduler.forget(task_id)
            raise

    def check_input(self, model: str, input: Mapping[str, Any], validate: bool | None) -> None:
        """Check a known model's input unless validation is off (per call, else per client)."""
        if self.validate if validate is None else validate:
            validate_input(model, input)

    def handle(self, task_id: str, model: str | None, callbacks: bool) -> TaskHandle:
        """Start tracking ``task_id`` and return the caller's handle for it."""
        future = self.scheduler.track(task_id, model=model, callbacks=callbacks)
        return TaskHandle(task_id, future, self.scheduler.last_state)

    def feed_callback(self, info: TaskInfo, attempt: str | None) -> bool:
        """See ``RuxaClient.feed_callback``."""
        self.fleet.outcome(info)  # settles the task's credit reservation
        if attempt is not None:
            self.creator.attempt_named(attempt, info.task_id)  # kept until the task is tracked
        resolved = self.scheduler.resolve(info, source="callback")
        if not resolved and self.scheduler.last_state(info.task_id) is None:
            self.fleet.forward_callback(info)
        return resolved

    def _resolve_published(self, info: TaskInfo) -> None:
        self.fleet.outcome(info)
        self.scheduler.resolve(info, source="fleet")  # held briefly if not tracked (yet)

    def statistics(self) -> ClientStatistics:
        """See ``RuxaClient.statistics``."""
        rate = self.limiter.statistics()
        counts = self.requester.counts
        return ClientStatistics(
            requests_sent=self.transport.requests_sent,
            creates=counts["create"],
            queries=counts["query"],
            retries=self.retrier.retries,
            ambiguous_create_retries=self.retrier.ambiguous_create_retries,
            rate_limited=rate.rate_limited,
            pending=self.scheduler.pending,
            rate=rate,
            scheduler=self.scheduler.statistics(),
            outage=self.outage.statistics(),
            coordinator=self.fleet.coordinator.statistics() if self.fleet.explicit else None,
            ambiguous_recovered=self.creator.recovered,
        )


def _typical_seconds(model: str | None) -> float | None:
    spec = get_model(model) if model else None
    return spec.typical_seconds if spec is not None else None
