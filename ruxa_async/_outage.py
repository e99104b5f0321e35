"""The outage gate: one shared pause for a service that does not answer at all.

Beside the rate controller's 429 gate, a client keeps one :class:`OutageGate`.
Connection failures (refused, reset before a reply, timed out) are a property
of the service, not of one request: after ``OutagePolicy.failures`` of them in
a row (no reply in between) the gate closes, or after the first one when the
service has never answered this client. While it is closed:

* requests wait at the gate instead of spending their own retries;
* one waiter at a time is the *prober*: it sends a cheap probe request at a
  backoff pace (``probe_initial`` doubling up to ``probe_max``), so a closed
  gate costs at most ``1 / probe_initial`` requests per second;
* the first reply of any kind (a probe's, or a late reply to a request sent
  earlier) reopens the gate for every waiter at once.

If the service stays unreachable longer than ``max_outage`` (``first_contact``
when it never answered), every waiter gets one :class:`ServiceUnavailableError`
naming the URL and the cause; later callers get it at once, except that one of
them probes again whenever a probe is due, so a long-lived client recovers by
itself. A call may also carry its own deadline (:func:`call_deadline`); a wait
that outlasts it ends in the same error.

Time is injected (``clock`` and ``sleep``). The client talks to the gate
through the :class:`OutageCoordinator` protocol, so a fleet coordinator can
share one outage state (and one prober) between processes: see
``_fleet_outage``, which builds on the hooks here (``_announce_down``,
``_announce_up``, ``_probe_wait``, ``_probe_failed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import attrs

from ._config import OutagePolicy
from ._errors import APIConnectionError, ServiceUnavailableError

__all__ = [
    "OutageCoordinator",
    "OutageGate",
    "OutageStatistics",
    "Probe",
    "call_deadline",
]

log = logging.getLogger("ruxa_async")

Probe = Callable[[], Awaitable[None]]
"""Sends one cheap request; returns on any reply, raises APIConnectionError on none."""

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "ruxa_async_call_deadline", default=None
)


@contextlib.contextmanager
def call_deadline(
    seconds: float | None, *, clock: Callable[[], float] = time.monotonic
) -> Iterator[None]:
    """Bound how long requests made inside this block may wait at a closed outage gate."""
    if seconds is None:
        yield
        return
    token = _deadline.set(clock() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


@attrs.frozen(kw_only=True)
class OutageStatistics:
    """Outages seen by one client: from :meth:`OutageGate.statistics`.

    ``outages`` counts the times the gate closed, ``down_seconds`` the time it
    was closed in total (up to now), ``down`` whether it is closed now,
    ``probes`` the probe requests sent, ``gave_up`` the outages that outlasted
    their bound (``max_outage`` or ``first_contact``). With a gate shared by a
    fleet, ``fleet_closes`` counts the outages another process reported first
    (this one stopped sending without a failure of its own) and
    ``fleet_reopens`` the outages another process's reply ended.
    """

    outages: int
    down_seconds: float
    down: bool
    probes: int
    gave_up: int
    fleet_closes: int = 0
    fleet_reopens: int = 0


class OutageCoordinator(Protocol):
    """What the client's request path needs from an outage gate.

    :class:`OutageGate` keeps the state in this process; a fleet coordinator
    can keep it in a shared store so that one process noticing an outage
    pauses the fleet and one prober per fleet checks for recovery.
    """

    def is_open(self) -> bool:
        """True when requests may be sent (checked on every request: must be cheap)."""
        ...

    def on_reply(self) -> None:
        """A reply (any status) arrived: the service is reachable."""
        ...

    def on_failure(self, error: APIConnectionError) -> bool:
        """A request got no reply; True when the gate is now closed (the caller should wait)."""
        ...

    async def wait_open(self, probe: Probe) -> None:
        """Wait until the gate opens, probing when it is this caller's turn.

        Raises :class:`ServiceUnavailableError` when the outage outlasts its
        bound or the caller's :func:`call_deadline`.
        """
        ...

    def statistics(self) -> OutageStatistics:
        """A snapshot of the outages so far."""
        ...


class OutageGate:
    """The in-process :class:`OutageCoordinator`; see the module docstring for the rules."""

    def __init__(
        self,
        policy: OutagePolicy,
        *,
        url: str,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._policy = policy
        self._url = url
        self._clock = clock
        self._sleep = sleep
        self._down_since: float | None = None
        self._contacted = False  # a reply has been seen at least once
        self._streak = 0
        self._cause = ""
        self._delay = policy.probe_initial
        self._next_probe = 0.0
        self._probing = False
        self._expired = False
        self._changed = asyncio.Event()
        self._outages = 0
        self._down_before = 0.0
        self._probes = 0
        self._gave_up = 0
        self._fleet_closes = 0
        self._fleet_reopens = 0

    def __repr__(self) -> str:
        state = "open" if self._down_since is None else "closed"
        return f"<{type(self).__name__} {self._url} {state}>"

    @property
    def policy(self) -> OutagePolicy:
        """The policy this gate follows."""
        return self._policy

    # ----------------------------------------------------------------- signals

    def is_open(self) -> bool:
        """True when requests may be sent."""
        return self._down_since is None

    def on_reply(self) -> None:
        """Any reply proves the service is reachable: reset the streak, reopen the gate."""
        self._contacted = True
        self._streak = 0
        if self._down_since is not None:
            self._reopen()

    def on_failure(self, error: APIConnectionError) -> bool:
        """Count a request that got no reply; close the gate after enough in a row."""
        if isinstance(error, ServiceUnavailableError):
            return self._down_since is not None
        self._streak += 1
        self._cause = _cause(error)
        if self._down_since is not None:
            return True
        if self._contacted and self._streak < self._policy.failures:
            return False
        self._close()
        return True

    # ----------------------------------------------------------------- waiting

    async def wait_open(self, probe: Probe) -> None:
        """Wait for the gate to open; probe when no one else is; raise after the bound."""
        while self._down_since is not None:
            now = self._clock()
            deadline = _deadline.get()
            if self._expired:
                if self._probing:
                    raise self._unavailable(now)
                await self._probe_if_due(probe)
                if self._down_since is not None:
                    raise self._unavailable(self._clock())
                return
            if deadline is not None and now >= deadline:
                raise self._unavailable(now, deadline=True)
            if not self._probing:
                await self._probe_until_changed(probe, deadline)
                continue
            changed = self._changed
            if deadline is None:
                await changed.wait()
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), deadline - now)

    async def _probe_until_changed(self, probe: Probe, deadline: float | None) -> None:
        """Be the prober until the gate opens, the outage expires or this caller must leave."""
        self._probing = True
        try:
            while self._down_since is not None and not self._expired:
                now = self._clock()
                limit = self._down_since + self._bound()
                if now >= limit:
                    self._expire(now)
                    return
                if deadline is not None and now >= deadline:
                    return
                wait = await self._probe_wait(now)
                if self._down_since is None or self._expired:
                    return  # changed while asking
                now = self._clock()
                limit = self._down_since + self._bound()  # a fleet may move the start back
                due = min(now + wait, limit)
                if deadline is not None:
                    due = min(due, deadline)
                if due > now:
                    await self._nap(due - now)
                    continue
                if now >= limit or (deadline is not None and now >= deadline):
                    continue
                await self._probe_once(probe)
        finally:
            self._probing = False
            self._notify()  # a waiter may take over probing, or leave

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds`` on the injected clock, or less if the gate changes meanwhile."""
        nap: asyncio.Future[None] = asyncio.ensure_future(self._sleep(seconds))
        change = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait((nap, change), return_when=asyncio.FIRST_COMPLETED)
        finally:
            nap.cancel()
            change.cancel()

    async def _probe_if_due(self, probe: Probe) -> None:
        """After giving up: probe once if a probe is due now, else return at once."""
        self._probing = True
        try:
            if await self._probe_wait(self._clock()) > 0 or self._down_since is None:
                return
            await self._probe_once(probe)
        finally:
            self._probing = False

    async def _probe_wait(self, now: float) -> float:
        """Seconds until this gate may send its next probe (0: now)."""
        return max(0.0, self._next_probe - now)

    async def _probe_once(self, probe: Probe) -> None:
        """Send one probe (the caller holds ``_probing``)."""
        self._probes += 1
        try:
            await probe()
        except APIConnectionError as exc:
            self._cause = _cause(exc)
            self._next_probe = self._clock() + self._delay
            log.debug("probe of %s failed (%s); next in %.2f s", self._url, exc, self._delay)
            self._delay = min(self._delay * 2.0, self._policy.probe_max)
            self._probe_failed()
        else:
            self.on_reply()

    def _probe_failed(self) -> None:
        """A probe got no reply (a hook for a shared gate)."""

    def _announce_down(self) -> None:
        """This gate closed on its own failures (a hook: a shared gate tells the fleet)."""

    def _announce_up(self) -> None:
        """This gate reopened on a reply of its own (a hook: a shared gate tells the fleet)."""

    # ------------------------------------------------------------- transitions

    def _bound(self) -> float:
        return self._policy.max_outage if self._contacted else self._policy.first_contact

    def _close(self, *, shared: bool = False) -> None:
        """Close the gate: on this client's failures, or (``shared``) told by the fleet."""
        now = self._clock()
        self._down_since = now
        self._expired = False
        self._outages += 1
        self._delay = self._policy.probe_initial
        self._next_probe = now + self._delay
        self._delay = min(self._delay * 2.0, self._policy.probe_max)
        if shared:
            self._fleet_closes += 1
            log.warning(
                "another process of the fleet cannot reach the Ruxa service at %s (%s); "
                "requests wait while it is probed (giving up after %g s)",
                self._url,
                self._cause,
                self._bound(),
            )
        elif self._contacted:
            log.warning(
                "the Ruxa service at %s stopped answering (%s); requests wait while it is "
                "probed (giving up after %g s)",
                self._url,
                self._cause,
                self._bound(),
            )
        else:  # not yet an error: the caller gets one if it lasts
            log.info(
                "cannot reach the Ruxa service at %s (%s); retrying for up to %g s",
                self._url,
                self._cause,
                self._bound(),
            )
        self._notify()
        if not shared:
            self._announce_down()

    def _reopen(self, *, shared: bool = False) -> None:
        """Open the gate: on a reply to this client, or (``shared``) to another process."""
        assert self._down_since is not None
        down = self._clock() - self._down_since
        self._down_before += down
        self._down_since = None
        self._expired = False
        self._streak = 0
        whose = "to another process of the fleet " if shared else ""
        log.info(
            "the Ruxa service at %s answers %sagain after %.1f s; resuming", self._url, whose, down
        )
        if shared:
            self._fleet_reopens += 1
        self._notify()
        if not shared:
            self._announce_up()

    def _expire(self, now: float) -> None:
        self._expired = True
        self._gave_up += 1
        level = logging.WARNING if self._contacted else logging.INFO
        log.log(level, "giving up: %s", self._unavailable(now))
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _unavailable(self, now: float, *, deadline: bool = False) -> ServiceUnavailableError:
        down = 0.0 if self._down_since is None else now - self._down_since
        return ServiceUnavailableError(
            url=self._url, cause=self._cause, down_seconds=down, call_deadline=deadline
        )

    # -------------------------------------------------------------- statistics

    def statistics(self) -> OutageStatistics:
        """A snapshot of the outages so far."""
        down = self._down_before
        if self._down_since is not None:
            down += self._clock() - self._down_since
        return OutageStatistics(
            outages=self._outages,
            down_seconds=down,
            down=self._down_since is not None,
            probes=self._probes,
            gave_up=self._gave_up,
            fleet_closes=self._fleet_closes,
            fleet_reopens=self._fleet_reopens,
        )


def _cause(error: APIConnectionError) -> str:
    """The failure without the request line: ``cannot connect (Connection refused)``."""
    text = error.message
    head, sep, tail = text.partition(": ")
    return tail if sep and " /" in head else text
