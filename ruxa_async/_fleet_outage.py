"""An outage gate shared by a fleet: one process noticing an outage pauses all, one probes.

A :class:`SharedOutageGate` is an :class:`~ruxa_async._outage.OutageGate`
whose transitions and probe turns also go through an :class:`OutageLink`, a
store every process of the fleet sees (``ruxa_async.redis`` keeps it in Redis,
:class:`MemoryOutageLink` in this process):

* a gate that closes on its own failures *announces* the outage, and every
  other gate of the fleet for the same base URL closes at once, without a
  failure of its own (counted in ``statistics().outage.fleet_closes``);
* before each probe, a waiting gate's prober asks the link for its *turn*: the
  link grants one probe per backoff step to the whole fleet (``probe_initial``
  after the outage began, then doubling up to ``probe_max``) and tells the
  others how long to wait, so a fleet sends about one probe at a time however
  many processes wait;
* the first reply anywhere announces the recovery and every gate reopens
  (``fleet_reopens``); a gate that missed the news finds no outage on record at
  its next turn and probes for itself;
* a gate that closes again within ``record_ttl()`` seconds of being reopened
  by another process's reply keeps that outage to itself (the others reach the
  service: the trouble is likely this process's own network), so one sick
  process does not pause the fleet over and over.

``max_outage`` counts from the fleet's start of the outage; a record that no
prober has kept alive for ``record_ttl()`` seconds expires, so a record that
outlived its outage cannot age the next one. When the link cannot
be reached (``turn`` returns None), a gate falls back to the local rules: its
own probes at its own pace. Announcements run in background tasks owned by the
:class:`OutageShare`, each bounded by the link's own timeouts, in the order
they were made.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs

from ._config import OutagePolicy
from ._outage import OutageCoordinator, OutageGate

__all__ = [
    "MemoryOutageLink",
    "OutageLink",
    "OutageShare",
    "SharedOutageGate",
    "Turn",
    "outage_gate",
    "policy_of",
    "record_ttl",
    "url_key",
]

log = logging.getLogger("ruxa_async")


def record_ttl(policy: OutagePolicy) -> float:
    """Seconds an outage record outlives the last prober's turn (then a new outage starts anew)."""
    return max(10.0, 5 * policy.probe_max)


