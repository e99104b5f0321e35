"""The gateway over HTTP: Ruxa's two endpoints, the callback inbox, metrics, the demo page.

Every reply is a Ruxa envelope ``{code, message, data}`` whose HTTP status
equals ``code``. The endpoints take a :class:`~._exchange.Request` and return a
:class:`~._exchange.Response`, so they serve every way the gateway is served
(``_http``: alone; ``_aiohttp_front``: mounted into an aiohttp app).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from .._jsoncodec import json_loads
from ._exchange import Request, Response
from ._metrics import prometheus_exposition
from ._policy import envelope_bytes, retry_after_header

if TYPE_CHECKING:
    from ._policy import Reply
    from ._view import GatewayView

__all__ = ["Endpoints", "Router", "envelope"]

Handler = Callable[[Request], Awaitable[Response]]

_DEMO_TTL = 600.0
_DEMO_MODELS = ("google/nano-banana",)
_LOGIN_MAX = 1024
_JSON = (("Content-Type", "application/json"), ("Cache-Control", "no-store"))
_PAGE = (
    ("Content-Type", "text/html"),
    ("Cache-Control", "no-store"),
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src * data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'",
    ),
)


def envelope(
    code: int, message: str, data: Any = None, retry_after: float | None = None
) -> Response:
    """A Ruxa envelope ``{code, message, data}`` answered with HTTP status ``code``."""
    return Response(code, _headers(retry_after), envelope_bytes(code, message, data))


def _headers(retry_after: float | None) -> tuple[tuple[str, str], ...]:
    if retry_after is None:
        return _JSON
    return (*_JSON, ("Retry-After", retry_after_header(retry_after)))


_CREATE = "/api/v1/tasks/create"
_QUERY = "/api/v1/tasks/query/"
_CALLBACK = "/_gateway/callback/"


class Endpoints:
    """The gateway's request handlers, shared by every way of serving it."""

    def __init__(self, gw: GatewayView, prefix: str) -> None:
        self.gw = gw
        self.prefix = prefix
        self.counters = gw.counters
        self.render = prometheus_exposition(gw)
        self.page = (
            resources.files("ruxa_async.gateway").joinpath("demo.html").read_bytes()
            if gw.config.demo
            else b""
        )

    def answer(self, route: str, reply: Reply) -> Response:
        self.counters.requests[(route, reply.code)] += 1
        return Response(reply.code, _headers(reply.retry_after), reply.body())

    def refuse_body(self, route: str, code: int, message: str) -> Response:
        """A body too large (413) or too slow (408): counted, and the connection closes."""
        self.counters.requests[(route, code)] += 1
        self.counters.denials["body"] += 1
        response = envelope(code, message)
        response.close = True
        return response

    def route_of(self, path: str) -> str:
        """The route name ``path`` is counted under."""
        tail = path[len(self.prefix) :] if path.startswith(self.prefix) else ""
        if tail == _CREATE:
            return "create"
        if tail.startswith(_QUERY):
            return "query"
        if tail.startswith(_CALLBACK):
            return "callback"
        return "other"

    async def create(self, request: Request) -> Response:
        try:
            body = json_loads(request.body)
        except (ValueError, RecursionError):
            body = None
        reply = await self.gw.create(request.headers.get("authorization"), body)
        return self.answer("create", reply)

    async def query(self, request: Request, task_id: str) -> Response:
        reply = await self.gw.query(request.headers.get("authorization"), task_id)
        return self.answer("query", reply)

    async def callback(self, request: Request, token: str) -> Response:
        reply = await self.gw.upstream_callback(token, request.body, request.headers)
        return self.answer("callback", reply)

    async def unknown(self, request: Request) -> Response:
        self.counters.requests[("other", 404)] += 1
        return envelope(404, "resource not found")

    async def metrics(self, request: Request) -> Response:
        if self.render is None or not self.gw.config.metrics:
            return envelope(
                404, "metrics need the prometheus extra: pip install ruxa-async[prometheus]"
            )
        body, content_type = await self.render()
        return Response(200, (("Content-Type", content_type),), body)

    async def health(self, request: Request) -> Response:
        return envelope(200, "ok", {"keys": {k.name: k.state for k in self.gw.pool.health()}})

    async def demo_page(self, request: Request) -> Response:
        return Response(200, _PAGE, self.page)

    async def login(self, request: Request) -> Response:
        """The demo's stand-in for an app's sign-in: any name gets a short-lived token."""
        try:
            name = (
                json.loads(request.body).get("user", "") if len(request.body) <= _LOGIN_MAX else ""
            )
        except (ValueError, AttributeError, RecursionError):
            name = ""
        if not isinstance(name, str) or not name.strip() or len(name) > 64:
            return envelope(422, "give a user name of 1-64 characters")
        token = self.gw.mint_token(
            f"demo:{name.strip()}", ttl=_DEMO_TTL, models=_DEMO_MODELS, budget=40.0
        )
        return envelope(200, "success", {"token": token, "expiresIn": _DEMO_TTL})

    async def root(self, request: Request) -> Response:
        location = self.prefix + "/demo/"
        return Response(
            302,
            (("Content-Type", "text/plain; charset=utf-8"), ("Location", location)),
            b"302: Found",
        )

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

    def variable(self) -> list[tuple[str, str, Callable[[Request, str], Awaitable[Response]]]]:
        """Handlers of the paths ending in a variable segment: (method, path before it, handler)."""
        p = self.prefix
        return [("GET", p + _QUERY, self.query), ("POST", p + _CALLBACK, self.callback)]


class Router:
    """Every route of the gateway at the root, matched by hand (a dict and two prefixes):
    the standalone server's application."""

    def __init__(self, gw: GatewayView) -> None:
        self.endpoints = ep = Endpoints(gw, "")
        self.counters = gw.counters
        self._exact = ep.exact()
        self._query, self._callback, self._unknown = ep.query, ep.callback, ep.unknown
        self._at_query, self._at_callback = len(_QUERY), len(_CALLBACK)

    def __call__(self, request: Request) -> Awaitable[Response]:
        method = request.method
        if method == "HEAD":
            method = "GET"
        path = request.path
        handler = self._exact.get((method, path))
        if handler is not None:
            return handler(request)
        if method == "GET" and path.startswith(_QUERY):
            task_id = path[self._at_query :]
            if task_id and "/" not in task_id:
                return self._query(request, task_id)
        elif method == "POST" and path.startswith(_CALLBACK):
            token = path[self._at_callback :]
            if token and "/" not in token:
                return self._callback(request, token)
        return self._unknown(request)

    def refused(self, request: Request | None, status: int, message: str) -> Response:
        """The server refused a request (or a connection that sent none in time)."""
        if request is not None and status in (408, 413):
            return self.endpoints.refuse_body(
                self.endpoints.route_of(request.path), status, message
            )
        self.counters.requests[("other", status)] += 1
        if status == 408:
            self.counters.denials["header_timeout"] += 1
        response = envelope(status, message)
        response.close = True
        return response
