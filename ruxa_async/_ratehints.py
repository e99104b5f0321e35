"""Rate-limit hints a server sends in its reply headers, parsed into one plain object.

Three families are read, whichever the reply carries (the first found wins,
in this order):

* ``ietf``: the IETF httpapi draft's structured fields,
  ``RateLimit-Policy: "name";q=100;w=1`` and ``RateLimit: "name";r=42;t=1``
  (draft 08 and later), also the draft 06/07 dictionary form
  ``RateLimit: limit=100, remaining=42, reset=1``.
* ``ietf-legacy``: the drafts' earlier separate fields ``RateLimit-Limit``
  (``100`` or ``100, 100;w=1``), ``RateLimit-Remaining``, ``RateLimit-Reset``.
* ``x-ratelimit``: the common ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset``;
  a reset above 10^9 is read as a Unix time, smaller ones as seconds.

``Retry-After`` (seconds or an HTTP date) is read alongside any of them.
Every value is checked: a negative, non-numeric, NaN or absurdly large one is
dropped, never raised, so a hostile or broken server cannot crash or stall
the client through these headers.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from datetime import timezone
from typing import Literal

import attrs

__all__ = ["RATE_HEADER_NAMES", "RateHint", "parse_rate_headers", "parse_retry_after"]

HintFamily = Literal["ietf", "ietf-legacy", "x-ratelimit", "retry-after"]

RATE_HEADER_NAMES = (
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
)
"""Header names (lower case) the transport copies out of a reply for the parser."""

_MAX_QUOTA = 1e7  # requests per window; more is nonsense
_MAX_SECONDS = 86_400.0 * 7  # a week; a longer window, reset or pause is nonsense
_EPOCH_THRESHOLD = 1e9  # an X-RateLimit-Reset this large is a Unix time
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")
_PARAM = re.compile(r";\s*([a-zA-Z][\w-]*)\s*=\s*(\"[^\"]*\"|[^;,\s]+)")


@attrs.frozen(kw_only=True)
class RateHint:
    """What one reply said about the rate limit; every field may be missing.

    Attributes:
        family: which header family it came from.
        limit: requests allowed per ``window`` (the quota).
        window: the quota's time window in seconds; None when not said.
        remaining: requests left now.
        reset: seconds until the quota is whole again.
        retry_after: seconds the server asked to wait (``Retry-After``).
    """

    family: HintFamily
    limit: float | None = None
    window: float | None = None
    remaining: float | None = None
    reset: float | None = None
    retry_after: float | None = None

    @property
    def rate(self) -> float | None:
        """The quota's sustained rate in requests per second, if limit and window are known."""
        if self.limit is None or self.window is None or self.window <= 0.0:
            return None
        return self.limit / self.window


def _number(text: str | None, *, upper: float) -> float | None:
    """A non-negative finite number not above ``upper``, or None."""
    if text is None:
        return None
    match = _NUMBER.match(text)
    if match is None:
        return None
    value = float(match.group(1))
    if not math.isfinite(value) or value > upper:
        return None
    return value


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP date).

    A date in the past gives 0.0; garbage, negative or non-finite values give None.
    ``now`` is the wall clock (``time.time()``) used for dates.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = max(0.0, when.timestamp() - (time.time() if now is None else now))
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0.0:
        return None
    return seconds


def _params(item: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2).strip('"') for m in _PARAM.finditer(item)}


def _first_item(value: str) -> str:
    return value.split(",", 1)[0]


def _ietf(headers: Mapping[str, str]) -> RateHint | None:
    current = headers.get("ratelimit")
    policy = headers.get("ratelimit-policy")
    if current is None and policy is None:
        return None
    limit = window = remaining = reset = None
    if policy is not None:
        # "name";q=100;w=1 (draft 08+) or 100;w=1 (draft 06/07): the first policy rules.
        item = _first_item(policy)
        params = _params(item)
        limit = _number(params.get("q"), upper=_MAX_QUOTA)
        if limit is None:
            limit = _number(item.split(";", 1)[0].strip().strip('"'), upper=_MAX_QUOTA)
        window = _number(params.get("w"), upper=_MAX_SECONDS)
    if current is not None:
        params = _params(";" + current.replace(",", ";")) if "=" in current else {}
        if "r" in params or "t" in params:
            remaining = _number(params.get("r"), upper=_MAX_QUOTA)
            reset = _number(params.get("t"), upper=_MAX_SECONDS)
        else:  # draft 06/07 dictionary: limit=100, remaining=42, reset=1
            remaining = _number(params.get("remaining"), upper=_MAX_QUOTA)
            reset = _number(params.get("reset"), upper=_MAX_SECONDS)
            if limit is None:
                limit = _number(params.get("limit"), upper=_MAX_QUOTA)
    if window is not None and window <= 0.0:
        window = None
    return RateHint(family="ietf", limit=limit, window=window, remaining=remaining, reset=reset)


def _legacy(headers: Mapping[str, str]) -> RateHint | None:
    names = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
    if not any(name in headers for name in names):
        return None
    limit = window = None
    raw = headers.get("ratelimit-limit")
    if raw is not None:
        first = raw.split(",")
        limit = _number(first[0].split(";", 1)[0], upper=_MAX_QUOTA)
        for item in first[1:]:  # "100, 100;w=1": the quota policy of the same limit
            params = _params(item)
            quota = _number(item.split(";", 1)[0], upper=_MAX_QUOTA)
            if quota is not None and quota == limit:
                window = _number(params.get("w"), upper=_MAX_SECONDS)
                break
    if window is not None and window <= 0.0:
        window = None
    return RateHint(
        family="ietf-legacy",
        limit=limit,
        window=window,
        remaining=_number(headers.get("ratelimit-remaining"), upper=_MAX_QUOTA),
        reset=_number(headers.get("ratelimit-reset"), upper=_MAX_SECONDS),
    )


def _x_ratelimit(headers: Mapping[str, str], now: float | None) -> RateHint | None:
    names = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
    if not any(name in headers for name in names):
        return None
    reset = _number(headers.get("x-ratelimit-reset"), upper=1e12)
    if reset is not None and reset >= _EPOCH_THRESHOLD:
        reset = max(0.0, reset - (time.time() if now is None else now))
    if reset is not None and reset > _MAX_SECONDS:
        reset = None
    return RateHint(
        family="x-ratelimit",
        limit=_number(headers.get("x-ratelimit-limit"), upper=_MAX_QUOTA),
        remaining=_number(headers.get("x-ratelimit-remaining"), upper=_MAX_QUOTA),
        reset=reset,
    )


def parse_rate_headers(headers: Mapping[str, str], *, now: float | None = None) -> RateHint | None:
    """The rate-limit hint in ``headers`` (lower-case names), or None when there is none.

    ``now`` is the wall clock (``time.time()``) for HTTP dates and Unix-time resets.
    """
    if not headers:
        return None
    hint = _ietf(headers) or _legacy(headers) or _x_ratelimit(headers, now)
    retry_after = parse_retry_after(headers.get("retry-after"), now=now)
    if retry_after is not None and retry_after > _MAX_SECONDS:
        retry_after = _MAX_SECONDS
    if hint is None:
        if retry_after is None:
            return None
        return RateHint(family="retry-after", retry_after=retry_after)
    return attrs.evolve(hint, retry_after=retry_after) if retry_after is not None else hint
