"""The simulated service's tasks: their records, the credit balance, and the draws that shape them.

A new task draws, from the task stream in this order, its duration (log-normal
around the model's median), whether it fails, its id, and when its callback
is delivered. Its state is never stored: it follows from the clock at query
time (see ``_records.phase_at``).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from ._config import ModelBehavior, SimConfig
from ._records import TaskRecord, upstream_name
from ._replies import dumps
from ._stats import Counters

__all__ = ["TaskStore"]

_canonical = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode


class TaskStore:
    """Every task the simulator created, in creation order, and the credits left.

    ``schedule_callback(due, task_id)`` is told when a task with a callback URL
    should have its callback delivered (monotonic time).
    """

    def __init__(
        self,
        config: SimConfig,
        counters: Counters,
        *,
        schedule_callback: Callable[[float, str], None],
        seed: str | None,
    ) -> None:
        self._config = config
        self._counters = counters
        self._schedule_callback = schedule_callback
        self._tasks: dict[str, TaskRecord] = {}
        self._seen: set[int] = set()
        self._rng = random.Random(seed)
        self.balance = config.credits
        self.epoch_offset = time.time() - time.monotonic()

    def apply(self, config: SimConfig) -> None:
        """Shape new tasks by ``config`` from now on (the balance is kept)."""
        self._config = config

    def reseed(self, seed: str | None) -> None:
        """Restart the task draws from ``seed``."""
        self._rng.seed(seed)

    def clear(self) -> None:
        """Forget every task and refill the balance to ``config.credits``."""
        self._tasks.clear()
        self._seen.clear()
        self.balance = self._config.credits

    def get(self, task_id: str) -> TaskRecord | None:
        """The record of ``task_id``, or None."""
        return self._tasks.get(task_id)

    def records(self) -> list[TaskRecord]:
        """Every record, in creation order."""
        return list(self._tasks.values())

    def charge(self, price: float) -> str | None:
        """Take ``price`` from the balance; the 402 message when it does not cover it."""
        balance = self.balance
        if balance is None:
            return None
        if balance < price:
            self._counters.insufficient_credits += 1
            return f"Insufficient credits: need {price:.2f}, balance {balance:.2f}"
        self.balance = balance - price
        return None

    def create(self, model: str, body: dict[str, Any], price: float) -> TaskRecord:
        """Create a task for a valid, paid-for ``body`` and plan its callback."""
        config = self._config
        counters = self._counters
        rng = self._rng
        behavior = config.models.get(model, config.default_behavior)
        now = time.monotonic()
        duration = self._draw_duration(behavior)
        fails = behavior.fail_rate > 0.0 and rng.random() < behavior.fail_rate
        outcome = "fail" if fails else "success"
        prefix = f"task_{upstream_name(model)}_{int((now + self.epoch_offset) * 1000)}_"
        task_id = f"{prefix}{rng.getrandbits(32):08x}"
        while task_id in self._tasks:
            task_id = f"{prefix}{rng.getrandbits(32):08x}"
        callback = body.get("callBackUrl")
        record = TaskRecord(
            task_id=task_id,
            model=model,
            param=dumps(body),
            callback_url=sys.intern(callback) if callback is not None else None,
            created_at=now,
            completes_at=now + duration,
            outcome=outcome,
            behavior=behavior,
            cost=price,
        )
        self._tasks[task_id] = record
        counters.tasks_created += 1
        counters.credits_spent += price
        key = hash((model, _canonical(body["input"])))
        if key in self._seen:
            counters.duplicate_creates += 1
        else:
            self._seen.add(key)
        if callback is not None:
            delivery = config.callbacks
            delay = delivery.delay_min
            if delivery.delay_max > delay:
                delay = rng.uniform(delay, delivery.delay_max)
            self._schedule_callback(now + duration + delay, task_id)
        return record

    def _draw_duration(self, behavior: ModelBehavior) -> float:
        median = behavior.median_seconds
        if median <= 0.0:
            return behavior.min_seconds
        drawn = median
        if behavior.sigma > 0.0:
            drawn = self._rng.lognormvariate(math.log(median), behavior.sigma)
        return max(behavior.min_seconds, drawn)
