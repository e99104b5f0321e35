"""The connection pool of :class:`~ruxa_async._light_transport.LightTransport`: taking a
kept connection or opening one (bounded, waiting in turn when all are busy), giving it
back, and the one watchdog timer that times out every exchange in progress.

:class:`Pool` is a base of ``LightTransport``, which sets the state annotated here;
as a base class it costs a request no extra call.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import ssl

from ._config import Timeouts
from ._errors import APIConnectionError, APITimeoutError
from ._light_conn import KEEPALIVE, Connection

__all__ = ["Pool"]


class Pool:
    """A bounded pool of keep-alive connections to one origin, and their watchdog."""

    connection_class: type[Connection]
    _timeouts: Timeouts
    _max_connections: int
    _host: str
    _port: int
    _ssl: ssl.SSLContext | None
    _idle: list[Connection]
    _count: int  # connections open or opening
    _waiters: collections.deque[asyncio.Future[None]]
    _busy: set[Connection]
    _timer: asyncio.TimerHandle | None
    _timer_due: float
    _closed: bool

    # -- the pool

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, deadline: float, method: str, path: str
    ) -> tuple[Connection, bool]:
        """A live connection (True if it served a request before) or a new one."""
        what = f"{method} {path}"
        while True:
            if self._closed:
                raise APIConnectionError(f"{what}: the client is closing", request_sent=False)
            now = loop.time()
            while self._idle:
                conn = self._idle.pop()
                if conn.alive and now - conn.idle_since < conn.keep_for:
                    return conn, True
                self._discard(conn)
            if self._count < self._max_connections:
                return await self._connect(loop, deadline, what), False
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - now))
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken as it gave up: pass the turn on
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                if isinstance(exc, asyncio.TimeoutError):
                    raise APITimeoutError(
                        f"{what}: timed out waiting for a free connection", request_sent=False
                    ) from None
                raise

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, deadline: float, what: str
    ) -> Connection:
        self._count += 1
        limit = max(0.0, min(self._timeouts.connect, deadline - loop.time()))
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: self.connection_class(loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                ),
                limit,
            )
        except asyncio.TimeoutError:
            self._slot_freed()
            raise APITimeoutError(
                f"{what}: timed out opening a connection", request_sent=False
            ) from None
        except OSError as exc:
            self._slot_freed()
            reason = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)
            raise APIConnectionError(
                f"{what}: cannot connect ({reason or type(exc).__name__})", request_sent=False
            ) from exc
        except BaseException:
            self._slot_freed()
            raise
        if self._closed:
            conn.close()
            self._slot_freed()
            raise APIConnectionError(f"{what}: the client is closing", request_sent=False)
        return conn

    def _release(self, conn: Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._busy.discard(conn)
        if not (conn.keep_alive and conn.alive) or self._closed:
            conn.close()
            self._slot_freed()
            return
        conn.idle_since = loop.time()
        self._idle.append(conn)
        if self._idle[0] is not conn and conn.idle_since - self._idle[0].idle_since > KEEPALIVE:
            self._discard(self._idle.pop(0))  # the longest idle, past its keep-alive
        if self._waiters:
            self._wake()

    # -- the watchdog: one timer for every exchange in progress

    def _watch(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        """Make sure the watchdog runs by ``due`` (one timer in all, not one per request).

        Requests start later than the ones already watched and share their read
        timeout, so the timer already set is nearly always early enough.
        """
        timer = self._timer
        if timer is not None:
            if self._timer_due <= due:
                return
            timer.cancel()
        self._timer_due = due
        self._timer = loop.call_at(due, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail every exchange past its time; run again when the next one is due."""
        self._timer = None
        now = loop.time()
        soonest = math.inf
        for conn in list(self._busy):
            if not conn.waiting:
                continue
            due = conn.due()
            if due <= now:
                conn.time_out()
            elif due < soonest:
                soonest = due
        if soonest != math.inf and not self._closed:
            self._watch(loop, soonest)

    def _discard(self, conn: Connection) -> None:
        """Forget a connection that will not be used again (closing it)."""
        self._busy.discard(conn)
        conn.close()
        self._slot_freed()

    def _slot_freed(self) -> None:
        self._count -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
