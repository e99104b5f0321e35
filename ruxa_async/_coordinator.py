"""What processes sharing one account coordinate, and the in-process implementation.

A :class:`Coordinator` is the one place where a client's account-wide state
lives when several clients (usually several worker processes) spend one Ruxa
account: the rate budget and the 429 gate, the credit budget, idempotency
claims, and callbacks that arrive at another instance. ``RuxaClient`` takes one
as ``coordinator=``; ``ruxa_async.redis.RedisCoordinator`` shares it through
Redis, :class:`LocalCoordinator` keeps it in this process.

A coordinator never fails a request because of its own trouble: an
implementation backed by a service degrades to local-only behaviour, logs it
and counts it in :meth:`Coordinator.statistics`.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Literal

import attrs

from ._config import RateLimits
from ._errors import InsufficientCreditsError, RuxaError
from ._models import TaskInfo
from ._ratestate import RateState

__all__ = [
    "AmbiguousCreateError",
    "Claim",
    "Coordinator",
    "CoordinatorStatistics",
    "CreditBudgetExceededError",
    "LocalCoordinator",
    "Reservation",
]

log = logging.getLogger("ruxa_async")

ClaimStatus = Literal["owner", "created", "in_progress", "ambiguous"]
CallbackHandler = Callable[[TaskInfo], None]

_LOCAL_KEYS_KEPT = 100_000  # created idempotency keys remembered by a LocalCoordinator


class AmbiguousCreateError(RuxaError):
    """A create for this idempotency key may have reached the service, and no one knows its task.

    The process that claimed the key died (or failed) after sending its create
    and before recording the task id. Under ``RetryPolicy(ambiguous_creates="raise")``
    the job stops here instead of risking a second, charged task; check the
    account's tasks, or use ``ambiguous_creates="retry"`` to create it again.
    """

    def __init__(self, idempotency_key: str) -> None:
        self.idempotency_key = idempotency_key
        super().__init__(
            f"idempotency key {idempotency_key!r}: its creator may have sent the create before "
            "failing, so the task may exist (and be charged); not creating it again under "
            "ambiguous_creates='raise'"
        )


class CreditBudgetExceededError(InsufficientCreditsError):
    """The coordinator's ``max_credits`` for the current window would be exceeded.

    Raised before the create is sent; a batch stops submitting, as on a 402.
    """

    hint = "Raise max_credits, wait for the next budget window, or top up"

    def __init__(self, needed: float, spent: float, budget: float) -> None:
        super().__init__(
            f"credit budget exceeded: this task needs {needed:g} credits, "
            f"{spent:g} of {budget:g} are already reserved in this window",
            code=None,
            http_status=402,
        )
        self.needed = needed
        self.spent = spent
        self.budget = budget


@attrs.frozen(kw_only=True)
class Reservation:
    """Credits reserved for one create: where they were counted and how many."""

    where: str
    amount: float


@attrs.frozen(kw_only=True)
class Claim:
    """The answer to :meth:`Coordinator.claim`.

    ``owner``: this caller must create the task. ``created``: ``task_id`` is
    the task. ``in_progress``: a live process is creating it; wait and ask
    again. ``ambiguous``: its creator died after sending the create.
    """

    status: ClaimStatus
    task_id: str | None = None


@attrs.frozen(kw_only=True)
class CoordinatorStatistics:
    """A snapshot of what a coordinator saw, from the point of view of this process.

    Rates are the fleet's shared requests per second (``None``: unknown).
    ``fleet_rate_limited`` counts 429s reported to the fleet by this process;
    ``fleet_pauses`` the gate closings this process learned about from others.
    ``leases``/``leased_tokens`` count the blocks of permits drawn from the
    shared budget. ``degraded`` is True while the shared store is unreachable;
    ``degraded_seconds`` sums those periods, ``degraded_events`` counts them.
    """

    backend: str
    shared: bool
    create_rate: float | None = None
    query_rate: float | None = None
    fleet_rate_limited: int = 0
    fleet_pauses: int = 0
    leases: int = 0
    leased_tokens: int = 0
    members: int = 1
    degraded: bool = False
    degraded_seconds: float = 0.0
    degraded_events: int = 0
    store_errors: int = 0
    claims: int = 0
    attached: int = 0
    ambiguous_claims: int = 0
    credits_reserved: float = 0.0
    credits_refunded: float = 0.0
    callbacks_published: int = 0
    callbacks_received: int = 0


class Coordinator(abc.ABC):
    """The state a fleet of clients shares; see the module docstring.

    Subclasses implement the abstract methods; a client calls :meth:`start`
    when it starts and :meth:`aclose` when it closes (a coordinator shared by
    several clients in one process counts them and stops with the last).
    Nothing here may hang: every method is bounded by the implementation's
    timeouts and falls back to local behaviour when its store is unreachable.
    """

    #: The shared rate-controller state when the coordinator paces requests
    #: across processes (the client then takes each permit from it), else None.
    rate_state: RateState | None = None

    def __init__(self) -> None:
        self._users = 0
        self._callback_handlers: list[CallbackHandler] = []
        self.limits = RateLimits()

    async def __aenter__(self) -> Coordinator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self, limits: RateLimits | None = None) -> None:
        """Start (or join, when already started); ``limits`` come from the first client."""
        self._users += 1
        if self._users == 1:
            if limits is not None:
                self.limits = limits
            await self._open()

    async def aclose(self) -> None:
        """Leave; the last user closes connections and background tasks."""
        if self._users == 0:
            return
        self._users -= 1
        if self._users == 0:
            await self._close()

    async def _open(self) -> None:
        """Open connections and start background work (first user)."""
        return

    async def _close(self) -> None:
        """Close connections and stop background work (last user)."""
        return

    # ------------------------------------------------------------ idempotency

    @abc.abstractmethod
    async def claim(self, key: str) -> Claim:
        """Claim ``key`` (or learn who has it); see :class:`Claim`."""

    @abc.abstractmethod
    async def mark_sending(self, key: str) -> None:
        """The owner of ``key`` is about to send its create (a crash from now is ambiguous)."""

    @abc.abstractmethod
    async def mark_created(self, key: str, task_id: str) -> None:
        """The owner of ``key`` created ``task_id``; waiters attach to it."""

    @abc.abstractmethod
    async def release(self, key: str, *, ambiguous: bool) -> None:
        """The owner's create failed: free the key, or mark it ambiguous when it may exist."""

    @abc.abstractmethod
    async def take_over(self, key: str) -> bool:
        """Become the owner of an ambiguous ``key`` (``ambiguous_creates="retry"``)."""

    @abc.abstractmethod
    async def wait_claim(self, key: str, timeout: float) -> None:
        """Wait until ``key`` may have changed (its creation ended), at most ``timeout`` s."""

    # ---------------------------------------------------------------- credits

    async def reserve_credits(self, amount: float) -> Reservation | None:
        """Reserve ``amount`` credits; raises :class:`CreditBudgetExceededError` when over.

        Returns a reservation to hand to :meth:`refund_credits`, or None when
        no budget is kept.
        """
        return None

    async def refund_credits(self, reservation: Reservation) -> None:
        """Give back a reservation whose create failed without creating a task."""
        return

    # -------------------------------------------------------------- callbacks

    def add_callback_handler(self, handler: CallbackHandler) -> Callable[[], None]:
        """Call ``handler`` with every callback the fleet publishes; returns the remover."""
        self._callback_handlers.append(handler)
        return lambda: self._callback_handlers.remove(handler)

    async def publish_callback(self, info: TaskInfo) -> None:
        """Hand a verified callback for a task this process does not track to the fleet."""
        self._deliver_callback(info)

    def _deliver_callback(self, info: TaskInfo) -> None:
        for handler in list(self._callback_handlers):
            handler(info)

    # ------------------------------------------------------------- statistics

    @abc.abstractmethod
    def statistics(self) -> CoordinatorStatistics:
        """A snapshot for ``client.statistics().coordinator``."""


