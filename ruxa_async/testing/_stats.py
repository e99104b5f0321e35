"""What the simulator counted: live counters and their frozen snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["FAULT_KINDS", "Counters", "SimStats"]

FAULT_KINDS = (
    "drop_after_create",
    "drop_before",
    "error_500_after_create",
    "error_500_before",
    "slow_reply",
)


def _int_keys(value: Mapping[Any, int]) -> dict[int, int]:
    return {int(k): int(n) for k, n in value.items()}


def _str_keys(value: Mapping[str, int]) -> dict[str, int]:
    return {str(k): int(n) for k, n in value.items()}


@attrs.frozen(kw_only=True)
class SimStats:
    """A snapshot of the simulator's counters.

    Request counts cover the API endpoints and result downloads, never ``/_sim``.

    Attributes:
        requests: every request to the create, query and file endpoints.
        creates: create requests received (whatever their fate).
        queries: query requests received.
        downloads: result file requests received.
        by_status: replies sent, by code (the envelope code for API replies,
            the HTTP status for files); a dropped connection is not a reply.
        rate_limited_create: 429 replies to creates.
        rate_limited_query: 429 replies to queries.
        faults: injected faults by kind (``drop_before``, ``error_500_before``,
            ``error_500_after_create``, ``drop_after_create``, ``slow_reply``).
        tasks_created: tasks created (including ambiguous ones).
        duplicate_creates: created tasks whose model and input (canonical JSON)
            had already been created before.
        ambiguous_created: created tasks whose create got no success reply: a
            500 or drop after creation, or a slow reply the client gave up on.
        early_requests: requests that arrived while a ``Retry-After`` deadline
            the server had issued for their endpoint class was still running.
        unauthorized: 401 replies.
        validation_errors: 422 replies to creates.
        insufficient_credits: 402 replies.
        credits_spent: credits charged, in total.
        credits_balance: the balance now, None when unlimited.
        callbacks_sent: callback POSTs attempted (duplicates and retries included).
        callbacks_delivered: callback POSTs answered with 2xx.
        callbacks_dropped: callbacks deliberately never sent (``drop``).
        callbacks_duplicated: callbacks deliberately sent twice (``duplicate``).
        callbacks_failed: callbacks given up after their retries failed.
        outages: times the API was taken down with the outage switch.
        outage_requests: requests read and dropped unanswered during a
            ``"drop"`` outage (not in ``requests``; a ``"refuse"`` outage
            refuses connections before any request can be counted).
    """

    requests: int = 0
    creates: int = 0
    queries: int = 0
    downloads: int = 0
    by_status: Mapping[int, int] = attrs.field(factory=dict, converter=_int_keys)
    rate_limited_create: int = 0
    rate_limited_query: int = 0
    faults: Mapping[str, int] = attrs.field(factory=dict, converter=_str_keys)
    tasks_created: int = 0
    duplicate_creates: int = 0
    ambiguous_created: int = 0
    early_requests: int = 0
    unauthorized: int = 0
    validation_errors: int = 0
    insufficient_credits: int = 0
    credits_spent: float = 0.0
    credits_balance: float | None = None
    callbacks_sent: int = 0
    callbacks_delivered: int = 0
    callbacks_dropped: int = 0
    callbacks_duplicated: int = 0
    callbacks_failed: int = 0
    outages: int = 0
    outage_requests: int = 0

    @property
    def rate_limited(self) -> int:
        """429 replies of both endpoint classes."""
        return self.rate_limited_create + self.rate_limited_query

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``by_status`` keys become strings)."""
        out = attrs.asdict(self)
        out["by_status"] = {str(k): n for k, n in sorted(self.by_status.items())}
        out["faults"] = dict(sorted(self.faults.items()))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SimStats:
        """Rebuild a snapshot from :meth:`to_dict` output (``GET /_sim/stats``)."""
        known = {f.name for f in attrs.fields(cls)}
        return cls(**{k: val for k, val in data.items() if k in known})


class Counters:
    """The live, mutable counters behind :class:`SimStats` (one event loop, no locks)."""

    __slots__ = (
        "ambiguous_created",
        "by_status",
        "callbacks_delivered",
        "callbacks_dropped",
        "callbacks_duplicated",
        "callbacks_failed",
        "callbacks_sent",
        "creates",
        "credits_spent",
        "downloads",
        "duplicate_creates",
        "early_requests",
        "faults",
        "insufficient_credits",
        "outage_requests",
        "outages",
        "queries",
        "rate_limited_create",
        "rate_limited_query",
        "requests",
        "tasks_created",
        "unauthorized",
        "validation_errors",
    )

    def __init__(self) -> None:
        self.requests = self.creates = self.queries = self.downloads = 0
        self.rate_limited_create = self.rate_limited_query = 0
        self.tasks_created = self.duplicate_creates = self.ambiguous_created = 0
        self.early_requests = self.unauthorized = self.validation_errors = 0
        self.insufficient_credits = 0
        self.credits_spent = 0.0
        self.callbacks_sent = self.callbacks_delivered = self.callbacks_dropped = 0
        self.callbacks_duplicated = self.callbacks_failed = 0
        self.outages = self.outage_requests = 0
        self.by_status: dict[int, int] = {}
        self.faults: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)

    def snapshot(self, balance: float | None) -> SimStats:
        """Freeze the counters into a :class:`SimStats`."""
        values = {name: getattr(self, name) for name in self.__slots__}
        return SimStats(credits_balance=balance, **values)
