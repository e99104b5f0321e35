"""The gateway's plain request-path counters (a room of their own, so that the view
protocol and the metrics both read them without importing each other)."""

from __future__ import annotations

from collections import Counter

__all__ = ["Counters"]


class Counters:
    """Plain counters bumped on the request path."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.denials: Counter[str] = Counter()
        self.created: Counter[str] = Counter()
        self.settled = 0
        self.ownership_refusals = 0
