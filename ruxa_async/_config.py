"""Frozen, keyword-only policies: timeouts, retries, rate limits, polling.

Override per client with the constructor's arguments, or derive a variant with
``attrs.evolve(policy, field=value)``.
"""

from __future__ import annotations

import os
from typing import Literal

import attrs
from attrs import validators as v

__all__ = [
    "DEFAULT_BASE_URL",
    "Kind",
    "OutagePolicy",
    "PollPolicy",
    "RateLimits",
    "RetryPolicy",
    "Timeouts",
    "env_api_key",
    "resolve_base_url",
]

DEFAULT_BASE_URL = "https://api.ruxa.ai"

Kind = Literal["create", "query"]
"""The two classes of request the rate controller and the retry rules tell apart."""


def env_api_key() -> str | None:
    """The API key from ``RUXA_API_KEY`` (surrounding blanks removed), or None when unset."""
    key = os.environ.get("RUXA_API_KEY", "").strip()
    return key or None


def resolve_base_url(explicit: str | None = None) -> str:
    """The API base URL: ``explicit``, else ``RUXA_BASE_URL``, else the default; no final '/'."""
    url = explicit or os.environ.get("RUXA_BASE_URL") or DEFAULT_BASE_URL
    return url.rstrip("/")


_positive = v.gt(0.0)
_non_negative = v.ge(0.0)


def _optional_positive(
    _inst: object, attr: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attr.name} must be > 0 or None, got {value!r}")


