"""What the simulator counted: live counters and their frozen snapshot."""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

__all__ = ["FAULT_KINDS", "Counters", "RateSeries", "SeriesRecorder", "SimStats"]

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


def _ints(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(n) for n in value)


@attrs.frozen(kw_only=True)
class RateSeries:
    """Requests per endpoint class over time, in ``bucket_seconds`` buckets (100 ms).

    Bucket ``i`` covers monotonic time ``[start + i * bucket_seconds, start +
    (i + 1) * bucket_seconds)`` of the simulator's process (``time.monotonic()``
    is system-wide on Linux, so another process can line it up with its own).
    ``*_ok`` counts requests the rate limit let through, ``*_429`` those it
    refused; a 401 is neither. Only the most recent hour is kept.
    """

    bucket_seconds: float = 0.1
    start: float | None = None
    create_ok: tuple[int, ...] = attrs.field(default=(), converter=_ints)
    create_429: tuple[int, ...] = attrs.field(default=(), converter=_ints)
    query_ok: tuple[int, ...] = attrs.field(default=(), converter=_ints)
    query_429: tuple[int, ...] = attrs.field(default=(), converter=_ints)

    def resample(self, seconds: float = 1.0) -> list[tuple[float, int, int, int, int]]:
        """Rows ``(start, create_ok, create_429, query_ok, query_429)`` per ``seconds``."""
        if self.start is None:
            return []
        per = max(1, round(seconds / self.bucket_seconds))
        columns = (self.create_ok, self.create_429, self.query_ok, self.query_429)
        rows = []
        for first in range(0, len(self.create_ok), per):
            a, b, c, d = (sum(col[first : first + per]) for col in columns)
            rows.append((self.start + first * self.bucket_seconds, a, b, c, d))
        return rows

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the columns."""
        return attrs.asdict(self, retain_collection_types=False)


def _series(value: RateSeries | Mapping[str, Any]) -> RateSeries:
    return value if isinstance(value, RateSeries) else RateSeries(**value)


class SeriesRecorder:
    """The live columns behind :class:`RateSeries`: four ``array('I')``, one slot per bucket."""

    __slots__ = ("_columns", "_first", "_keep")

    BUCKET = 0.1

    def __init__(self, keep: int = 36_000) -> None:
        self._keep = keep
        self._first = 0
        self._columns: tuple[array[int], ...] = tuple(array("I") for _ in range(4))

    def note(self, now: float, kind: int, limited: bool) -> None:
        """Count one request of endpoint class ``kind`` (0 create, 1 query) at ``now``."""
        index = math.floor(now / self.BUCKET)
        columns = self._columns
        size = len(columns[0])
        if size == 0 or index - self._first >= size + self._keep:
            for column in columns:
                del column[:]
            self._first, size = index, 0
        offset = index - self._first
        if offset < 0:
            offset = 0
        if offset >= size:
            zeros = array("I", [0]) * (offset + 1 - size)
            for column in columns:
                column.extend(zeros)
            size = offset + 1
            if size > self._keep + self._keep // 8:
                cut = size - self._keep
                for column in columns:
                    del column[:cut]
                self._first += cut
                offset -= cut
        columns[2 * kind + int(limited)][offset] += 1

    def snapshot(self) -> RateSeries:
        """Freeze the columns."""
        columns = self._columns
        if not columns[0]:
            return RateSeries(bucket_seconds=self.BUCKET)
        return RateSeries(
            bucket_seconds=self.BUCKET,
            start=self._first * self.BUCKET,
            create_ok=columns[0],
            create_429=columns[1],
            query_ok=columns[2],
            query_429=columns[3],
        )


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
        series: create and query requests let through or refused with 429,
            per 100 ms (:class:`RateSeries`), for plotting rates over time.
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
    series: RateSeries = attrs.field(factory=RateSeries, converter=_series)

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
        "series",
        "tasks_created",
        "unauthorized",
        "validation_errors",
    )

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Set every counter back to zero."""
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
        self.series = SeriesRecorder()

    def snapshot(self, balance: float | None) -> SimStats:
        """Freeze the counters into a :class:`SimStats`."""
        values = {name: getattr(self, name) for name in self.__slots__ if name != "series"}
        return SimStats(credits_balance=balance, series=self.series.snapshot(), **values)
