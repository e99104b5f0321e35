"""The pool of real Ruxa keys: one ``RuxaClient`` per key, health per key, draining rotation.

A task stays bound to the key that created it. A 401 or 402 on a key takes it
out of rotation until the next config reload; a 429 cools it down for the
``Retry-After``. A key dropped from the config stops creating but keeps
answering for its unfinished tasks, and is closed once they have all ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from .._client import RuxaClient, send_directly, use_transport
from .._config import OutagePolicy, RateLimits, RetryPolicy, Timeouts
from .._errors import AuthenticationError, InsufficientCreditsError, RateLimitError
from .._light_transport import light_transport_class
from ._config import UpstreamKey
from ._policy import Denial

__all__ = ["KeyHealth", "KeyPool", "KeySlot"]

log = logging.getLogger("ruxa_async")

ACTIVE, COOLING, DISABLED, DRAINING = "active", "cooling", "disabled", "draining"
_DEFAULT_COOL = 1.0

Notify = Callable[..., None]


@attrs.frozen(kw_only=True)
class KeyHealth:
    """One key's state for metrics and statistics: name, state, open tasks, failures."""

    name: str
    state: str
    open_tasks: int
    failures: int


class KeySlot:
    """One upstream key with its own client; ``name`` is the only thing ever shown."""

    __slots__ = (
        "client",
        "cool_until",
        "draining",
        "failures",
        "key",
        "name",
        "open_tasks",
        "opened",
        "state",
    )

    def __init__(self, key: UpstreamKey, client: RuxaClient) -> None:
        self.name = key.name
        self.key = key
        self.client = client
        self.state = ACTIVE
        self.cool_until = 0.0
        self.open_tasks = 0
        self.failures = 0
        self.draining = False
        # The client this slot opened (a closed one fails at its next send; a rebuilt slot's
        # new client is opened at its first use).
        self.opened: RuxaClient | None = None

    def __repr__(self) -> str:
        return f"<KeySlot {self.name} {self.state}>"

    def open_client(self) -> RuxaClient | None:
        """The key's client if it is open already (then no await is needed), else None."""
        client = self.client
        return client if self.opened is client else None

    async def ready(self) -> RuxaClient:
        """The key's client, opened on first use (a client never opens itself)."""
        client = self.client
        if self.opened is not client:  # after that, no coroutines of the client's own per request
            await client.start()
            self.opened = client
        return client


def default_client(
    key: UpstreamKey,
    *,
    timeout: float,
    max_in_flight: int,
    create_per_second: float | None = None,
    query_per_second: float | None = None,
    discover: bool = False,
    http: str = "auto",
) -> RuxaClient:
    """The client behind one key: no private retries (the caller's client retries).

    Without rates and ``discover`` a relay paces nothing: its requests skip the
    rate controller and the outage gate (``_direct``: the connection pool bounds
    what is in flight, a 429 pauses that class of requests for its Retry-After,
    and a failure reaches the caller at once); with them they take the full path.
    ``http="auto"`` sends through the lighter HTTP/1.1 client when it can serve the
    key's URL (``httptools`` installed, no proxy), ``"aiohttp"`` through aiohttp's.
    """
    client = RuxaClient(
        api_key=key.key,
        base_url=key.base_url,
        retry=RetryPolicy(max_attempts=1, ambiguous_creates="raise"),
        timeouts=Timeouts(connect=min(10.0, timeout), read=timeout, total=timeout),
        rate_limits=RateLimits(
            max_in_flight=max_in_flight,
            max_pause=timeout,
            create_per_second=create_per_second,
            query_per_second=query_per_second,
            adaptive=discover,
        ),
        # An upstream outage answers the gateway's caller within its timeout, not in minutes.
        outage=OutagePolicy(max_outage=timeout, first_contact=min(5.0, timeout)),
    )
    light = light_transport_class(key.base_url) if http == "auto" else None
    if light is not None:
        use_transport(client, light)
    if create_per_second is None and query_per_second is None and not discover:
        send_directly(client, max_pause=timeout)  # nothing to pace: the short path
    return client


