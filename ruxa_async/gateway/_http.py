"""The gateway over HTTP: Ruxa's two endpoints, the callback inbox, metrics, the demo page.

Every reply is a Ruxa envelope ``{code, message, data}`` whose HTTP status
equals ``code``. Request bodies are bounded in size (413) and in time (408),
and so (when the gateway serves alone) are request headers: a slow client
costs one connection for a bounded time and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ._metrics import prometheus_exposition
from ._policy import retry_after_header

if TYPE_CHECKING:
    from ._policy import Reply
    from ._view import GatewayView

__all__ = ["gateway_routes", "serve_gateway"]

log = logging.getLogger("ruxa_async")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_DEMO_TTL = 600.0
_DEMO_MODELS = ("google/nano-banana",)


def _envelope(
    code: int, message: str, data: Any = None, retry_after: float | None = None
) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after_header(retry_after)
    body = _dumps({"code": code, "message": message, "data": data}).encode()
    return web.Response(body=body, status=code, content_type="application/json", headers=headers)


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


_CREATE = "/api/v1/tasks/create"
_QUERY = "/api/v1/tasks/query/"
_CALLBACK = "/_gateway/callback/"


class _Endpoints:
    """The gateway's request handlers, shared by the mounted routes and the standalone server."""

    def __init__(self, gw: GatewayView, prefix: str) -> None:
        self.gw = gw
        self.prefix = prefix
        self.counters = gw.counters
        self.render = prometheus_exposition(
            gw.counters,
            gw.usage,
            lambda: {k.name: k.state for k in gw.pool.health()},
            lambda: (gw.relay.delivered, gw.relay.failed),
        )
        self.page = (
            resources.files("ruxa_async.gateway").joinpath("demo.html").read_bytes()
            if gw.config.demo
            else b""
        )

    def answer(self, route: str, reply: Reply) -> web.Response:
        self.counters.requests[(route, reply.code)] += 1
        return _envelope(reply.code, reply.message, reply.data, reply.retry_after)

    def refuse(self, route: str, exc: _BodyError) -> web.Response:
        self.counters.requests[(route, exc.code)] += 1
        self.counters.denials["body"] += 1
        response = _envelope(exc.code, exc.message)
        response.force_close()
        return response

    async def create(self, request: web.BaseRequest) -> web.Response:
        gw = self.gw
        try:
            raw = await _read_body(request, gw.config.max_body, gw.config.body_timeout)
        except _BodyError as exc:
            return self.refuse("create", exc)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
        reply = await gw.create(request.headers.get("Authorization"), body)
        return self.answer("create", reply)

    async def query(self, request: web.BaseRequest, task_id: str) -> web.Response:
        reply = await self.gw.query(request.headers.get("Authorization"), task_id)
        return self.answer("query", reply)

    async def callback(self, request: web.BaseRequest, token: str) -> web.Response:
        gw = self.gw
        try:
            raw = await _read_body(request, gw.config.max_body, gw.config.body_timeout)
        except _BodyError as exc:
            return self.refuse("callback", exc)
        reply = await gw.upstream_callback(token, raw, request.headers)
        return self.answer("callback", reply)

    async def unknown(self, request: web.BaseRequest) -> web.Response:
        self.counters.requests[("other", 404)] += 1
        return _envelope(404, "resource not found")

    async def metrics(self, request: web.BaseRequest) -> web.Response:
        if self.render is None or not self.gw.config.metrics:
            return _envelope(
                404, "metrics need the prometheus extra: pip install ruxa-async[prometheus]"
            )
        body, content_type = self.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def health(self, request: web.BaseRequest) -> web.Response:
        return _envelope(200, "ok", {"keys": {k.name: k.state for k in self.gw.pool.health()}})

    async def demo_page(self, request: web.BaseRequest) -> web.Response:
        return web.Response(
            body=self.page,
            content_type="text/html",
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'self'; img-src * data:; "
                "style-src 'unsafe-inline'; script-src 'unsafe-inline'",
            },
        )

    async def login(self, request: web.BaseRequest) -> web.Response:
        """The demo's stand-in for an app's sign-in: any name gets a short-lived token."""
        gw = self.gw
        try:
            raw = await _read_body(request, 1024, gw.config.body_timeout)
            name = json.loads(raw).get("user", "")
        except (_BodyError, ValueError, AttributeError):
            name = ""
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            return _envelope(422, "give a user name of 1-64 characters")
        token = gw.mint_token(
            f"demo:{name.strip()}", ttl=_DEMO_TTL, models=_DEMO_MODELS, budget=40.0
        )
        return _envelope(200, "success", {"token": token, "expiresIn": _DEMO_TTL})

    async def root(self, request: web.BaseRequest) -> web.Response:
        raise web.HTTPFound(self.prefix + "/demo/")

    def exact(self) -> dict[tuple[str, str], Handler]:
        """Handlers of the fixed paths, by (method, path) under the prefix."""
        p = self.prefix
        table: dict[tuple[str, str], Handler] = {
            ("POST", p + _CREATE): self.create,
            ("GET", p + "/metrics"): self.metrics,
            ("GET", p + "/healthz"): self.health,
        }
        if self.gw.config.demo:
            table[("GET", p + "/demo/")] = self.demo_page
            table[("POST", p + "/demo/login")] = self.login
            table[("GET", p + "/")] = self.root
        return table


