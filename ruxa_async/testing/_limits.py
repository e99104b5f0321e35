"""The token bucket behind the simulator's per-endpoint-class rate limits."""

from __future__ import annotations

import time

from ._config import RateLimit

__all__ = ["TokenBucket"]


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
