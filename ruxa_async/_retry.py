"""When to retry a request and how long to wait, built on ``backoff``.

The rules, one place:

* 429: always retried. The wait is the rate controller's shared gate (set from
  ``Retry-After``), so the private backoff here is zero.
* A request that provably never reached the server (the connection could not
  be opened): always retried.
* Queries: also retried on 5xx, timeouts, dropped connections and unreadable
  replies.
* Creates that may have reached the server (5xx, timeout or drop after sending,
  an unreadable 200): *ambiguous*. Retried only under
  ``RetryPolicy(ambiguous_creates="retry")``, and every such retry is counted
  and logged, because it may create (and charge) a second task.
* Everything else (401, 402, 404, 422, unknown codes): never retried.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

import backoff

from ._config import Kind, RetryPolicy
from ._errors import (
    APIConnectionError,
    MalformedResponseError,
    RateLimitError,
    RuxaError,
    ServerError,
    ServiceUnavailableError,
)

__all__ = ["Kind", "Retrier", "is_ambiguous_create", "is_retryable"]

log = logging.getLogger("ruxa_async")

T = TypeVar("T")


def is_ambiguous_create(exc: BaseException) -> bool:
    """True when a failed create may nevertheless have created a task."""
    if isinstance(exc, APIConnectionError):
        return exc.request_sent
    return isinstance(exc, (ServerError, MalformedResponseError))


def is_retryable(exc: BaseException, kind: Kind, policy: RetryPolicy) -> bool:
    """Whether a request of ``kind`` that failed with ``exc`` should be sent again."""
    if isinstance(exc, RateLimitError):
        return True
    if isinstance(exc, ServiceUnavailableError):
        return False  # the outage gate already waited as long as allowed
    if isinstance(exc, APIConnectionError) and not exc.request_sent:
        return True
    if kind == "query":
        return isinstance(exc, (APIConnectionError, ServerError, MalformedResponseError))
    return policy.ambiguous_creates == "retry" and is_ambiguous_create(exc)


def _remember_sent(attempt: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T]]:
    sent = False

    async def tracked() -> T:
        nonlocal sent
        try:
            return await attempt()
        except APIConnectionError as exc:
            sent = sent or exc.request_sent
            exc.request_sent = sent
            raise

    return tracked


def _wait_generator(policy: RetryPolicy) -> Generator[float, Any, None]:
    """Exponential backoff with full jitter; zero after a 429 (the shared gate waits)."""
    attempt = 0
    exc = yield 0.0
    while True:
        if isinstance(exc, RateLimitError):
            wait = 0.0
        else:
            ceiling = min(policy.max_delay, policy.initial_delay * (2.0**attempt))
            wait = random.uniform(0.0, ceiling)
            attempt += 1
        exc = yield wait


class Retrier:
    """Runs one logical request with retries under a :class:`RetryPolicy`.

    The ``backoff`` wrappers are built once per kind, not per call. ``retries``
    and ``ambiguous_create_retries`` count what happened, for the client's
    statistics.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.retries = 0
        self.ambiguous_create_retries = 0
        self._wrapped = {kind: self._wrap(kind) for kind in ("create", "query")}

    async def call(self, kind: Kind, attempt: Callable[[], Awaitable[T]]) -> T:
        """Call ``attempt`` until it succeeds or the policy gives up; re-raise the last error.

        A create's final connection error says ``request_sent=True`` when any
        earlier attempt of it may have reached the service.
        """
        if kind == "create":
            attempt = _remember_sent(attempt)
        result: T = await self._wrapped[kind](attempt)
        return result

    def _wrap(self, kind: Kind) -> Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]:
        policy = self.policy

        def giveup(exc: Exception) -> bool:
            return not is_retryable(exc, kind, policy)

        def on_backoff(details: Any) -> None:
            exc = details.get("exception")
            self.retries += 1
            if kind == "create" and exc is not None and is_ambiguous_create(exc):
                self.ambiguous_create_retries += 1
                log.warning(
                    "create may have reached the service before failing (%s); retrying it may "
                    "create and charge a second task (ambiguous retry #%d)",
                    exc,
                    self.ambiguous_create_retries,
                )
            else:
                log.debug(
                    "%s attempt %d failed (%s); retrying in %.2f s",
                    kind,
                    details["tries"],
                    exc,
                    details["wait"],
                )

        async def once(attempt: Callable[[], Awaitable[Any]]) -> Any:
            # a coroutine function, so backoff takes its async path
            return await attempt()

        wrapped: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]] = backoff.on_exception(
            lambda: _wait_generator(policy),
            RuxaError,
            max_tries=policy.max_attempts,
            max_time=policy.max_time,
            jitter=None,
            giveup=giveup,
            on_backoff=on_backoff,
            raise_on_giveup=True,
            logger=None,
        )(once)
        return wrapped
