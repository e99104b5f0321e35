"""The request gate: authentication, then the rate limit of the request's endpoint class.

Creates and queries are limited separately, each by a token bucket. A
rejected request gets a 429 (with ``Retry-After`` when the dialect sends it);
a request that comes back before that ``Retry-After`` has passed is counted as
early. The bucket's rate-limit headers, when the dialect publishes them, go
out on whatever reply the request gets.
"""

from __future__ import annotations

import math
import time

from aiohttp import web

from ._config import SimConfig
from ._limits import TokenBucket
from ._replies import Replies
from ._stats import Counters

__all__ = ["CREATE", "QUERY", "Gate"]

CREATE, QUERY = 0, 1
"""The endpoint classes, which index the buckets."""

_RATE_HEADERS = "ruxa_sim_rate_headers"  # request key: the bucket's headers for the reply
_UNAUTHORIZED = "You do not have access permissions"


class Gate:
    """Admits a request or answers it with 401 or 429."""

    def __init__(self, config: SimConfig, counters: Counters, replies: Replies) -> None:
        self._counters = counters
        self._replies = replies
        self._config = config
        self._auth = ""
        self._buckets: list[TokenBucket | None] = [None, None]
        self._deadlines = [0.0, 0.0]
        self.apply(config, None)

    def apply(self, new: SimConfig, old: SimConfig | None) -> None:
        """Follow ``new``; a changed limit gets a bucket with the tokens left (up to its burst)."""
        self._config = new
        self._auth = "Bearer " + new.api_key
        for index, limit in ((CREATE, new.create_limit), (QUERY, new.query_limit)):
            previous = self._buckets[index]
            if old is None or limit != (old.create_limit, old.query_limit)[index]:
                tokens = None
                if previous is not None:
                    elapsed = time.monotonic() - previous.stamp
                    tokens = min(previous.tokens + elapsed * previous.rate, previous.burst)
                self._buckets[index] = None if limit is None else TokenBucket(limit, tokens)

    def reset(self) -> None:
        """Full buckets and no ``Retry-After`` in force."""
        self._deadlines = [0.0, 0.0]
        self._buckets = [None, None]
        self.apply(self._config, None)

    def check(self, request: web.Request, kind: int, now: float) -> web.Response | None:
        """Authenticate and rate limit; a reply means the request ends there."""
        if now < self._deadlines[kind]:
            self._counters.early_requests += 1
        auth = request.headers.get("Authorization")
        if auth != self._auth and not self._auth_matches(auth):
            self._counters.unauthorized += 1
            return self._replies.reply(401, _UNAUTHORIZED)
        bucket = self._buckets[kind]
        if bucket is not None:
            wait = bucket.take(now)
            family = self._config.dialect.rate_headers
            if family != "none":
                request[_RATE_HEADERS] = bucket.headers(family)
            if wait > 0.0:
                return self._rate_limited(kind, wait, now)
        return None

    def _auth_matches(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and token.strip() == self._config.api_key

    def _rate_limited(self, kind: int, wait: float, now: float) -> web.Response:
        if kind == CREATE:
            self._counters.rate_limited_create += 1
        else:
            self._counters.rate_limited_query += 1
        headers = None
        if self._config.dialect.retry_after:
            seconds = max(1, math.ceil(wait))
            self._deadlines[kind] = max(self._deadlines[kind], now + seconds)
            headers = {"Retry-After": str(seconds)}
        return self._replies.reply(429, "Too many requests, please slow down", headers=headers)

    @staticmethod
    async def add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
        """Copy the rate-limit headers :meth:`check` computed onto whatever reply goes out."""
        extra = request.get(_RATE_HEADERS)
        if extra:
            response.headers.update(extra)