@attrs.frozen(kw_only=True)
class Timeouts:
    """Per-request time limits, in seconds.

    ``connect`` bounds opening a connection, ``read`` one wait for bytes, and
    ``total`` the whole request (connection, sending and reading the reply).
    """

    connect: float = attrs.field(default=10.0, validator=_positive)
    read: float = attrs.field(default=60.0, validator=_positive)
    total: float = attrs.field(default=120.0, validator=_positive)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How failed requests are retried: exponential backoff with full jitter.

    Queries retry on 429, 5xx, timeouts and connection errors. Creates retry on
    429 and on failures where the request provably never reached the server.
    A create that *may* have reached the server (a 5xx, a timeout or a dropped
    connection after sending) is *ambiguous*: with ``ambiguous_creates="retry"``
    (the default) it is retried and counted in ``statistics().ambiguous_create_retries``
    because the retry may create and charge a second task; with ``"raise"`` the
    error is raised at once and nothing can be paid twice.
    401, 402, 404 and 422 are never retried. A 429 waits at the rate controller's
    shared gate (``Retry-After``, capped by ``RateLimits.max_pause``) rather than
    in a private backoff, so one 429 pauses every sender at once.
    """

    max_attempts: int = attrs.field(default=6, validator=v.ge(1))
    max_time: float = attrs.field(default=300.0, validator=_positive)
    initial_delay: float = attrs.field(default=0.5, validator=_positive)
    max_delay: float = attrs.field(default=30.0, validator=_positive)
    ambiguous_creates: Literal["retry", "raise"] = attrs.field(
        default="retry", validator=v.in_(("retry", "raise"))
    )


@attrs.frozen(kw_only=True)
class RateLimits:
    """The client's rate controller settings.

    Rates are requests per second; ``None`` means unknown: the controller then
    discovers the limit. It ramps up from a modest pace, and after a 429
    settles just under the rate the server admitted, holds there and probes
    upward rarely (a server's rate-limit headers, when it sends any, replace
    the guessing). A configured rate is a ceiling and a starting point, paced
    1 % under (so the server's bucket refills): a 429 still lowers the pace for
    a while, and probes bring it back. A configured
    burst is the server's; the controller spends at most half of it back to
    back. ``recovery_seconds`` sets the controller's time scale: a quarter of
    it is the *unit* (1 s by default); the pace holds 4 units after a 429
    before probing (longer each time the limit is found unchanged).
    ``decrease_factor`` is kept for compatibility and no longer used.
    ``pause_without_retry_after`` is the first pause after a 429 that carries
    no ``Retry-After``; it doubles for each consecutive episode.
    ``gate_scope="endpoint"`` (the default) pauses only requests of the class
    (create or query) that got the 429, for its whole ``Retry-After``: the
    classes have separate limits, so a query 429 says nothing about creates.
    ``"client"`` pauses every request after any 429 (for a server with one
    limit for everything; it costs more time paused).
    """

    max_in_flight: int = attrs.field(default=64, validator=v.ge(1))
    create_per_second: float | None = attrs.field(default=None, validator=_optional_positive)
    create_burst: int = attrs.field(default=10, validator=v.ge(1))
    query_per_second: float | None = attrs.field(default=None, validator=_optional_positive)
    query_burst: int = attrs.field(default=10, validator=v.ge(1))
    adaptive: bool = True
    decrease_factor: float = attrs.field(default=0.7, validator=[v.gt(0.0), v.lt(1.0)])
    recovery_seconds: float = attrs.field(default=4.0, validator=_positive)
    min_rate: float = attrs.field(default=0.2, validator=_positive)
    pause_without_retry_after: float = attrs.field(default=1.0, validator=_positive)
    max_pause: float = attrs.field(default=60.0, validator=_positive)
    gate_scope: Literal["client", "endpoint"] = attrs.field(
        default="endpoint", validator=v.in_(("client", "endpoint"))
    )


@attrs.frozen(kw_only=True)
class PollPolicy:
    """When the scheduler checks a pending task.

    The first check comes near the model's expected duration (learned from the
    tasks this client has seen, else taken from the catalogue, else
    ``default_duration``) times ``first_check_factor``; later checks back off
    by ``backoff`` from ``min_interval`` up to ``max_interval``, with
    ``jitter`` (a fraction) to spread them. ``first_check``, when set, replaces
    the expected duration for every model (handy against a fast simulator).
    While a model's duration is still unknown (fewer than three tasks seen),
    ``explore`` checks its first few tasks early so the estimate is learned
    from the service within seconds; pending tasks planned from the prior are
    then brought forward. With callbacks on, polling is only a safety net. Until the
    client has seen a few callbacks of a model, the safety-net check waits
    ``callback_grace_factor`` times the expected duration plus ``callback_grace``
    seconds; from then on it comes at ``callback_quantile_factor`` times the
    ``callback_quantile`` of how long that model's callbacks actually took to
    arrive (at least ``callback_min_grace`` seconds), so a lost callback costs a
    few typical durations, not a minute.
    """

    first_check: float | None = attrs.field(default=None, validator=_optional_positive)
    default_duration: float = attrs.field(default=10.0, validator=_positive)
    first_check_factor: float = attrs.field(default=1.0, validator=_positive)
    min_interval: float = attrs.field(default=0.5, validator=_positive)
    backoff: float = attrs.field(default=1.5, validator=v.ge(1.0))
    max_interval: float = attrs.field(default=30.0, validator=_positive)
    jitter: float = attrs.field(default=0.1, validator=[v.ge(0.0), v.lt(1.0)])
    callback_grace_factor: float = attrs.field(default=3.0, validator=v.ge(1.0))
    callback_grace: float = attrs.field(default=30.0, validator=_non_negative)
    callback_quantile: float = attrs.field(default=0.95, validator=[v.gt(0.0), v.lt(1.0)])
    callback_quantile_factor: float = attrs.field(default=1.5, validator=v.ge(1.0))
    callback_min_grace: float = attrs.field(default=1.0, validator=_non_negative)
    max_not_found: int = attrs.field(default=3, validator=v.ge(1))
    explore: bool = True


@attrs.frozen(kw_only=True)
class OutagePolicy:
    """How the client rides out a service that does not answer at all (see ``_outage``).

    After ``failures`` connection failures in a row (refused, reset or timed
    out with no reply in between), or after the first one while the service
    has never answered, the client stops sending: requests wait and one probe
    at a time checks the service, first after ``probe_initial`` seconds, then
    doubling up to ``probe_max``. The first reply reopens the gate for all.
    An outage longer than ``max_outage`` seconds (``first_contact`` when the
    service never answered this client) ends every waiting request with one
    :class:`ServiceUnavailableError`, and a batch stops submitting.
    """

    failures: int = attrs.field(default=3, validator=v.ge(1))
    probe_initial: float = attrs.field(default=0.5, validator=_positive)
    probe_max: float = attrs.field(default=1.0, validator=_positive)
    max_outage: float = attrs.field(default=300.0, validator=_positive)
    first_contact: float = attrs.field(default=5.0, validator=_positive)
