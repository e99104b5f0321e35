"""A light HTTP/1.1 load generator for the gateway benchmark: the same requests, less CPU.

The overhead benchmark measures a route's share of direct throughput with the
load generator, the proxy and the simulator on the same 2 cores. Whatever CPU
the load generator spends per request is taken from the other two, on both
arms alike; a direct run is then bound by the load generator as much as by the
simulator, which is not what "direct throughput" means. This client spends
the least a keep-alive HTTP/1.1 client can: the request bytes are built once
per route (only the task id changes), one ``asyncio.Protocol`` per connection,
replies parsed by ``httptools``. It is used for every route (direct, gateway,
pass-through) alike.

Not part of the SDK: no timeouts beyond the benchmark's own, no TLS, no retries.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import httptools

__all__ = ["LightLoad"]


class _Conn(asyncio.Protocol):
    """One keep-alive connection; ``exchange`` writes a request and waits for its reply."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[int] | None = None
        self._status = 0
        self.usable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("the server closed the connection"))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.usable = False
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.set_result(self._status)

    def exchange(self, payload: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        waiter = self._waiter = self._loop.create_future()
        self.transport.write(payload)
        return waiter


class LightLoad:
    """Keep-alive connections to one origin, one request at a time on each."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._netloc = parts.netloc
        self._idle: list[_Conn] = []
        self._all: list[_Conn] = []

    def payload(self, method: str, path: str, key: str, body: bytes | None) -> bytes:
        """The request's bytes (what aiohttp's client sends, minus its default extras)."""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._netloc}\r\n"
        head += f"Authorization: Bearer {key}\r\n"
        if body is None:
            return (head + "\r\n").encode("latin-1")
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode("latin-1") + body

    async def timed(self, payload: bytes) -> float:
        """Send ``payload``; the seconds until its whole reply (raises unless it was a 200)."""
        started = time.perf_counter()
        idle = self._idle
        while idle and not idle[-1].usable:  # closed by the server while idle (keep-alive timeout)
            idle.pop()
        conn = idle.pop() if idle else await self._connect()
        try:
            status = await conn.exchange(payload)
        except BaseException:
            conn.usable = False
            raise
        finally:
            if conn.usable:
                self._idle.append(conn)
            elif conn.transport is not None:
                conn.transport.close()
        if status != 200:
            raise RuntimeError(f"{payload[:60]!r} -> {status}")
        return time.perf_counter() - started

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(loop), self._host, self._port)
        self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection."""
        for conn in self._all:
            if conn.transport is not None:
                conn.transport.close()
        self._all.clear()
        self._idle.clear()
