"""A small HTTP/1.1 server on an asyncio Protocol, parsing with ``httptools``.

The standalone gateway's front door (``ruxa-async gateway``). It reads a whole
request (headers and body) before calling the application, answers pipelined
requests in order, keeps connections alive between requests, and bounds
everything a client controls:

- the request head (line and headers) to ``_MAX_HEAD`` bytes (431) and to
  ``header_timeout`` seconds from the connection's start or the request's first
  byte (408, the slow-loris guard);
- the body to ``max_body`` bytes (413) and ``body_timeout`` seconds after the
  headers (408);
- an idle keep-alive connection to ``keepalive_timeout`` seconds (closed quietly);
- requests queued behind a slow one to ``_httpanswer.MAX_QUEUE`` (reading pauses).

One task per connection answers its requests (it waits for the next one in
between, and ends with the connection). A request that is not valid HTTP/1.1
gets a 400 and the connection closes.

A request head seen before, whole in one read, is taken without the parser
(``_httpheads``); so are the head pieces of a reply.

Closing the server stops listening, closes idle connections and lets requests
in flight finish (up to a grace period) before closing theirs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from email.utils import formatdate
from urllib.parse import unquote

import httptools

from ._exchange import Request
from ._httpanswer import (
    BETWEEN,
    BODY,
    BODY_CLOCK,
    HEAD,
    HEAD_CLOCK,
    IDLE_CLOCK,
    LINGER_CLOCK,
    Answering,
    Application,
)
from ._httpheads import METHODS, Known, find_known, learn

__all__ = ["Application", "HttpServer", "start_server"]

log = logging.getLogger("ruxa_async")

_MAX_HEAD = 64 * 1024
_NAMES: dict[bytes, str] = {}  # request header names in lower case, by their spelling
_MAX_NAMES = 512


def _target(url: bytes) -> tuple[str, str]:
    """The decoded path and the raw query string of a request target."""
    if not url.startswith(b"/"):  # absolute form (a proxy's), or "*"
        try:
            url = httptools.parse_url(url).path or b"/"
        except httptools.HttpParserInvalidURLError:
            url = b"/"
    mark = url.find(b"?")
    query = ""
    if mark >= 0:
        query = url[mark + 1 :].decode("latin-1")
        url = url[:mark]
    path = url.decode("utf-8", "replace")
    return (unquote(path) if "%" in path else path), query


class _Stop(Exception):
    """Raised in a parser callback to stop parsing the connection's input."""


