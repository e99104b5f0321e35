"""Request counters for one part of a client's work (a batch), kept exact under sharing.

The client counts everything it sends; a :class:`Tally` counts only the
requests made on behalf of one owner: its creates (every attempt) and the
checks of the tasks it tracks. The client bumps it on the one request path,
so a batch's report is exact even while other coroutines use the same client.
"""

from __future__ import annotations

__all__ = ["Tally"]


class Tally:
    """Requests sent, 429 replies and ambiguous create retries for one owner."""

    __slots__ = ("ambiguous_create_retries", "rate_limited", "requests_sent")

    def __init__(self) -> None:
        self.requests_sent = 0
        self.rate_limited = 0
        self.ambiguous_create_retries = 0

    def __repr__(self) -> str:
        return (
            f"Tally(requests_sent={self.requests_sent}, rate_limited={self.rate_limited}, "
            f"ambiguous_create_retries={self.ambiguous_create_retries})"
        )