def gateway_routes(gw: GatewayView, prefix: str = "") -> list[web.RouteDef]:
    """The gateway's routes, under ``prefix`` (e.g. ``"/ruxa"``; empty for the root)."""
    ep = _Endpoints(gw, prefix)

    async def query(request: web.Request) -> web.Response:
        return await ep.query(request, request.match_info["task_id"])

    async def callback(request: web.Request) -> web.Response:
        return await ep.callback(request, request.match_info["token"])

    routes = [
        web.get(path, handler) if method == "GET" else web.route(method, path, handler)
        for (method, path), handler in ep.exact().items()
    ]
    routes += [
        web.get(prefix + _QUERY + "{task_id}", query),
        web.post(prefix + _CALLBACK + "{token}", callback),
        web.route("*", prefix + "/api/{tail:.*}", ep.unknown),
    ]
    return routes


def _dispatcher(gw: GatewayView, guards: HeaderDeadlines) -> Handler:
    """The standalone server's one handler: the routes of :func:`gateway_routes`, matched by
    hand (a dict and two prefixes instead of aiohttp's router, application and middleware:
    the hot paths skip work they do not need)."""
    ep = _Endpoints(gw, "")
    exact = ep.exact()
    query, callback, unknown = ep.query, ep.callback, ep.unknown
    at_query, at_callback = len(_QUERY), len(_CALLBACK)

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        transport = request.transport
        guard = guards.guards.get(transport) if transport is not None else None
        if guard is not None:  # the headers are complete: stop the connection's clock
            guard.headers_done()
        try:
            method = request.method
            if method == "HEAD":
                method = "GET"
            path = request.path
            handler = exact.get((method, path))
            if handler is not None:
                return await handler(request)
            if method == "GET" and path.startswith(_QUERY):
                task_id = path[at_query:]
                if task_id and "/" not in task_id:
                    return await query(request, task_id)
            elif method == "POST" and path.startswith(_CALLBACK):
                token = path[at_callback:]
                if token and "/" not in token:
                    return await callback(request, token)
            return await unknown(request)
        finally:
            if guard is not None:
                guard.request_done()

    return dispatch


async def serve_gateway(gw: GatewayView, host: str, port: int) -> tuple[web.ServerRunner, str]:
    """Start an aiohttp server for ``gw`` alone; return its runner and base URL.

    Each connection must finish sending a request's headers within
    ``header_timeout`` seconds of its first byte (or of connecting), else it
    gets a 408 and is closed.
    """
    counters = gw.counters

    def expired() -> None:
        counters.requests[("other", 408)] += 1
        counters.denials["header_timeout"] += 1

    guards = HeaderDeadlines(gw.config.header_timeout, expired)
    server = web.Server(_dispatcher(gw, guards), access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = _GuardedSite(runner, host, port, guards)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    url = f"http://[{shown}]:{bound}" if ":" in shown else f"http://{shown}:{bound}"
    return runner, url


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
