"""The only module that touches aiohttp's client: one pooled session, errors mapped once.

The transport knows HTTP and nothing of tasks: it sends a request and hands
back the status, body bytes, ``Retry-After`` and the rate-limit headers (as a
plain dict); or it raises
:class:`APIConnectionError` / :class:`APITimeoutError`, saying whether the
request can have reached the server.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import attrs

from ._config import Timeouts
from ._errors import APIConnectionError, APITimeoutError, RuxaError
from ._ratehints import RATE_HEADER_NAMES

__all__ = ["ByteStream", "Reply", "Transport"]

log = logging.getLogger("ruxa_async")

KeySource = Callable[[], str]
_LARGE_BODY = 512 * 1024
_LOOPBACK = frozenset({"localhost", "::1"})


@attrs.frozen(slots=True)
class Reply:
    """An HTTP reply, reduced to what the wire parser and the rate controller need.

    ``rate_headers`` holds the reply's rate-limit headers (lower-case names,
    see :data:`ruxa_async._ratehints.RATE_HEADER_NAMES`); empty when it had none.
    """

    status: int
    body: bytes
    retry_after: str | None
    rate_headers: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(slots=True)
class ByteStream:
    """A streamed download: status, announced length and the body's chunks."""

    status: int
    content_length: int | None
    chunks: Callable[[int], AsyncIterator[bytes]]


def _map_error(exc: BaseException, what: str) -> APIConnectionError:
    """Translate an aiohttp or asyncio failure into the SDK's connection errors."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return APITimeoutError(f"{what}: timed out opening a connection", request_sent=False)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return APITimeoutError(f"{what}: timed out waiting for the reply", request_sent=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        reason = os.strerror(os_error.errno) if os_error.errno else os_error.strerror
        return APIConnectionError(
            f"{what}: cannot connect ({reason or os_error})", request_sent=False
        )
    if isinstance(exc, aiohttp.InvalidURL):
        return APIConnectionError(f"{what}: invalid URL", request_sent=False)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return APIConnectionError(f"{what}: the server closed the connection", request_sent=True)
    return APIConnectionError(f"{what}: {type(exc).__name__}: {exc}", request_sent=True)


def _rate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The rate-limit headers of a reply, as a plain dict with lower-case names."""
    return {name: headers[name] for name in RATE_HEADER_NAMES if name in headers}


def _env_proxy(url: str) -> str | None:
    """The proxy the environment (HTTPS_PROXY, NO_PROXY, ...) names for ``url``, if any."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in _LOOPBACK or host.startswith("127.") or urllib.request.proxy_bypass(host):
        return None  # no proxy can reach this machine's loopback
    return urllib.request.getproxies().get(parts.scheme)


class Transport:
    """One aiohttp session with a pooled keep-alive connector, owned by one client.

    Open it with :meth:`open` inside the running loop and close it with
    :meth:`aclose`. The API key is read from ``key`` on every request, so a key
    provider can rotate keys without a restart; it is never logged.
    """

    def __init__(
        self,
        *,
        base_url: str,
        key: KeySource,
        timeouts: Timeouts,
        max_connections: int,
        user_agent: str,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._key = key
        self._timeouts = timeouts
        self._max_connections = max_connections
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}
        self.requests_sent = 0

    def __repr__(self) -> str:
        return f"<Transport {self._base_url} open={self._session is not None}>"

    @property
    def base_url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._base_url

    def open(self) -> None:
        """Create the session; must be called with an event loop running."""
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, limit_per_host=0, keepalive_timeout=30.0
        )
        timeout = aiohttp.ClientTimeout(
            total=self._timeouts.total,
            connect=self._timeouts.connect,
            sock_read=self._timeouts.read,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": self._user_agent, "Accept": "application/json"},
            raise_for_status=False,
            # Proxies are read from the environment once per host (see _proxy), not on
            # every request: aiohttp's trust_env costs two thread hops per request.
            trust_env=False,
        )

    async def aclose(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _proxy(self, url: str) -> str | None:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self._proxies:
            self._proxies[key] = _env_proxy(url)
        return self._proxies[key]

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuxaError("the client is not open: use `async with RuxaClient(...)`")
        return self._session

    async def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        """Send one API request; return its reply or raise a connection error."""
        session = self._require_session()
        headers = {"Authorization": "Bearer " + self._key()}
        if body is not None:
            headers["Content-Type"] = "application/json"
        what = f"{method} {path}"
        started = time.monotonic()
        self.requests_sent += 1
        url = self._base_url + path
        if body is not None and len(body) > _LARGE_BODY:
            data: Any = io.BytesIO(body)  # aiohttp warns about large raw bytes bodies
        else:
            data = body
        try:
            async with session.request(
                method, url, data=data, headers=headers, proxy=self._proxy(url)
            ) as resp:
                payload = await resp.read()
                reply = Reply(
                    resp.status,
                    payload,
                    resp.headers.get("Retry-After"),
                    _rate_headers(resp.headers),
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            error = _map_error(exc, what)
            log.debug("%s failed after %.3f s: %s", what, time.monotonic() - started, error)
            raise error from exc
        log.debug("%s -> HTTP %d in %.3f s", what, reply.status, time.monotonic() - started)
        return reply

    @asynccontextmanager
    async def stream(self, url: str, *, timeout: float | None = None) -> AsyncIterator[ByteStream]:
        """Stream a result file. No API key is sent: result URLs live on other hosts."""
        session = self._require_session()
        what = "GET result file"
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(
                total=timeout, connect=self._timeouts.connect, sock_read=self._timeouts.read
            )
        try:
            async with session.get(
                url, headers={"Accept": "*/*"}, proxy=self._proxy(url), **kwargs
            ) as resp:

                async def chunks(size: int) -> AsyncIterator[bytes]:
                    try:
                        async for chunk in resp.content.iter_chunked(size):
                            yield chunk
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                        raise _map_error(exc, what) from exc

                yield ByteStream(resp.status, resp.content_length, chunks)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _map_error(exc, what) from exc