def url_key(url: str) -> str:
    """The short name of a base URL in a shared store (gates share an outage per URL)."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


@attrs.frozen
class Turn:
    """A link's answer to a prober.

    ``probe``: this gate sends the fleet's next probe now; otherwise it waits
    ``wait`` seconds before asking again. ``age``: seconds since the fleet's
    outage began, or None when the fleet has no outage on record.
    """

    probe: bool
    wait: float = 0.0
    age: float | None = None


class OutageLink(Protocol):
    """The shared store behind :class:`SharedOutageGate`; its methods never raise or hang."""

    async def announce_down(
        self, key: str, *, origin: str, cause: str, contacted: bool, policy: OutagePolicy
    ) -> None:
        """Record an outage of ``key`` (unless one is on record) and tell the fleet."""
        ...

    async def announce_up(self, key: str, *, origin: str) -> None:
        """Clear the outage of ``key`` and tell the fleet."""
        ...

    async def turn(self, key: str, holder: str, policy: OutagePolicy) -> Turn | None:
        """May ``holder`` probe now? None when the store cannot be reached."""
        ...


class OutageShare:
    """The gates of one process sharing outages over one link (a coordinator's ``outage``).

    The process's side of the fleet's news calls :meth:`deliver_down` and
    :meth:`deliver_up`; :meth:`aclose` ends announcements still under way.
    """

    def __init__(self, link: OutageLink, *, close_timeout: float = 2.0) -> None:
        self.link = link
        self._gates: weakref.WeakSet[SharedOutageGate] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[None]] = set()
        self._order: asyncio.Lock | None = None
        self._close_timeout = close_timeout

    def gate(
        self,
        policy: OutagePolicy,
        *,
        url: str,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> SharedOutageGate:
        """A new gate for one client of ``url``, sharing its outages with the fleet."""
        gate = SharedOutageGate(policy, url=url, share=self, clock=clock, sleep=sleep)
        self._gates.add(gate)
        return gate

    def deliver_down(self, key: str, *, origin: str, cause: str, contacted: bool) -> None:
        """Another gate announced an outage of ``key``."""
        for gate in list(self._gates):
            if gate.key == key and gate.holder != origin:
                gate.fleet_down(cause, contacted=contacted)

    def deliver_up(self, key: str, *, origin: str) -> None:
        """Another gate announced that ``key`` answers again."""
        for gate in list(self._gates):
            if gate.key == key and gate.holder != origin:
                gate.fleet_up()

    def announce(self, call: Callable[[], Awaitable[None]]) -> None:
        """Run ``call`` in the background, after the announcements made before it."""
        task = asyncio.get_running_loop().create_task(
            self._in_order(call), name="ruxa_async outage announcement"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _in_order(self, call: Callable[[], Awaitable[None]]) -> None:
        if self._order is None:
            self._order = asyncio.Lock()
        async with self._order:
            try:
                await call()
            except Exception:  # a link must not raise; never let its bug stop the gate
                log.exception("announcing an outage change to the fleet failed")

    async def aclose(self) -> None:
        """Let announcements under way finish (within ``close_timeout``), then cancel the rest."""
        tasks = list(self._tasks)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=self._close_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class SharedOutageGate(OutageGate):
    """An outage gate whose outages are the fleet's; see the module docstring."""

    def __init__(
        self,
        policy: OutagePolicy,
        *,
        url: str,
        share: OutageShare,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(policy, url=url, clock=clock, sleep=sleep)
        self.key = url_key(url)
        self.holder = uuid.uuid4().hex[:16]
        self._share = share
        self._unrecorded = False  # probing an outage the fleet has no record of
        self._resumed_by_fleet = float("-inf")  # when another process's reply last reopened it

    # ------------------------------------------------------------- fleet news

    def fleet_down(self, cause: str, *, contacted: bool) -> None:
        """Another process cannot reach the service: stop sending too."""
        if contacted:
            self._contacted = True  # the URL is right: give it max_outage, not first_contact
        if self._down_since is None:
            self._cause = cause
            self._close(shared=True)

    def fleet_up(self) -> None:
        """Another process got a reply: resume."""
        self._contacted = True
        self._streak = 0
        if self._down_since is not None:
            self._resumed_by_fleet = self._clock()
            self._reopen(shared=True)

    # ------------------------------------------------------------------ hooks

    def _announce_down(self) -> None:
        since = self._clock() - self._resumed_by_fleet
        if since < record_ttl(self._policy):  # the others reach it: likely this process's trouble
            log.info(
                "not pausing the fleet: another process reached the Ruxa service at %s %.1f s "
                "ago; this process waits alone",
                self._url,
                since,
            )
            return
        link, key, origin = self._share.link, self.key, self.holder
        cause, contacted, policy = self._cause, self._contacted, self._policy
        self._share.announce(
            lambda: link.announce_down(
                key, origin=origin, cause=cause, contacted=contacted, policy=policy
            )
        )

    def _announce_up(self) -> None:
        link, key, origin = self._share.link, self.key, self.holder
        self._share.announce(lambda: link.announce_up(key, origin=origin))

    async def _probe_wait(self, now: float) -> float:
        turn = await self._share.link.turn(self.key, self.holder, self._policy)
        if turn is None:  # the link is unreachable: this process's own pace
            return await super()._probe_wait(self._clock())
        if turn.age is None:  # no outage on record: it ended elsewhere, or was never recorded
            self._unrecorded = True
            return await super()._probe_wait(self._clock())
        self._unrecorded = False
        if self._down_since is not None:  # the bound counts from the fleet's start
            self._down_since = min(self._down_since, self._clock() - turn.age)
        return 0.0 if turn.probe else turn.wait

    def _probe_failed(self) -> None:
        if self._unrecorded:  # still down: put it on record, so the fleet pauses too
            self._unrecorded = False
            self._announce_down()


@attrs.define
class _Record:
    start: float
    lease_until: float
    alive_until: float
    probes: int = 0


class MemoryOutageLink:
    """An :class:`OutageLink` in this process's memory: the Redis link's rules without Redis.

    Every :class:`OutageShare` made by :meth:`share` hears the others' news,
    as processes do through Redis (clients of one process can share an outage
    this way; the shared rules are tested with it on a virtual clock).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._shares: list[OutageShare] = []

    def share(self) -> OutageShare:
        """A new member's side of this link."""
        share = OutageShare(self)
        self._shares.append(share)
        return share

    async def announce_down(
        self, key: str, *, origin: str, cause: str, contacted: bool, policy: OutagePolicy
    ) -> None:
        """See :meth:`OutageLink.announce_down`."""
        now = self._clock()
        if self._live(key, now) is not None:
            return
        self._records[key] = _Record(
            start=now, lease_until=now + policy.probe_initial, alive_until=now + record_ttl(policy)
        )
        for share in self._shares:
            share.deliver_down(key, origin=origin, cause=cause, contacted=contacted)

    async def announce_up(self, key: str, *, origin: str) -> None:
        """See :meth:`OutageLink.announce_up`."""
        self._records.pop(key, None)
        for share in self._shares:
            share.deliver_up(key, origin=origin)

    async def turn(self, key: str, holder: str, policy: OutagePolicy) -> Turn | None:
        """See :meth:`OutageLink.turn`."""
        now = self._clock()
        record = self._live(key, now)
        if record is None:
            return Turn(probe=True)
        record.alive_until = now + record_ttl(policy)
        age = now - record.start
        if now < record.lease_until:
            return Turn(probe=False, wait=record.lease_until - now, age=age)
        record.probes += 1
        delay = min(policy.probe_initial * 2.0**record.probes, policy.probe_max)
        record.lease_until = now + delay
        return Turn(probe=True, age=age)

    def _live(self, key: str, now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and now >= record.alive_until:
            del self._records[key]  # no prober kept it alive: it expired, as in Redis
            return None
        return record


def outage_gate(
    outage: OutagePolicy | OutageCoordinator | None, coordinator: object, *, url: str
) -> tuple[OutagePolicy, OutageCoordinator]:
    """The outage policy and gate of a client (``RuxaClient(outage=..., coordinator=...)``).

    An :class:`OutageCoordinator` given as ``outage`` is used as it is (a
    coordinator's sharing is then not used). Otherwise the gate follows the
    policy given (or the default one), and is shared by the fleet when the
    coordinator shares outages (its ``outage`` is an :class:`OutageShare`).
    """
    policy = policy_of(outage)
    if outage is not None and not isinstance(outage, OutagePolicy):
        return policy, outage
    share = getattr(coordinator, "outage", None)
    if isinstance(share, OutageShare):
        return policy, share.gate(policy, url=url)
    return policy, OutageGate(policy, url=url)


def policy_of(outage: OutagePolicy | OutageCoordinator | None) -> OutagePolicy:
    """The policy an ``outage=`` argument stands for (a gate's own, or the default)."""
    if isinstance(outage, OutagePolicy):
        return outage
    policy = getattr(outage, "policy", None)
    return policy if isinstance(policy, OutagePolicy) else OutagePolicy()
