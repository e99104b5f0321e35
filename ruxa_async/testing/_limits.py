"""The token bucket behind the simulator's per-endpoint-class rate limits, and its headers.

The headers describe the bucket in one of three families, written from their
specifications (not from any client's parser):

* ``"ietf"``: draft-ietf-httpapi-ratelimit-headers (08 and later) structured
  fields: ``RateLimit-Policy: "bucket";q=<quota>;w=<window>`` and
  ``RateLimit: "bucket";r=<remaining>;t=<reset>``.
* ``"ietf-legacy"``: the drafts' earlier fields ``RateLimit-Limit: <quota>,
  <quota>;w=<window>``, ``RateLimit-Remaining``, ``RateLimit-Reset``.
* ``"x-ratelimit"``: ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
  ``X-RateLimit-Reset`` (delta seconds); the window is not published.

For a bucket of ``rate`` per second and ``burst`` tokens the quota is
``rate * window`` requests per ``window = max(1, ceil(burst / rate))``
seconds; remaining is the whole tokens left and reset the whole seconds
until the bucket is full again (at least 1 when it is empty).
"""

from __future__ import annotations

import math
import time

from ._config import RateLimit

__all__ = ["RATE_HEADER_FAMILIES", "TokenBucket"]

RATE_HEADER_FAMILIES = ("none", "ietf", "ietf-legacy", "x-ratelimit")


class TokenBucket:
    """``per_second`` refill up to ``burst`` tokens; a rejected request takes no token."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, limit: RateLimit, tokens: float | None = None) -> None:
        self.rate = limit.per_second
        self.burst = float(limit.burst)
        self.tokens = self.burst if tokens is None else min(tokens, self.burst)
        self.stamp = time.monotonic()

    def take(self, now: float) -> float:
        """Take a token at monotonic ``now``: 0.0 if granted, else seconds until one is."""
        tokens = min(self.tokens + (now - self.stamp) * self.rate, self.burst)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate

    def headers(self, family: str) -> dict[str, str]:
        """The bucket's state as of its last :meth:`take`, in header ``family`` (or none)."""
        if family == "none":
            return {}
        window = max(1, math.ceil(self.burst / self.rate))
        quota = max(1, round(self.rate * window))
        remaining = max(0, math.floor(self.tokens))
        reset = math.ceil((self.burst - self.tokens) / self.rate - 1e-9)
        if remaining == 0:
            reset = max(1, reset)
        if family == "ietf":
            return {
                "RateLimit-Policy": f'"bucket";q={quota};w={window}',
                "RateLimit": f'"bucket";r={remaining};t={reset}',
            }
        if family == "ietf-legacy":
            return {
                "RateLimit-Limit": f"{quota}, {quota};w={window}",
                "RateLimit-Remaining": str(remaining),
                "RateLimit-Reset": str(reset),
            }
        return {
            "X-RateLimit-Limit": str(quota),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset),
        }
