"""The answering side of a server connection (``_httpserver``): its queue of parsed
requests, the one task that answers them in order, the writing of each reply, and the
connection's clocks, flow control and closing.

:class:`Answering` is the base of ``_httpserver._Connection``, which adds the
``asyncio.Protocol`` events and the parsing; the two halves share one object, so a
request costs no extra call or object for the split.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable
from typing import Protocol

from ._exchange import Request, Response
from ._httpheads import header_block, length_line

__all__ = ["Answering", "Application", "Server"]

log = logging.getLogger("ruxa_async")

MAX_QUEUE = 16
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"Connection: close\r\n\r\n"
_KEEP_ALIVE = b"Connection: keep-alive\r\n\r\n"

# What the parser is in the middle of (the connection's ``_stage``).
BETWEEN, HEAD, BODY = 0, 1, 2
# Which clock runs (the connection's ``_clock``): none, the head's, the body's, idle keep-alive.
NONE, HEAD_CLOCK, BODY_CLOCK, IDLE_CLOCK, LINGER_CLOCK = 0, 1, 2, 3, 4
_LINGER = 2.0


class Application(Protocol):
    """What the server serves: whole requests in, whole responses out."""

    def __call__(self, request: Request) -> Awaitable[Response]:
        """The response to ``request``."""

    def refused(self, request: Request | None, status: int, message: str) -> Response:
        """The response to a request the server refuses (400, 408, 413, 431, 500).

        ``request`` is None when no request line and headers were read.
        """


class Server(Protocol):
    """What the answering side reads of its server (``_httpserver.HttpServer``)."""

    app: Application
    loop: asyncio.AbstractEventLoop
    tasks: set[asyncio.Task[None]]
    keepalive_timeout: float

    def date_line(self) -> bytes:
        """The ``Date`` header line."""


Job = tuple["Request | Response", bool, bool, bool]  # item, keep-alive, HEAD, HTTP/1.0


class Answering(asyncio.Protocol):
    """A connection's answering side: queue, answer in order, write, time out, close."""

    _server: Server

    def __init__(self, server: Server) -> None:
        self._server = server
        self._app = server.app
        self._transport: asyncio.Transport | None = None
        self._stage = BETWEEN
        self._expect = False  # a 100 Continue is owed once this request is at the front
        self._block: tuple[int, object, bytes] = (0, None, b"")  # the last reply's head block
        self._queue: deque[tuple[Request | Response, bool, bool, bool]] = deque()
        self._busy = False  # a task is answering the front of the queue
        self._done_reading = False  # no further request will be parsed
        self._reading_paused = False
        self._writing_paused = False
        self._lingering = False  # refused and half closed: dropping what the peer still sends
        self._task: asyncio.Task[None] | None = None  # the connection's answering task
        self._wake: asyncio.Future[Job | None] | None = None  # set: the task awaits a request
        self.deadline = math.inf
        self._clock = NONE

    # -- requests and responses ------------------------------------------------------------

    def _refuse(self, request: Request | None, status: int, message: str) -> None:
        """Queue a refusal; the connection reads nothing more and closes after it."""
        response = self._app.refused(request, status, message)
        response.close = True
        self._finish_reading()
        self._enqueue(response, False, False, "1.1")

    def _enqueue(
        self, item: Request | Response, keep_alive: bool, head: bool, version: str
    ) -> None:
        if self._busy:
            self._queue.append((item, keep_alive, head, version == "1.0"))
            if len(self._queue) >= MAX_QUEUE:
                self._flow()
            return
        self._busy = True
        self._clock = NONE
        self.deadline = math.inf
        job = (item, keep_alive, head, version == "1.0")
        wake, self._wake = self._wake, None
        server = self._server
        if wake is not None and not wake.done():  # the connection's task waits for this
            wake.set_result(job)
            task = self._task
        else:
            self._task = task = server.loop.create_task(self._answer(job))
        if task is not None:
            server.tasks.add(task)  # closing waits for it while it answers

    async def _answer(self, job: Job | None) -> None:
        """The connection's answering task: answer the front of the queue, then each request
        queued behind it, in order; then wait for the connection's next request (one task per
        connection, not per request: a task costs more than a wake-up)."""
        app = self._app
        server = self._server
        while job is not None:
            item, keep_alive, head, http10 = job
            try:
                while True:
                    if isinstance(item, Response):
                        response = item
                    else:
                        try:
                            response = await app(item)
                        except Exception:
                            log.exception("gateway: error answering %s %s", item.method, item.path)
                            response = app.refused(item, 500, "the gateway failed; retry")
                            response.close = True
                    if not self._write(response, keep_alive, head, http10):
                        return
                    queue = self._queue
                    if not queue:
                        break
                    item, keep_alive, head, http10 = queue.popleft()
                    if len(queue) == MAX_QUEUE - 1:
                        self._flow()
            finally:
                self._busy = False
                if self._task is not None:
                    server.tasks.discard(self._task)
            if self._done_reading:
                self.close()
                return
            if self._expect:
                self._send_continue()
            elif self._stage == BETWEEN:
                self._start_clock(IDLE_CLOCK, server.keepalive_timeout)
            if self._transport is None:
                return
            self._wake = wake = server.loop.create_future()
            job = await wake  # None: the connection is gone

    def _write(self, response: Response, keep_alive: bool, head: bool, http10: bool) -> bool:
        """Send ``response``; False when the connection is (now) closed."""
        transport = self._transport
        if transport is None or transport.is_closing():  # the peer left: nobody to answer
            return False
        body = response.body
        close = response.close or not keep_alive or (self._done_reading and not self._queue)
        ending = _CLOSE if close else _KEEP_ALIVE if http10 else b"\r\n"
        status, headers = response.status, response.headers
        last = self._block
        if last[1] is headers and last[0] == status:  # most often the same as the last reply's
            block = last[2]
        else:
            block = header_block(status, headers)
            self._block = (status, headers, block)
        line = length_line(len(body))
        date = self._server.date_line()
        if head:
            transport.write(b"".join((block, date, line, ending)))
        else:
            transport.write(b"".join((block, date, line, ending, body)))
        if close:
            self._finish_reading()
            self._queue.clear()
            if self._stage != BETWEEN and transport.can_write_eof():
                self._linger(transport)
            else:
                transport.close()
            return False
        return True

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close after a refusal while the peer may still be sending: end our side, and read
        (and drop) its bytes for a while, so that it reads the reply instead of a reset."""
        transport.write_eof()
        self._lingering = True
        self._start_clock(LINGER_CLOCK, _LINGER)
        self._flow()

    def _send_continue(self) -> None:
        self._expect = False
        if self._transport is not None and self._stage == BODY:
            self._transport.write(_CONTINUE)

    # -- flow, deadlines, closing ----------------------------------------------------------

    def _finish_reading(self) -> None:
        self._done_reading = True
        self._stop_clock()  # nothing more is read, so nothing is late
        self._flow()

    def _flow(self) -> None:
        """Pause reading while the peer's requests pile up or our replies back up."""
        transport = self._transport
        if transport is None:
            return
        pause = (
            (self._done_reading and not self._lingering)
            or self._writing_paused
            or len(self._queue) >= MAX_QUEUE
        )
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _start_clock(self, clock: int, seconds: float) -> None:
        self._clock = clock
        self.deadline = self._server.loop.time() + seconds

    def _stop_clock(self) -> None:
        self._clock = NONE
        self.deadline = math.inf

    def shutdown(self) -> None:
        """The server is closing: answer what was read, then close."""
        self._finish_reading()
        if not self._busy:
            self.close()

    def close(self) -> None:
        """Close the connection (after what is already written)."""
        self._stop_clock()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close the connection now, dropping what is not yet sent."""
        if self._transport is not None:
            self._transport.abort()
