"""The poll scheduler's pending tasks: one small record each, ordered by a due-time heap.

A task rescheduled gets a new heap entry; its old entry, and the entry of a
task no longer pending, is skipped when it reaches the top (lazy deletion),
so rescheduling costs one push. Terminal callbacks for task ids not yet
tracked wait in :class:`EarlyCallbacks` for their create reply.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import math
from collections.abc import Callable, Mapping
from typing import Any

from ._models import TaskInfo, TaskState

__all__ = ["DueHeap", "EarlyCallbacks", "Pending"]


class Pending:
    """One task being watched: its future, its plan and what its checks have seen."""

    __slots__ = (
        "callbacks",
        "checks",
        "created_at",
        "due",
        "errors",
        "exploring",
        "future",
        "in_check",
        "model",
        "not_found",
        "on_state",
        "seq",
        "state",
        "tally",
        "task_id",
    )

    def __init__(
        self, task_id: str, model: str | None, future: asyncio.Future[TaskInfo], now: float
    ) -> None:
        self.task_id = task_id
        self.model = model
        self.future = future
        self.created_at = now
        self.due = now
        self.seq = 0
        self.checks = 0
        self.errors = 0
        self.not_found = 0
        self.callbacks = False
        self.in_check = False
        self.exploring = False
        self.state = TaskState.WAITING
        self.on_state: Callable[[TaskState], None] | None = None
        self.tally: Any = None  # the owner's request counters, handed to every check


class DueHeap:
    """Pending tasks by due time; :attr:`next_at` is when the earliest live one falls due."""

    __slots__ = ("_heap", "_seq", "next_at")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self.next_at = math.inf

    def __bool__(self) -> bool:
        return bool(self._heap)

    def push(self, entry: Pending, due: float) -> None:
        """Plan ``entry``'s next check at ``due`` (any earlier plan is dropped)."""
        self._seq += 1
        entry.seq = self._seq
        entry.due = due
        heapq.heappush(self._heap, (due, self._seq, entry.task_id))

    def pop_due(self, now: float, live: Mapping[str, Pending]) -> Pending | None:
        """Pop the most overdue live entry if it is due; else set :attr:`next_at`."""
        heap = self._heap
        while heap:
            due, seq, task_id = heap[0]
            entry = live.get(task_id)
            if entry is None or entry.seq != seq:
                heapq.heappop(heap)
                continue
            if due > now:
                self.next_at = due
                return None
            heapq.heappop(heap)
            return entry
        self.next_at = math.inf
        return None

    def clear(self) -> None:
        """Drop every plan."""
        self._heap.clear()


class EarlyCallbacks:
    """Terminal callbacks for task ids not (yet) tracked: the latest ``limit`` of them.

    A callback can beat the reply to its own create; the task is then resolved
    as soon as it is tracked. With ``max_age`` (seconds on ``clock``) a
    callback is kept that long at most: for callbacks the fleet publishes,
    most of which belong to other processes' tasks.
    """

    __slots__ = ("_clock", "_kept", "_limit", "_max_age")

    def __init__(
        self,
        limit: int = 4096,
        *,
        max_age: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._kept: collections.OrderedDict[str, tuple[float, TaskInfo]] = collections.OrderedDict()
        self._limit = limit
        self._max_age = max_age
        self._clock = clock if clock is not None and max_age is not None else None

    def keep(self, info: TaskInfo) -> None:
        """Keep ``info`` (the oldest kept goes past the limit or the age)."""
        kept = self._kept
        now = self._clock() if self._clock is not None else 0.0
        kept.pop(info.task_id, None)
        kept[info.task_id] = (now, info)
        if len(kept) > self._limit:
            kept.popitem(last=False)
        if self._clock is not None:
            assert self._max_age is not None
            while kept and next(iter(kept.values()))[0] < now - self._max_age:
                kept.popitem(last=False)

    def take(self, task_id: str) -> TaskInfo | None:
        """The kept callback of ``task_id`` (no longer kept), or None."""
        if not self._kept:
            return None
        entry = self._kept.pop(task_id, None)
        if entry is None:
            return None
        if self._clock is not None:
            assert self._max_age is not None
            if entry[0] < self._clock() - self._max_age:
                return None
        return entry[1]
