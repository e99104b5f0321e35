"""When to check a pending task next: learned durations, priors, the callback safety net.

A task's first check comes at a fraction of its model's expected duration
(learned from the service once a few tasks of the model finished, else the
catalogue's prior, else the policy's default). While nothing is learned a few
*explorers* are checked early, so the estimate comes from the service. Later
checks back off geometrically with the task's age. A task with callbacks is
checked only as a safety net, planned from how late that model's callbacks
have arrived (a high quantile of the recent ones) once enough were seen.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable

from ._config import PollPolicy
from ._models import TaskInfo
from ._pending import Pending

__all__ = ["LEARNED_AFTER", "PollPlanner"]

LEARNED_AFTER = 3  # observed durations before the estimate replaces the prior
_EXPLORERS = 3  # tasks of a still-unknown model that are checked early to learn its duration
_EXPLORE_FRACTION = 0.125  # an explorer's first check, as a fraction of the prior
CALLBACKS_LEARNED_AFTER = 8  # callbacks seen before their timing replaces the fixed grace
_CALLBACK_WINDOW = 128  # the most recent callback delays kept per model
_SPARE_SHARE = 0.25  # with checks of every pending task within this share of the query budget,
_SPARE_BACKOFF = 0.1  # ... a task's next check comes after this share of its age (not backoff)


class _DurationModel:
    """Running estimate of a model's typical duration: an EWMA of log-seconds."""

    __slots__ = ("count", "explorers", "mean_log")

    def __init__(self) -> None:
        self.count = 0
        self.mean_log = 0.0
        self.explorers = 0

    def observe(self, seconds: float) -> None:
        value = math.log(max(seconds, 0.01))
        self.count += 1
        weight = max(1.0 / self.count, 0.05)
        self.mean_log += weight * (value - self.mean_log)

    @property
    def median(self) -> float:
        return math.exp(self.mean_log)