class KeyPool:
    """Picks keys round-robin among the healthy ones; reacts to each key's failures."""

    def __init__(
        self,
        client_factory: Callable[[UpstreamKey], RuxaClient],
        notify: Notify,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = client_factory
        self._notify = notify
        self._clock = clock
        self._slots: dict[str, KeySlot] = {}
        self._order: list[str] = []
        self._next = 0
        self._closing: set[asyncio.Task[None]] = set()
        self._late: set[asyncio.Task[None]] = set()

    def update(self, keys: Sequence[UpstreamKey]) -> None:
        """Apply a (re)loaded key list: add new keys, drain removed ones, re-enable the rest."""
        wanted = {k.name: k for k in keys}
        for name, slot in list(self._slots.items()):
            if name not in wanted and not slot.draining:
                slot.draining = True
                slot.state = DRAINING
                self._notify("key_draining", key=name, open_tasks=slot.open_tasks)
                self._maybe_close(slot)
        for key in keys:
            old = self._slots.get(key.name)
            if old is not None and old.key == key:
                if old.draining or old.state == DISABLED:
                    old.draining = False
                    old.state = ACTIVE
                    self._notify("key_enabled", key=key.name)
                continue
            slot = KeySlot(key, self._factory(key))
            if old is not None:  # same name, new secret: its open tasks are queried with it
                slot.open_tasks = old.open_tasks
                self._retire(old)
            self._slots[key.name] = slot
            self._notify("key_added", key=key.name)
        self._order = [k.name for k in keys]

    def rebuild(self, factory: Callable[[UpstreamKey], RuxaClient], *, grace: float) -> None:
        """Give every key a new client from ``factory`` (new pacing or timeouts) at once;
        each old client closes ``grace`` seconds later, when its requests have ended."""
        self._factory = factory
        for slot in self._slots.values():
            old, slot.client = slot.client, factory(slot.key)
            task = asyncio.get_running_loop().create_task(_close_after(old, grace))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
        self._notify("keys_rebuilt", keys=len(self._slots))

    def _retire(self, slot: KeySlot) -> None:
        self._slots.pop(slot.name, None)
        task = asyncio.get_running_loop().create_task(slot.client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _maybe_close(self, slot: KeySlot) -> None:
        if slot.draining and slot.open_tasks <= 0:
            self._notify("key_drained", key=slot.name)
            self._retire(slot)

    def pick(self) -> KeySlot | Denial:
        """The next healthy key for a create, or why there is none (503, or 429 if cooling)."""
        now = self._clock()
        soonest: float | None = None
        count = len(self._order)
        for i in range(count):
            name = self._order[(self._next + i) % count]
            slot = self._slots.get(name)
            if slot is None or slot.draining or slot.state == DISABLED:
                continue
            if slot.state == COOLING:
                if now < slot.cool_until:
                    soonest = slot.cool_until if soonest is None else min(soonest, slot.cool_until)
                    continue
                slot.state = ACTIVE
            self._next = (self._next + i + 1) % count
            return slot
        if soonest is not None:
            return Denial(
                429,
                "upstream_rate",
                "the service is rate limiting this gateway; retry after the pause",
                retry_after=soonest - now,
            )
        return Denial(503, "no_key", "no upstream key is available; the operator has been alerted")

    def get(self, name: str) -> KeySlot | None:
        """The key a task was created with (draining or cooling keys included)."""
        return self._slots.get(name)

    def opened(self, name: str) -> None:
        """A task was created with key ``name``."""
        slot = self._slots.get(name)
        if slot is not None:
            slot.open_tasks += 1

    def count_open(self, names: Iterable[str]) -> None:
        """Count tasks loaded from the store as open on their keys."""
        for name in names:
            self.opened(name)

    def closed(self, name: str) -> None:
        """A task created with key ``name`` has ended."""
        slot = self._slots.get(name)
        if slot is not None:
            slot.open_tasks -= 1
            self._maybe_close(slot)

    def failed(self, slot: KeySlot, exc: BaseException) -> None:
        """React to an upstream error on ``slot``: disable on 401/402, cool on 429."""
        if isinstance(exc, (AuthenticationError, InsufficientCreditsError)):
            slot.failures += 1
            if slot.state != DISABLED:
                slot.state = DISABLED
                code = 401 if isinstance(exc, AuthenticationError) else 402
                log.warning(
                    "gateway: upstream key %r refused with %d; out of rotation", slot.name, code
                )
                self._notify("key_disabled", key=slot.name, code=code, alert=True)
        elif isinstance(exc, RateLimitError):
            wait = exc.retry_after if exc.retry_after is not None else _DEFAULT_COOL
            slot.cool_until = max(slot.cool_until, self._clock() + wait)
            if slot.state == ACTIVE:
                slot.state = COOLING
                self._notify("key_cooled", key=slot.name, seconds=wait)

    def __len__(self) -> int:
        """How many keys the pool holds (configured and draining)."""
        return len(self._slots)

    def health(self) -> list[KeyHealth]:
        """Every key's state, in config order then draining ones."""
        now = self._clock()
        out = []
        for slot in self._slots.values():
            state = slot.state
            if state == COOLING and now >= slot.cool_until:
                state = ACTIVE
            out.append(
                KeyHealth(
                    name=slot.name, state=state, open_tasks=slot.open_tasks, failures=slot.failures
                )
            )
        return out

    async def aclose(self) -> None:
        """Close every key's client."""
        slots, self._slots = list(self._slots.values()), {}
        for task in self._late:
            task.cancel()  # closes its client now
        results: list[Any] = await asyncio.gather(
            *self._late, *(s.client.aclose() for s in slots), *self._closing, return_exceptions=True
        )
        del results


async def _close_after(client: RuxaClient, grace: float) -> None:
    try:
        await asyncio.sleep(grace)
    finally:
        await client.aclose()
