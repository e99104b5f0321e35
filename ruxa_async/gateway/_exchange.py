"""One HTTP exchange as plain values: what the gateway's endpoints read and what they answer.

The endpoints take a :class:`Request` and return a :class:`Response`, so the
same code serves the standalone server (``_httpserver``) and the routes that
:meth:`~ruxa_async.gateway.Gateway.mount` adds to a user's aiohttp app.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["Request", "Response"]


class Request:
    """A whole request: method, decoded path, raw query string, headers, body, peer.

    ``headers`` looks names up case-insensitively when they are given in lower case
    (the first of repeated names wins).
    """

    __slots__ = ("body", "headers", "method", "path", "peer", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        peer: str | None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.peer = peer

    def __repr__(self) -> str:  # no headers: they carry tokens
        return f"<Request {self.method} {self.path} body={len(self.body)}B>"


class Response:
    """A whole response: status, headers (name, value pairs), body.

    ``close`` asks the server to close the connection once this is sent.
    """

    __slots__ = ("body", "close", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
        *,
        close: bool = False,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.close = close

    def __repr__(self) -> str:
        return f"<Response {self.status} body={len(self.body)}B>"