class _CallbackDelays:
    """How long a model's callbacks took to arrive after tracking: a high quantile of the last few.

    The safety-net check of a task with callbacks is planned from this, so a lost
    callback costs a few typical durations instead of a fixed grace period.
    """

    __slots__ = ("_cached", "_next", "count", "samples")

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.count = 0
        self._next = 0
        self._cached: tuple[float, float] | None = None

    def observe(self, seconds: float) -> None:
        if len(self.samples) < _CALLBACK_WINDOW:
            self.samples.append(seconds)
        else:
            self.samples[self._next] = seconds
            self._next = (self._next + 1) % _CALLBACK_WINDOW
        self.count += 1
        if self.count <= CALLBACKS_LEARNED_AFTER or self.count % 8 == 0:
            self._cached = None  # re-sorted every few samples, not on every track

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the recent delays, or None while too few were seen."""
        if self.count < CALLBACKS_LEARNED_AFTER:
            return None
        if self._cached is None or self._cached[0] != q:
            ordered = sorted(self.samples)
            self._cached = (q, ordered[min(len(ordered) - 1, int(q * len(ordered)))])
        return self._cached[1]


class PollPlanner:
    """Plans check times per ``policy`` and learns from what the service and callbacks show.

    ``typical_seconds`` gives a model's prior duration (from the catalogue);
    ``rng`` draws the jitter.
    """

    def __init__(
        self,
        policy: PollPolicy,
        typical_seconds: Callable[[str | None], float | None] | None,
        rng: random.Random,
    ) -> None:
        self.policy = policy
        self._typical = typical_seconds
        self._rng = rng
        self._durations: dict[str | None, _DurationModel] = {}
        self._callback_delays: dict[str | None, _CallbackDelays] = {}

    def expected_seconds(self, model: str | None) -> float:
        """Expected duration of ``model``: learned, else the catalogue's, else the default."""
        if self.policy.first_check is not None:
            return self.policy.first_check
        learned = self._durations.get(model)
        if learned is not None and learned.count >= LEARNED_AFTER:
            return learned.median
        prior = self._typical(model) if self._typical is not None else None
        return prior if prior is not None else self.policy.default_duration

    def safety_net_seconds(self, model: str | None) -> float:
        """How long after tracking a task with callbacks its first safety-net check comes."""
        policy = self.policy
        delays = self._callback_delays.get(model)
        learned = delays.quantile(policy.callback_quantile) if delays is not None else None
        if learned is not None:
            return max(policy.callback_min_grace, policy.callback_quantile_factor * learned)
        expected = self.expected_seconds(model)
        return policy.callback_grace_factor * expected + policy.callback_grace

    def callback_quantile(self, model: str | None) -> float | None:
        """The learned quantile of ``model``'s callback delays (None: not learned yet)."""
        delays = self._callback_delays.get(model)
        return delays.quantile(self.policy.callback_quantile) if delays is not None else None

    def _jitter(self, delay: float) -> float:
        j = self.policy.jitter
        return delay * self._rng.uniform(1.0 - j, 1.0 + j) if j else delay

    def first_delay(self, entry: Pending) -> float:
        """Seconds from tracking ``entry`` to its first check (may make it an explorer)."""
        expected = self.expected_seconds(entry.model)
        if entry.callbacks:
            return self.safety_net_seconds(entry.model)
        if self.policy.explore and self.policy.first_check is None:
            model = self._durations.setdefault(entry.model, _DurationModel())
            if model.count < LEARNED_AFTER and model.explorers < _EXPLORERS:
                # Nothing learned yet: check a few tasks early (then geometrically)
                # so the estimate comes from the service, not from the prior.
                model.explorers += 1
                entry.exploring = True
                return max(self.policy.min_interval, expected * _EXPLORE_FRACTION)
        return self._jitter(
            max(self.policy.min_interval, expected * self.policy.first_check_factor)
        )

    def next_delay(
        self, entry: Pending, now: float, *, pending: int = 0, budget: float | None = None
    ) -> float:
        """Seconds from ``now`` to the next check of ``entry``, still running after a check.

        With ``budget`` (the queries per second the rate controller allows) and
        ``pending`` tasks polled: while checking every pending task at this
        interval would use at most a quarter of the budget (the end of a batch,
        a few long tasks), the interval grows by a tenth of the task's age
        instead of ``backoff``, so a task's end is seen sooner with queries
        that would go unused.
        """
        policy = self.policy
        if entry.callbacks:
            age = now - entry.created_at
            step = min(policy.max_interval, self.safety_net_seconds(entry.model))
            return self._jitter(min(policy.max_interval * 4, max(step, age / 2)))
        age = max(now - entry.created_at, policy.min_interval)
        delay = age * (policy.backoff - 1.0)
        if budget is not None and budget > 0.0:
            spare = max(age * _SPARE_BACKOFF, pending / (_SPARE_SHARE * budget))
            delay = min(delay, spare)
        return self._jitter(min(policy.max_interval, max(policy.min_interval, delay)))

    def error_delay(self, entry: Pending) -> float:
        """Seconds to wait after a failed check: full jitter under a doubling ceiling."""
        ceiling = min(self.policy.max_interval, self.policy.min_interval * 2.0**entry.errors)
        return self._rng.uniform(ceiling / 2, ceiling)

    def stop_exploring(self, entry: Pending) -> None:
        """``entry`` leaves (or never had) its model's explorer slot."""
        if entry.exploring:
            entry.exploring = False
            self._durations[entry.model].explorers -= 1

    def learn(self, entry: Pending, info: TaskInfo, clock: Callable[[], float]) -> bool:
        """``entry`` ended as ``info`` says; True when this completed its model's estimate.

        The duration is the service's (create to complete time) when it gives
        both, else the time since tracking.
        """
        model = self._durations.setdefault(entry.model, _DurationModel())
        self.stop_exploring(entry)
        if not info.succeeded and not info.failed:
            return False
        if info.create_time is not None and info.complete_time is not None:
            seconds = (info.complete_time - info.create_time).total_seconds()
        else:
            seconds = clock() - entry.created_at
        if seconds <= 0:
            return False
        model.observe(seconds)
        return model.count == LEARNED_AFTER

    def learn_callback(self, model: str | None, seconds: float) -> bool:
        """A callback of ``model`` arrived ``seconds`` after tracking; True when now learned."""
        delays = self._callback_delays.setdefault(model, _CallbackDelays())
        delays.observe(seconds)
        return delays.count == CALLBACKS_LEARNED_AFTER

    def earlier_first_checks(
        self, entries: Iterable[Pending], model: str | None, *, callbacks: bool, now: float
    ) -> list[tuple[Pending, float]]:
        """First checks of ``model`` planned from a prior that come earlier now it is learned.

        Returns ``(entry, new due time)`` pairs, for tasks with callbacks when
        ``callbacks`` (the safety net was learned), else for tasks without.
        """
        moves = []
        for entry in entries:
            if entry.model != model or entry.checks or entry.in_check:
                continue
            if entry.callbacks is not callbacks:
                continue
            # A task still waiting for its callback has outlived the fastest ones the estimate
            # was learned from, so its safety net counts from now, not from its creation.
            start = now if callbacks else entry.created_at
            due = start + self.first_delay(entry)
            if due < entry.due:
                moves.append((entry, due))
        return moves

    def learned_durations(self) -> dict[str, float]:
        """The learned median of every model seen to finish."""
        return {str(m): d.median for m, d in self._durations.items() if d.count}

    def learned_safety_nets(self) -> dict[str, float]:
        """The safety net of every model whose callback timing is learned."""
        return {
            str(m): self.safety_net_seconds(m)
            for m, d in self._callback_delays.items()
            if d.quantile(self.policy.callback_quantile) is not None
        }
