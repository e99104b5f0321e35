"""A lighter HTTP/1.1 client for relays: keep-alive connections on asyncio Protocols + httptools.

:class:`LightTransport` keeps the contract of :class:`~ruxa_async._transport.Transport`
(``request(method, path, body) -> Reply``, the same connection errors with a
correct ``request_sent``) at a fraction of aiohttp's CPU per request: the
gateway relays every user's request upstream, so the client's cost is paid on
every call. Only the API requests take this path; result-file downloads still
go through the inherited aiohttp session.

It speaks plain HTTP/1.1 to one origin (``http`` or ``https``): a bounded pool
of keep-alive connections, each an :class:`asyncio.Protocol` whose replies are
parsed by ``httptools`` (works on uvloop and on the standard loop). A reply with
``Connection: close``, or a server that hangs up, retires its connection. A
pooled connection the server closed while idle is never written to; if it
closes right after a request was written and before any byte of the reply,
only a GET is sent again (once, on a new connection): a create is reported as
possibly sent, never repeated.

:func:`light_transport_class` says whether it can serve a base URL:
``httptools`` must be installed (the ``gateway`` extra) and no proxy may be
configured for the host.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from ._config import Timeouts
from ._errors import APIConnectionError, APITimeoutError, RuxaError
from ._light_conn import KEEPALIVE, Connection, Dropped, ReadTimeout
from ._transport import Reply, Transport, _env_proxy

try:
    import httptools
except ImportError:  # pragma: no cover - the gateway extra is not installed
    httptools = None  # type: ignore[assignment]

__all__ = ["LightTransport", "light_transport_class"]

log = logging.getLogger("ruxa_async")

_MAX_HEADS = 1024  # request heads remembered (by method and path; forgotten when full)


def light_transport_class(base_url: str) -> type[Transport] | None:
    """:class:`LightTransport` when it can serve ``base_url``, else None (use aiohttp's).

    None when ``httptools`` is missing, the scheme is neither http nor https,
    or the environment names a proxy for the host (only aiohttp speaks proxies).
    """
    if httptools is None:
        return None
    if urlsplit(base_url).scheme not in ("http", "https") or _env_proxy(base_url) is not None:
        return None
    return LightTransport


class LightTransport(Transport):
    """:class:`Transport` with API requests on its own keep-alive pool (see the module).

    At most ``max_connections`` connections are open at once; a request that
    finds them all busy waits for one (within the request's total timeout).
    """

    connection_class = Connection  # a subclass traces exchanges (the gateway's ``_trace``)

    def __init__(
        self,
        *,
        base_url: str,
        key: Callable[[], str],
        timeouts: Timeouts,
        max_connections: int,
        user_agent: str,
    ) -> None:
        super().__init__(
            base_url=base_url,
            key=key,
            timeouts=timeouts,
            max_connections=max_connections,
            user_agent=user_agent,
        )
        parts = urlsplit(self.base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path
        self._head = (
            f"Host: {parts.netloc}\r\nUser-Agent: {user_agent}\r\nAccept: application/json\r\n"
        ).encode("latin-1")
        self._auth = (b"", "")  # (the fixed header lines with the key's, the key)
        self._heads: dict[tuple[str, str], bytes] = {}  # request line and fixed lines, by path
        self._ssl: ssl.SSLContext | None = None
        self._idle: list[Connection] = []
        self._count = 0  # connections open or opening
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._busy: set[Connection] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it was opened in
        self.reused_retries = 0  # GETs sent again after a reused connection dropped them

    def __repr__(self) -> str:
        return f"<LightTransport {self.base_url} open={not self._closed}>"

    def open(self) -> None:
        """Create the download session and the TLS context (for https)."""
        super().open()
        self._loop = asyncio.get_running_loop()
        if self._https and self._ssl is None:
            self._ssl = ssl.create_default_context()

    async def aclose(self) -> None:
        """Close every connection (requests in flight fail as dropped) and the session."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for conn in [*self._idle, *self._busy]:
            conn.close()
        self._idle.clear()
        self._busy.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        await super().aclose()

    # -- requests

    async def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        """Send one API request; return its reply or raise a connection error."""
        return Reply(*await self.exchange(method, path, body))

    async def exchange(
        self, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, bytes, str | None, dict[str, str]]:
        """:meth:`request`'s reply as a plain tuple: status, body, Retry-After, rate headers.

        The relay's short path (``_direct``) takes it so: a frozen :class:`Reply`
        costs more to build than the tuple, on every request.
        """
        loop = self._loop  # asyncio.get_running_loop() costs a getpid() system call
        if self._closed or self._session is None or loop is None:
            raise RuxaError("the client is not open: use `async with RuxaClient(...)`")
        self.requests_sent += 1
        now = started = loop.time()
        timeouts = self._timeouts
        deadline = started + timeouts.total
        payload = self._payload(method, path, body)
        retried = False
        idle = self._idle
        while True:
            conn: Connection | None = None
            while idle:  # the common case, without a coroutine: a kept connection is free
                kept = idle.pop()
                if kept.alive and now - kept.idle_since < kept.keep_for:
                    conn = kept
                    break
                self._discard(kept)
            reused = conn is not None
            if conn is None:
                try:
                    conn, reused = await self._acquire(loop, deadline, method, path)
                except APIConnectionError as exc:
                    if not retried:
                        raise
                    timeout = isinstance(exc, APITimeoutError)  # the first attempt was sent
                    reason = (
                        f"the server closed the connection; sending again failed: {exc.message}"
                    )
                    raise self._failed(method, path, started, reason, timeout=timeout) from exc
                now = loop.time()
            self._busy.add(conn)
            try:
                read = timeouts.read
                waiter = conn.send(payload, now, read, deadline)
                if conn.waiting:  # (not failed at once)
                    due = now + read if now + read < deadline else deadline  # conn.due()
                    if self._timer is None or due < self._timer_due:  # else: already watched
                        self._watch(loop, due)
                await waiter
            except Dropped as exc:
                self._discard(conn)
                if not exc.written:
                    if reused:
                        now = loop.time()
                        continue  # found closed as it was taken: nothing was sent
                    raise APIConnectionError(
                        f"{method} {path}: the server closed the connection before the request "
                        "was sent",
                        request_sent=False,
                    ) from exc
                if reused and not (exc.received or retried or self._closed) and method == "GET":
                    retried = True  # a kept connection the server had just closed:
                    self.reused_retries += 1  # the others are likely closed too
                    while idle:
                        self._discard(idle.pop())
                    log.debug(
                        "%s %s: kept connection closed by the server; sending again", method, path
                    )
                    now = loop.time()
                    continue
                raise self._failed(
                    method, path, started, "the server closed the connection"
                ) from exc
            except ReadTimeout as exc:
                self._discard(conn)
                raise self._failed(
                    method, path, started, "timed out waiting for the reply", timeout=True
                ) from exc
            except httptools.HttpParserError as exc:
                self._discard(conn)
                raise self._failed(method, path, started, f"malformed reply ({exc})") from exc
            except BaseException:  # cancelled mid-exchange: the connection is in an unknown state
                self._discard(conn)
                raise
            body_parts = conn.body
            status = conn.status
            reply = (
                status,
                body_parts[0] if len(body_parts) == 1 else b"".join(body_parts),
                conn.retry_after,
                conn.rate,
            )
            self._release(conn, loop)
            if log.isEnabledFor(logging.DEBUG):
                took = loop.time() - started
                log.debug("%s %s -> HTTP %d in %.3f s", method, path, status, took)
            return reply

    def _payload(self, method: str, path: str, body: bytes | None) -> bytes:
        key = self._key()
        if key != self._auth[1]:
            if "\r" in key or "\n" in key:
                raise APIConnectionError(
                    f"{method} {path}: the API key contains a line break", request_sent=False
                )
            auth = self._head + f"Authorization: Bearer {key}\r\n".encode("latin-1")
            self._auth = (auth, key)
            self._heads.clear()
        head = self._heads.get((method, path))
        if head is None:  # a request line checked and made once per path (and key)
            try:
                line = f"{method} {self._prefix}{path} HTTP/1.1\r\n".encode("ascii")
            except UnicodeEncodeError:
                raise APIConnectionError(
                    f"{method} {path}: invalid URL", request_sent=False
                ) from None
            if " " in path or "\n" in path or "\r" in path:
                raise APIConnectionError(f"{method} {path!r}: invalid URL", request_sent=False)
            head = line + self._auth[0]
            if len(self._heads) >= _MAX_HEADS:
                self._heads.clear()
            self._heads[(method, path)] = head
        if body is None:
            return head + b"\r\n"
        length = b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        return b"".join((head, length, body))

    def _failed(
        self, method: str, path: str, started: float, reason: str, *, timeout: bool = False
    ) -> APIConnectionError:
        cls = APITimeoutError if timeout else APIConnectionError
        error = cls(f"{method} {path}: {reason}", request_sent=True)
        took = asyncio.get_running_loop().time() - started
        log.debug("%s %s failed after %.3f s: %s", method, path, took, error)
        return error

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
