"""One Redis connection pool with a timeout on every call and an outage tracker.

Any failure (refused, reset, timed out, a script error, a call that ended in a
CancelledError its caller was not sent) marks the store
*degraded*: a WARNING once, then every caller falls back to local behaviour
without touching Redis until the background probe gets an answer again. So a
dead or hung Redis costs one timeout, never a hang.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

__all__ = ["Store"]

log = logging.getLogger("ruxa_async")
T = TypeVar("T")


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


def _being_cancelled() -> bool:
    """True when the current task was asked to stop.

    Always True before Python 3.11, which cannot tell: a CancelledError then
    propagates as it always did.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or bool(cancelling())


class Store:
    """The coordinator's Redis: ``call()`` runs one operation or returns None when it cannot."""

    #: Said in the WARNING when Redis becomes unreachable: what happens until it answers again.
    while_down = (
        "the fleet coordinator falls back to local-only limits and in-process idempotency "
        "until it answers again"
    )
    log_prefix = ""

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        timeout: float,
        max_connections: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.shown_url = _redact(url)
        self.prefix = namespace + ":"
        self.timeout = timeout
        self._clock = clock
        # a bounded pool: a crowd of callers waits (within the timeout) for a connection
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self.degraded = False
        self.degraded_since = 0.0
        self.degraded_before = 0.0
        self.degraded_events = 0
        self.errors = 0
        self.calls = 0  # operations sent to Redis (round trips, a pipeline counting once)
        self.on_recovered: list[Callable[[], None]] = []

    def key(self, *parts: str) -> str:
        """A key in this namespace."""
        return self.prefix + ":".join(parts)

    async def call(self, operation: Callable[[], Awaitable[T]], *, probe: bool = False) -> T | None:
        """Run ``operation`` within the timeout; None if degraded (unless ``probe``) or it fails."""
        if self.degraded and not probe:
            return None
        self.calls += 1
        try:
            result = await asyncio.wait_for(operation(), self.timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self.failed(exc)
            return None
        except asyncio.CancelledError as exc:
            if _being_cancelled():
                raise
            # A CancelledError nobody sent this task: the client library's call ended
            # that way (a connection torn down under it). Raised on, it would end the
            # caller as if cancelled, and a batch would wait forever for that job.
            self.failed(exc)
            return None
        self.succeeded()
        return result

    def failed(self, exc: BaseException) -> None:
        """Count a failure; the first one of an outage logs a WARNING."""
        self.errors += 1
        if self.degraded:
            return
        self.degraded = True
        self.degraded_since = self._clock()
        self.degraded_events += 1
        log.warning(
            "%sRedis at %s unreachable (%s: %s); %s",
            self.log_prefix,
            self.shown_url,
            type(exc).__name__,
            exc,
            self.while_down,
        )

    def succeeded(self) -> None:
        """Note an answer; ends an outage."""
        if not self.degraded:
            return
        self.degraded = False
        took = self._clock() - self.degraded_since
        self.degraded_before += took
        log.warning("Redis at %s answers again after %.1f s degraded", self.shown_url, took)
        for hook in list(self.on_recovered):
            hook()

    def degraded_seconds(self) -> float:
        """The total time spent degraded, the running outage included."""
        running = self._clock() - self.degraded_since if self.degraded else 0.0
        return self.degraded_before + running

    async def aclose(self) -> None:
        """Close the connection pool."""
        try:
            await asyncio.wait_for(self.redis.aclose(close_connection_pool=True), self.timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.debug("closing the Redis connection failed: %s", exc)

    def script(self, source: str) -> Any:
        """A registered Lua script (EVALSHA, reloaded after a Redis restart)."""
        return self.redis.register_script(source)