class _Connection(Answering):
    """One client connection: parse, queue, answer in order (the answering side:
    ``_httpanswer``)."""

    _server: HttpServer

    def __init__(self, server: HttpServer) -> None:
        super().__init__(server)
        self._parser = httptools.HttpRequestParser(self)
        self._peer: str | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._head_bytes = 0
        self._known = server.known_heads
        self._head_size = 0  # the length of the last remembered head (the next one's guess)
        self._completed = 0  # messages completed by the parser in the current read
        self._last: tuple[Request, bool, bool] | None = None  # the last one, keep-alive, 1.0

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self._server.opened(self)
        self._start_clock(HEAD_CLOCK, self._server.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._done_reading:
            return
        learn = False
        if self._stage == BETWEEN:
            data = self._take_known(data)
            if self._done_reading:
                return
            learn = True
        if data:
            if self._stage != BODY:
                self._head_bytes += len(data)
            self._completed = 0
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                self._finish_reading()  # the request is answered; the protocol switch is not
            except httptools.HttpParserCallbackError:
                if not self._done_reading:
                    raise
            except httptools.HttpParserError as exc:
                if not self._done_reading:
                    self._refuse(None, 400, f"the request is not valid HTTP/1.1 ({exc})")
                return
            else:
                if learn and self._completed == 1 and self._stage == BETWEEN:
                    self._learn(data)
            if self._done_reading:
                return
        stage = self._stage
        if stage == HEAD:
            if self._head_bytes > _MAX_HEAD:
                self._refuse(None, 431, f"the request head is larger than {_MAX_HEAD} bytes")
            elif self._clock != HEAD_CLOCK:
                self._start_clock(HEAD_CLOCK, self._server.header_timeout)
        elif stage == BODY:
            if self._clock != BODY_CLOCK:
                self._start_clock(BODY_CLOCK, self._server.body_timeout)
            if self._expect and not self._busy:
                self._send_continue()
        elif self._clock == HEAD_CLOCK or self._clock == BODY_CLOCK:
            self._stop_clock()

    def _take_known(self, data: bytes) -> bytes:
        """Take the whole requests with remembered heads off the front of ``data`` (read at
        a message boundary); the rest, for the parser."""
        known_heads = self._known
        if not known_heads:
            return data
        start = 0
        size = len(data)
        while True:
            found = find_known(known_heads, data, start, self._head_size)
            if found is None:
                break
            known, body_start = found
            stop = body_start + known[4]
            if stop > size:  # the body is not all there: the parser reads it
                break
            self._head_size = body_start - start
            method, path, query, headers, _, http10 = known
            body = data[body_start:stop]
            request = Request(method, path, query, dict(headers), body, self._peer)
            self._head_bytes = 0
            self._enqueue(request, True, method == "HEAD", "1.0" if http10 else "1.1")
            start = stop
            if start == size or self._done_reading:
                return b""
        return data[start:] if start else data

    def _learn(self, data: bytes) -> None:
        """Remember the head of ``data``, one whole request the parser just read from a
        message boundary (``_httpheads.learn``)."""
        last, self._last = self._last, None
        if last is not None:
            size = learn(self._known, data, *last)
            if size:
                self._head_size = size

    def eof_received(self) -> bool | None:
        self._finish_reading()
        return True if self._busy else None  # keep the write side open for what is owed

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._done_reading = True
        self._queue.clear()
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)  # the waiting answering task ends
        self._server.closed(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._flow()

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._stage = HEAD
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = _NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_NAMES) < _MAX_NAMES:
                _NAMES[name] = key
        self._headers.setdefault(key, value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        self._stage = BODY
        self._head_bytes = 0
        length = self._headers.get("content-length")
        limit = self._server.max_body
        if length is not None and length.isdigit() and int(length) > limit:
            self._refuse(
                self._request(b""), 413, f"the body is {int(length)} bytes; the limit is {limit}"
            )
            raise _Stop
        expect = self._headers.get("expect")
        if expect is not None and expect.lower() == "100-continue":
            self._expect = True  # sent once the body is awaited and earlier replies are out

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        limit = self._server.max_body
        if self._size > limit:
            self._refuse(self._request(b""), 413, f"the body is larger than the {limit}-byte limit")
            raise _Stop
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._stage = BETWEEN
        self._head_bytes = 0
        self._expect = False
        body = self._body
        request = self._request(body[0] if len(body) == 1 else b"".join(body))
        parser = self._parser
        keep_alive = parser.should_keep_alive()
        version = parser.get_http_version()
        self._completed += 1
        self._last = (request, keep_alive, version == "1.0")
        self._enqueue(request, keep_alive, request.method == "HEAD", version)
        if not keep_alive:
            self._finish_reading()
            raise _Stop

    # -- requests and responses ------------------------------------------------------------

    def _request(self, body: bytes) -> Request:
        path, query = _target(self._url)
        raw = self._parser.get_method()
        method = METHODS.get(raw) or raw.decode("ascii")
        return Request(method, path, query, self._headers, body, self._peer)

    def expire(self) -> None:
        """The running clock ran out: refuse the late request, or close the idle connection."""
        clock = self._clock
        self._stop_clock()
        if clock in (IDLE_CLOCK, LINGER_CLOCK):
            self.close()
        elif clock == HEAD_CLOCK:
            self._refuse(None, 408, "the request headers did not arrive in time")
        elif clock == BODY_CLOCK:
            timeout = self._server.body_timeout
            self._refuse(self._request(b""), 408, f"the body did not arrive within {timeout:g} s")


class HttpServer:
    """A listening server; close it with :meth:`aclose`."""

    connection_class = _Connection  # a subclass traces requests (``_trace``)

    def __init__(
        self,
        app: Application,
        *,
        max_body: int,
        body_timeout: float,
        header_timeout: float,
        keepalive_timeout: float,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.loop = asyncio.get_running_loop()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # answering tasks (closing waits for them)
        shortest = min(header_timeout, body_timeout, keepalive_timeout)
        self._tick = min(1.0, max(0.01, shortest / 10))  # how late a deadline may be noticed
        self._ticker: asyncio.TimerHandle | None = None
        self._date = (0, b"")  # the second and its Date line (see date_line)
        self.known_heads: dict[bytes, Known] = {}  # request heads parsed before (see module)
        self._closing = False
        self._all_closed: asyncio.Event | None = None  # made when closing waits for it
        self.port = 0

    async def listen(self, host: str, port: int, backlog: int = 1024) -> None:
        """Bind and start accepting connections; ``port`` becomes the bound port."""
        self._server = await self.loop.create_server(
            lambda: self.connection_class(self), host, port, backlog=backlog
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    def opened(self, conn: _Connection) -> None:
        """A connection was accepted."""
        if self._closing:
            conn.close()
            return
        self._connections.add(conn)
        if self._ticker is None:
            self._ticker = self.loop.call_later(self._tick, self._sweep)

    def closed(self, conn: _Connection) -> None:
        """A connection is gone."""
        self._connections.discard(conn)
        if not self._connections and self._all_closed is not None:
            self._all_closed.set()

    def date_line(self) -> bytes:
        """The ``Date`` header line, made once a second."""
        now = int(time.time())
        second, line = self._date
        if second != now:
            line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode()
            self._date = (now, line)
        return line

    def _sweep(self) -> None:
        """Expire the connections whose clock ran out; tick while any connection is open."""
        now = self.loop.time()
        for conn in [c for c in self._connections if c.deadline <= now]:
            conn.expire()
        self._ticker = self.loop.call_later(self._tick, self._sweep) if self._connections else None

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop listening, close idle connections, let requests in flight finish (up to
        ``grace`` seconds; then they are cancelled), and close every connection (its last
        reply gets another ``grace`` to reach a slow reader)."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.shutdown()
        if self.tasks:
            _, late = await asyncio.wait(set(self.tasks), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                log.warning("gateway: %d requests still in flight at shutdown", len(late))
                await asyncio.gather(*late, return_exceptions=True)
        for conn in list(self._connections):
            conn.close()
        if self._connections:  # replies still flushing to slow readers: a bounded wait
            self._all_closed = asyncio.Event()
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace)
            except asyncio.TimeoutError:
                for conn in list(self._connections):
                    conn.abort()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._server is not None:
            await self._server.wait_closed()


async def start_server(
    app: Application,
    host: str,
    port: int,
    *,
    max_body: int,
    body_timeout: float,
    header_timeout: float,
    keepalive_timeout: float = 75.0,
) -> HttpServer:
    """Serve ``app`` on ``host:port`` (0 picks a free port)."""
    server = HttpServer(
        app,
        max_body=max_body,
        body_timeout=body_timeout,
        header_timeout=header_timeout,
        keepalive_timeout=keepalive_timeout,
    )
    await server.listen(host, port)
    return server