class LocalCoordinator(Coordinator):
    """The in-process coordinator: idempotency keys and a credit budget in this process only.

    Clients without a ``coordinator=`` use one implicitly for
    ``idempotency_key=``. Share one instance between several clients of one
    process to share their keys and ``max_credits`` (per ``credit_window``
    seconds, None: no budget).
    """

    def __init__(
        self, *, max_credits: float | None = None, credit_window: float = 86_400.0
    ) -> None:
        super().__init__()
        if max_credits is not None and max_credits < 0:
            raise ValueError("max_credits must be >= 0 or None")
        if credit_window <= 0:
            raise ValueError("credit_window must be > 0")
        self._max_credits = max_credits
        self._window = credit_window
        self._spent: dict[str, float] = {}
        self._keys: collections.OrderedDict[str, tuple[str, str | None]] = collections.OrderedDict()
        self._changed: dict[str, asyncio.Event] = {}
        self._counts = collections.Counter[str]()
        self._reserved = 0.0
        self._refunded = 0.0

    def __repr__(self) -> str:
        return f"<LocalCoordinator keys={len(self._keys)}>"

    async def claim(self, key: str) -> Claim:
        self._counts["claims"] += 1
        entry = self._keys.get(key)
        if entry is None:
            self._keys[key] = ("claimed", None)
            return Claim(status="owner")
        state, task_id = entry
        if state == "created":
            self._counts["attached"] += 1
            return Claim(status="created", task_id=task_id)
        if state == "ambiguous":
            self._counts["ambiguous"] += 1
            return Claim(status="ambiguous")
        return Claim(status="in_progress")

    async def mark_sending(self, key: str) -> None:
        self._keys[key] = ("sending", None)

    async def mark_created(self, key: str, task_id: str) -> None:
        self._keys[key] = ("created", task_id)
        self._keys.move_to_end(key)
        while len(self._keys) > _LOCAL_KEYS_KEPT:
            self._keys.popitem(last=False)
        self._notify(key)

    async def release(self, key: str, *, ambiguous: bool) -> None:
        if ambiguous:
            self._keys[key] = ("ambiguous", None)
        else:
            self._keys.pop(key, None)
        self._notify(key)

    async def take_over(self, key: str) -> bool:
        if self._keys.get(key, ("", None))[0] != "ambiguous":
            return False
        self._keys[key] = ("claimed", None)
        return True

    async def wait_claim(self, key: str, timeout: float) -> None:
        event = self._changed.setdefault(key, asyncio.Event())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _notify(self, key: str) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()

    async def reserve_credits(self, amount: float) -> Reservation | None:
        if self._max_credits is None:
            return None
        window = str(int(asyncio.get_running_loop().time() // self._window))
        spent = self._spent.get(window, 0.0)
        if spent + amount > self._max_credits + 1e-9:
            raise CreditBudgetExceededError(amount, spent, self._max_credits)
        self._spent = {window: spent + amount}
        self._reserved += amount
        return Reservation(where=window, amount=amount)

    async def refund_credits(self, reservation: Reservation) -> None:
        if reservation.where in self._spent:
            self._spent[reservation.where] -= reservation.amount
        self._refunded += reservation.amount

    def statistics(self) -> CoordinatorStatistics:
        return CoordinatorStatistics(
            backend="local",
            shared=False,
            claims=self._counts["claims"],
            attached=self._counts["attached"],
            ambiguous_claims=self._counts["ambiguous"],
            credits_reserved=self._reserved,
            credits_refunded=self._refunded,
        )
