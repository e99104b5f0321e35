"""The outage switch: the simulated API goes away for a while, then serves the same tasks again.

Two modes, as a real service fails:

* ``"refuse"``: the API's listening socket is closed and every open
  connection is cut, so new connections are refused (``ECONNREFUSED``) and
  requests in flight get no reply. When the outage ends the socket is bound
  again on the same port. A refused connection never reaches the simulator,
  so it cannot be counted here: count the client's attempts instead.
  The admin endpoints share the port, so they are unreachable too: an
  outage started over HTTP must say how long it lasts.
* ``"drop"``: connections are accepted and every API or file request is read,
  counted in ``SimStats.outage_requests`` and then closed without a reply
  (the client cannot tell whether it arrived). The admin endpoints keep
  working.

Tasks keep running on the clock meanwhile, as they would on the real service.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web

from ._stats import Counters

__all__ = ["OutageMode", "OutageSwitch"]

OutageMode = Literal["refuse", "drop"]
OUTAGE_MODES: tuple[OutageMode, ...] = ("refuse", "drop")


class OutageSwitch:
    """Holds the outage state of one simulator; the server calls in through small hooks.

    ``stop_listening`` closes the API socket and cuts open connections;
    ``start_listening`` binds it again on the same port.
    """

    def __init__(
        self,
        counters: Counters,
        *,
        stop_listening: Callable[[], Awaitable[None]],
        start_listening: Callable[[], Awaitable[None]],
    ) -> None:
        self._counters = counters
        self._stop_listening = stop_listening
        self._start_listening = start_listening
        self.mode: OutageMode | None = None
        self._ends_at: float | None = None
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._up = asyncio.Event()
        self._up.set()

    @property
    def remaining(self) -> float | None:
        """Seconds until the outage ends by itself (None: not down, or until restored)."""
        if self.mode is None or self._ends_at is None:
            return None
        return max(0.0, self._ends_at - time.monotonic())

    async def begin(self, mode: OutageMode, seconds: float | None) -> None:
        """Go down in ``mode``; come back by itself after ``seconds`` when given."""
        if mode not in OUTAGE_MODES:
            raise ValueError(f"mode must be one of {OUTAGE_MODES}, got {mode!r}")
        if seconds is not None and not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        async with self._lock:
            self._cancel_timer()
            if self.mode == "refuse" and mode == "drop":
                await self._start_listening()
            if self.mode != "refuse" and mode == "refuse":
                await self._stop_listening()
            if self.mode is None:
                self._counters.outages += 1
            self.mode = mode
            self._up.clear()
            self._ends_at = None if seconds is None else time.monotonic() + seconds
            if seconds is not None:
                self._timer = asyncio.get_running_loop().create_task(
                    self._end_after(seconds), name="ruxa_async sim outage timer"
                )

    async def end(self) -> None:
        """Serve again (the same port, the same tasks)."""
        async with self._lock:
            self._cancel_timer()
            await self._end()

    async def _end(self) -> None:
        mode, self.mode = self.mode, None
        self._ends_at = None
        if mode == "refuse":
            await self._start_listening()
        self._up.set()

    async def serving(self) -> None:
        """Return once no outage is running."""
        await self._up.wait()

    async def _end_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        async with self._lock:
            self._timer = None
            await self._end()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()

    async def aclose(self) -> None:
        """Stop the timer (the server is closing)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        self.mode = None
        self._up.set()

    def drop(self, request: web.Request) -> web.Response | None:
        """While down: count the request and cut its connection (the reply is never sent).

        Only ``"drop"`` lets requests in; under ``"refuse"`` this catches one
        that raced the closing socket.
        """
        if self.mode is None:
            return None
        self._counters.outage_requests += 1
        transport = request.transport
        if transport is not None:
            transport.close()
        return web.Response()
