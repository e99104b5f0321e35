"""The gateway's endpoints served by aiohttp: routes for a user's app, and a fallback server.

:func:`gateway_routes` is what :meth:`~ruxa_async.gateway.Gateway.mount` adds
to an aiohttp application. :func:`serve_with_aiohttp` serves the gateway alone
on aiohttp's low-level server when ``httptools`` (the standalone server's
parser) is not installed; :class:`HeaderDeadlines` gives it the header-read
deadline that aiohttp lacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from ._exchange import Request, Response

if TYPE_CHECKING:
    from ._config import GatewayConfig
    from ._endpoints import Router
    from ._view import GatewayView

__all__ = ["HeaderDeadlines", "gateway_routes", "serve_with_aiohttp"]

AiohttpHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Call = Callable[[Request, web.Request], Awaitable[Response]]
RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BodyError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def _read_body(request: web.BaseRequest, limit: int, timeout: float) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise _BodyError(413, f"the body is {length} bytes; the limit is {limit}")
    content = request.content
    if content.is_eof():  # the whole body came with the headers: nothing to wait for
        whole = content.read_nowait()
        if len(whole) > limit:
            raise _BodyError(413, f"the body is larger than the {limit}-byte limit")
        return whole

    async def read() -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise _BodyError(413, f"the body is larger than the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise _BodyError(408, f"the body did not arrive within {timeout:g} s") from None


def _request(request: web.BaseRequest, body: bytes) -> Request:
    return Request(
        request.method, request.path, request.query_string, request.headers, body, request.remote
    )


def _response(response: Response) -> web.Response:
    out = web.Response(body=response.body, status=response.status, headers=response.headers)
    if response.close:
        out.force_close()
    return out


def gateway_routes(gw: GatewayView, prefix: str = "") -> list[web.RouteDef]:
    """The gateway's routes, under ``prefix`` (e.g. ``"/ruxa"``; empty for the root)."""
    from ._endpoints import Endpoints

    ep = Endpoints(gw, prefix)
    config = gw.config

    def adapt(call: Call, route: str | None) -> RouteHandler:
        """An aiohttp handler calling ``call``; ``route`` names it when it reads a body."""

        async def handler(request: web.Request) -> web.StreamResponse:
            body = b""
            if route is not None:
                try:
                    body = await _read_body(request, config.max_body, config.body_timeout)
                except _BodyError as exc:
                    return _response(ep.refuse_body(route, exc.code, exc.message))
            return _response(await call(_request(request, body), request))

        return handler

    def fixed(handler: Callable[[Request], Awaitable[Response]]) -> Call:
        return lambda request, _raw: handler(request)

    def variable(handler: Callable[[Request, str], Awaitable[Response]]) -> Call:
        return lambda request, raw: handler(request, raw.match_info["tail"])

    def route(method: str, path: str, call: Call) -> web.RouteDef:
        if method == "GET":  # and HEAD
            return web.get(path, adapt(call, None))
        return web.route(method, path, adapt(call, ep.route_of(path)))

    routes = [route(method, path, fixed(handler)) for (method, path), handler in ep.exact().items()]
    routes += [
        route(method, path + "{tail}", variable(handler)) for method, path, handler in ep.variable()
    ]
    routes.append(web.route("*", prefix + "/api/{tail:.*}", adapt(fixed(ep.unknown), None)))
    return routes


def _dispatcher(router: Router, config: GatewayConfig, guards: HeaderDeadlines) -> AiohttpHandler:
    """The fallback server's one handler: read the body, then the router."""

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        guard = guards.guards.get(transport) if transport is not None else None
        if guard is not None:  # the headers are complete: stop the connection's clock
            guard.headers_done()
        try:
            body = b""
            if request.can_read_body:
                try:
                    body = await _read_body(request, config.max_body, config.body_timeout)
                except _BodyError as exc:
                    return _response(router.refused(_request(request, b""), exc.code, exc.message))
            return _response(await router(_request(request, body)))
        finally:
            if guard is not None:
                guard.request_done()

    return dispatch


async def serve_with_aiohttp(
    router: Router, config: GatewayConfig, host: str, port: int
) -> tuple[Callable[[], Awaitable[None]], int]:
    """Serve ``router`` on aiohttp's low-level server; return its closer and bound port."""

    def expired() -> None:
        router.refused(None, 408, "the request headers did not arrive in time")

    guards = HeaderDeadlines(config.header_timeout, expired)
    server = web.Server(_dispatcher(router, config, guards), access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = _GuardedSite(runner, host, port, guards)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner.cleanup, int(runner.addresses[0][1])


_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b'Content-Length: 67\r\n\r\n{"code":408,"message":"the request headers did not arrive in time"}'
)


class _HeaderGuard(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: a deadline on each request's headers."""

    def __init__(self, inner: asyncio.Protocol, owner: HeaderDeadlines) -> None:
        self._inner = inner
        self._owner = owner
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._idle = False  # between requests: the next byte starts a new deadline

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._owner.guards[transport] = self
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._idle:
            self._idle = False
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._transport is not None:
            self._owner.guards.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def headers_done(self) -> None:
        self._disarm()

    def request_done(self) -> None:
        self._idle = True

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._owner.timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._owner.expired()
        transport.write(_TIMED_OUT)
        transport.close()


class HeaderDeadlines:
    """The header-read deadline of every connection of one server (slow-loris protection).

    aiohttp's server bounds the size of request headers but not how long they
    may take; this closes a connection whose headers are not complete within
    ``timeout`` seconds, counting each one with ``expired``.
    """

    def __init__(self, timeout: float, expired: Callable[[], None]) -> None:
        self.timeout = timeout
        self.expired = expired
        self.guards: dict[asyncio.BaseTransport, _HeaderGuard] = {}

    def wrap(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        """The connection's protocol, guarded."""
        return _HeaderGuard(inner, self)


class _GuardedSite(web.BaseSite):
    """A TCP site whose connections go through :class:`HeaderDeadlines`."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, deadlines: HeaderDeadlines
    ) -> None:
        super().__init__(runner, backlog=1024)
        self._host = host
        self._port = port
        self._deadlines = deadlines

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        wrap = self._deadlines.wrap
        self._server = await asyncio.get_running_loop().create_server(
            lambda: wrap(server()), self._host, self._port, backlog=self._backlog
        )
