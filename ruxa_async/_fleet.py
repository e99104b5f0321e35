"""The client's side of a coordinator: idempotent creates, credits, callbacks.

``RuxaClient`` delegates here so its own code only calls a few hooks: around a
create (:meth:`Fleet.create`, :meth:`Fleet.create_once`), before each request
goes out (:meth:`Fleet.sending`) and for callbacks it cannot resolve itself
(:meth:`Fleet.forward_callback`). A coordinator that shares rates hands its
:attr:`Fleet.rate_state` to the client's ``RateController``: the fleet's
processes then run one discovery over one bucket, one 429 gate and one
learned limit.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ._config import RateLimits, RetryPolicy
from ._coordinator import AmbiguousCreateError, Coordinator, LocalCoordinator, Reservation
from ._errors import RuxaError
from ._models import TaskInfo, TaskState
from ._ratestate import Kind, RateState
from ._retry import is_ambiguous_create
from .catalog import estimate_cost

__all__ = ["Fleet", "coordinator_from_url"]

log = logging.getLogger("ruxa_async")

_CLAIM_POLL = 1.0  # seconds between re-reading a claim another live process holds
_RESERVATIONS_KEPT = 100_000  # reservations of tasks whose outcome is not known yet


class _Sending:
    __slots__ = ("key", "sent")

    def __init__(self, key: str) -> None:
        self.key = key
        self.sent = False


_SENDING: contextvars.ContextVar[_Sending | None] = contextvars.ContextVar(
    "ruxa_async_idempotent_create", default=None
)


class Fleet:
    """One client's link to its coordinator (a private :class:`LocalCoordinator` when None)."""

    def __init__(
        self, coordinator: Coordinator | None, limits: RateLimits, retry: RetryPolicy
    ) -> None:
        self.explicit = coordinator is not None
        self.coordinator: Coordinator = coordinator or LocalCoordinator()
        self.rate_state: RateState | None = self.coordinator.rate_state
        self.shares_rate = self.rate_state is not None
        self._limits = limits
        self._retry = retry
        self._creating: dict[str, asyncio.Task[str]] = {}
        self._forwarding: set[asyncio.Task[None]] = set()
        # credits reserved for created tasks, settled on their outcome (a failure refunds)
        self._reserved: collections.OrderedDict[str, Reservation] = collections.OrderedDict()
        self._failed_early: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._budget = False  # a reservation was made: outcomes matter
        self._refunds: set[asyncio.Task[None]] = set()
        self._remove_handler: Callable[[], None] | None = None
        self._started = False

    async def start(self, resolve: Callable[[TaskInfo], Any]) -> None:
        """Join the coordinator; ``resolve`` receives callbacks other instances publish."""
        if self._started:
            return
        self._started = True
        await self.coordinator.start(self._limits)
        self._remove_handler = self.coordinator.add_callback_handler(resolve)

    async def aclose(self) -> None:
        """Leave the coordinator (the last client of a shared one closes it)."""
        if not self._started:
            return
        self._started = False
        if self._remove_handler is not None:
            self._remove_handler()
            self._remove_handler = None
        for task in list(self._forwarding):
            task.cancel()
        if self._forwarding or self._refunds:  # refunds finish (each bounded by a timeout)
            await asyncio.gather(*self._forwarding, *self._refunds, return_exceptions=True)
        await self.coordinator.aclose()

    # ------------------------------------------------------------------ rate

    async def sending(self, kind: Kind) -> None:
        """Just before a request goes out: an idempotent create becomes 'sending'."""
        if kind != "create":
            return
        current = _SENDING.get()
        if current is not None and not current.sent:
            current.sent = True
            await self.coordinator.mark_sending(current.key)

    # --------------------------------------------------------------- creates

    async def create(
        self, model: str, input: Mapping[str, Any], send: Callable[[], Awaitable[str]]
    ) -> str:
        """Reserve the task's estimated credits, create it, refund when nothing was created.

        The reservation of a created task is settled on its outcome
        (:meth:`outcome`): a task that fails gives its credits back.
        """
        if not self.explicit:
            return await send()
        amount = estimate_cost(model, input) or 0.0
        if self._refunds:  # this process's settled failures count before its next reservation
            await asyncio.wait(set(self._refunds))
        reservation = await self.coordinator.reserve_credits(amount) if amount > 0 else None
        self._budget = self._budget or reservation is not None
        try:
            task_id = await send()
        except RuxaError as exc:
            if reservation is not None and not is_ambiguous_create(exc):
                await self.coordinator.refund_credits(reservation)
            raise
        if reservation is not None:
            if self._failed_early.pop(task_id, 0) is None:  # its failure beat the create reply
                await self.coordinator.refund_credits(reservation)
            else:
                self._reserved[task_id] = reservation
                while len(self._reserved) > _RESERVATIONS_KEPT:
                    self._reserved.popitem(last=False)  # never settled: stays spent
        return task_id

    def outcome(self, info: TaskInfo) -> None:
        """A task snapshot (a query's reply or a callback): settle the task's reservation.

        A failed task's reserved credits are refunded (a failed generation is
        not charged); a succeeded task's stay spent.
        """
        if not (self._budget and info.is_terminal):
            return
        reservation = self._reserved.pop(info.task_id, None)
        if info.state is not TaskState.FAIL:
            return
        if reservation is None:
            self._failed_early[info.task_id] = None
            while len(self._failed_early) > 1024:
                self._failed_early.popitem(last=False)
            return
        task = asyncio.get_running_loop().create_task(
            self.coordinator.refund_credits(reservation), name="ruxa_async credit refund"
        )
        self._refunds.add(task)
        task.add_done_callback(self._refunds.discard)

    async def create_once(self, key: str, create: Callable[[], Awaitable[str]]) -> str:
        """The task id for idempotency ``key``: created here once, or another's, attached."""
        task = self._creating.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._claim_and_create(key, create), name="ruxa_async idempotent create"
            )
            self._creating[key] = task
            task.add_done_callback(self._created)
        return await asyncio.shield(task)

    def _created(self, task: asyncio.Task[str]) -> None:
        for key, value in list(self._creating.items()):
            if value is task:
                del self._creating[key]
        if not task.cancelled():
            task.exception()  # retrieved: every caller got it through shield()

    async def _claim_and_create(self, key: str, create: Callable[[], Awaitable[str]]) -> str:
        coordinator = self.coordinator
        while True:
            claim = await coordinator.claim(key)
            if claim.status == "created":
                assert claim.task_id is not None
                log.debug("idempotency key %r: attached to task %s", key, claim.task_id)
                return claim.task_id
            if claim.status == "in_progress":
                await coordinator.wait_claim(key, _CLAIM_POLL)
                continue
            if claim.status == "ambiguous":
                if self._retry.ambiguous_creates == "raise":
                    raise AmbiguousCreateError(key)
                if not await coordinator.take_over(key):
                    continue
                log.warning(
                    "idempotency key %r: its creator may have sent the create before failing; "
                    "creating it again under ambiguous_creates='retry' (may charge twice)",
                    key,
                )
            return await self._own(key, create)

    async def _own(self, key: str, create: Callable[[], Awaitable[str]]) -> str:
        sending = _Sending(key)
        token = _SENDING.set(sending)
        try:
            task_id = await create()
        except RuxaError as exc:
            sent = sending.sent or not self.shares_rate  # sending() runs with a shared rate only
            await self.coordinator.release(key, ambiguous=sent and is_ambiguous_create(exc))
            raise
        except BaseException:
            sent = sending.sent or not self.shares_rate
            await asyncio.shield(self.coordinator.release(key, ambiguous=sent))
            raise
        finally:
            _SENDING.reset(token)
        await self.coordinator.mark_created(key, task_id)
        return task_id

    # -------------------------------------------------------------- callbacks

    def forward_callback(self, info: TaskInfo) -> None:
        """Publish a terminal callback this client does not track, for the process that does."""
        if not (self.explicit and self._started and info.is_terminal):
            return
        task = asyncio.get_running_loop().create_task(
            self.coordinator.publish_callback(info), name="ruxa_async callback fan-in"
        )
        self._forwarding.add(task)
        task.add_done_callback(self._forwarding.discard)


def coordinator_from_url(url: str | None) -> Coordinator | None:
    """A ``RedisCoordinator`` for ``url`` (the CLI's ``--redis``), None without one."""
    if url is None:
        return None
    from .redis import RedisCoordinator  # the redis extra, only when asked for

    return RedisCoordinator(url)
