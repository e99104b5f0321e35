"""Ceilings for the gateway benchmark: proxies with no logic of their own.

``python -m benchmarks._passthrough --kind KIND --upstream URL --port N [--loop LOOP]``

* ``aiohttp``: the leanest aiohttp-in/aiohttp-out proxy: aiohttp's low-level
  server (no application, router or middleware) and one ``ClientSession`` with
  no cookie jar, no decompression and no default headers, passing the method,
  path, ``Authorization``, ``Content-Type`` and body up, and the status and
  body bytes back.
* ``raw``: no HTTP at all: every client connection gets its own upstream
  connection and bytes are copied both ways by two ``asyncio.Protocol``s
  (one read and one write per direction per request: the least any
  user-space proxy can do).

Whatever these reach is an upper bound for any gateway built the same way on
this machine. Prints ``ready`` when listening; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from ruxa_async._signals import STOP_SIGNALS, signal_handlers


async def _aiohttp_proxy(upstream: str, port: int) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60.0),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        timeout=aiohttp.ClientTimeout(total=30.0),
    )

    async def handle(request: web.BaseRequest) -> web.Response:
        body = await request.read() if request.can_read_body else None
        headers = {"Authorization": request.headers.get("Authorization", "")}
        if body is not None:
            headers["Content-Type"] = "application/json"
        async with session.request(
            request.method, upstream + request.raw_path, data=body, headers=headers
        ) as resp:
            payload = await resp.read()
            return web.Response(body=payload, status=resp.status, content_type="application/json")

    server = web.Server(handle, access_log=None)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server, "127.0.0.1", port, backlog=1024)
    try:
        await _serve_until_term()
    finally:
        listener.close()
        await server.shutdown(1.0)
        await session.close()


class _Pipe(asyncio.Protocol):
    """One side of a connection pair: what arrives here is written to the peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Inbound(_Pipe):
    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self._host = host
        self._port = port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, outbound = await loop.create_connection(_Pipe, self._host, self._port)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        outbound.peer, self.peer = self, outbound
        assert outbound.transport is not None
        for chunk in self.pending:
            outbound.transport.write(chunk)
        self.pending.clear()


async def _raw_proxy(upstream: str, port: int) -> None:
    parts = urlsplit(upstream)
    host, up_port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: _Inbound(host, up_port), "127.0.0.1", port, backlog=1024
    )
    try:
        await _serve_until_term()
    finally:
        listener.close()


async def _serve_until_term() -> None:
    stop = asyncio.Event()
    with signal_handlers(dict.fromkeys(STOP_SIGNALS, stop.set)):
        print("ready", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """Serve one passthrough proxy until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._passthrough")
    parser.add_argument("--kind", choices=("aiohttp", "raw"), required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    serve = _aiohttp_proxy if args.kind == "aiohttp" else _raw_proxy
    coro_args = (args.upstream.rstrip("/"), args.port)
    if args.loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(*coro_args))
    else:
        asyncio.run(serve(*coro_args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
