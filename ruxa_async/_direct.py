"""A relay's short path to the transport: a request, its reply parsed, a 429 remembered.

A relay (the gateway) holds one client per upstream key and keeps its own
rules per key: which key a task is bound to, 401/402 take a key out of
rotation, a 429 cools it down. Its clients pace nothing (no rates, no
discovery), so the rate controller only counted the requests in flight (the
connection pool bounds them too) and closed its gate after a 429, and the
outage gate held requests back during an outage that the relay's caller should
hear about at once. :class:`DirectSender` is what is left of that path:

* the request goes straight to the transport (whose pool bounds what is in flight);
* a 429 closes the request's class (create or query) for its ``Retry-After``
  (1 s without one, at most ``max_pause``): until then a send of that class
  fails at once with :class:`RateLimitError` and the time left, without
  reaching the service;
* every other reply and error is the one the full path gives;
* a query whose reply is byte for byte the one its path got last time is not
  decoded again: the same ``data`` object is returned (for the last
  ``_MEMO`` paths). A relay polls unchanged tasks over and over, and the
  JSON decode was the largest part of a relayed query after the HTTP; callers
  must treat ``data`` as read-only (the relay compares it with what it showed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import _wire
from ._config import Kind
from ._errors import RateLimitError
from ._light_transport import LightTransport
from ._transport import Transport

__all__ = ["DirectSender"]

_DEFAULT_PAUSE = 1.0
_MEMO = 4096  # query paths whose last successful reply (raw and decoded) is remembered


class DirectSender:
    """Sends a relay's requests without the rate controller or the outage gate (see module)."""

    __slots__ = (
        "_clock",
        "_counts",
        "_max_pause",
        "_memo",
        "_require_open",
        "_transport",
        "_until",
    )

    def __init__(
        self,
        transport: Callable[[], Transport],
        *,
        require_open: Callable[[], None],
        counts: dict[str, int],
        max_pause: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._require_open = require_open
        self._counts = counts
        self._max_pause = max_pause
        self._clock = clock
        self._until: dict[str, float] = {"create": 0.0, "query": 0.0}
        self._memo: dict[str, tuple[bytes, Any]] = {}  # query path: (raw body, its data)

    def paused_for(self, kind: Kind) -> float:
        """Seconds until requests of ``kind`` may be sent again (0 when they may now)."""
        return max(0.0, self._until[kind] - self._clock())

    async def send(self, kind: Kind, path: str, body: bytes | None = None) -> Any:
        """One request (a POST when ``body`` is given); the envelope's ``data`` or its error."""
        self._require_open()
        until = self._until[kind]
        if until:
            left = until - self._clock()
            if left > 0:
                raise RateLimitError(
                    f"{kind}: paused after the service's 429; retry after {left:.1f} s",
                    code=429,
                    http_status=429,
                    retry_after=left,
                )
            self._until[kind] = 0.0
        self._counts[kind] += 1
        transport = self._transport()
        method = "GET" if body is None else "POST"
        if isinstance(transport, LightTransport):  # its reply as a tuple: cheaper to build
            status, raw, retry_after, _ = await transport.exchange(method, path, body)
        else:
            reply = await transport.request(method, path, body)
            status, raw, retry_after = reply.status, reply.body, reply.retry_after
        if body is not None:
            return self._parse(kind, status, raw, retry_after)
        memo = self._memo
        if status == 200 and kind == "query":
            last = memo.get(path)
            if last is not None and last[0] == raw:
                return last[1]  # the same bytes as last time: the same data
        data = self._parse(kind, status, raw, retry_after)
        if status == 200 and kind == "query":
            memo.pop(path, None)
            memo[path] = (raw, data)
            if len(memo) > _MEMO:
                del memo[next(iter(memo))]  # the path that changed least recently
        return data

    def _parse(self, kind: Kind, status: int, raw: bytes, retry_after: str | None) -> Any:
        """The reply envelope's ``data``; a 429 pauses ``kind`` before it is raised."""
        try:
            return _wire.parse_reply(status, raw, retry_after)
        except RateLimitError as exc:
            wait = exc.retry_after if exc.retry_after is not None else _DEFAULT_PAUSE
            pause = min(max(wait, 0.0), self._max_pause)
            self._until[kind] = max(self._until[kind], self._clock() + pause)
            raise
