"""Alerts: budget thresholds, spend-rate jumps and key failures, posted to a webhook.

Alerts are queued (bounded) and posted by one coroutine, so a slow alert
receiver never slows a request. Every alert is also logged at WARNING and kept
in :attr:`Alerter.sent` (the last few hundred) for inspection.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from ._config import AlertSettings

__all__ = ["Alerter", "SpendWatch"]

log = logging.getLogger("ruxa_async")

_EPOCH = 300.0  # spend is compared per 5-minute epoch
_COOLDOWN = 3600.0


class SpendWatch:
    """Flags a user whose spend in the current 5-minute epoch jumps far above their baseline.

    The baseline is an exponentially weighted mean of the user's earlier
    epochs (empty epochs count as zero). A jump is ``factor`` times the
    baseline and at least ``min_credits``; each user is flagged at most once
    an hour.
    """

    def __init__(self, settings: AlertSettings, clock: Callable[[], float] = time.time) -> None:
        self._factor = settings.spend_jump_factor
        self._min = settings.spend_jump_min_credits
        self._clock = clock
        self._users: dict[str, list[float]] = {}  # epoch start, epoch total, baseline, last alert

    def add(self, user: str, credits: float) -> tuple[float, float] | None:
        """Count ``credits`` for ``user``; ``(epoch spend, baseline)`` when that is a jump."""
        now = self._clock()
        state = self._users.get(user)
        if state is None:
            state = self._users[user] = [now, 0.0, 0.0, -_COOLDOWN]
        elapsed = now - state[0]
        if elapsed >= _EPOCH:
            epochs = int(elapsed // _EPOCH)
            baseline = 0.7 * state[2] + 0.3 * state[1]
            state[2] = baseline * (0.7 ** (epochs - 1))
            state[0] += epochs * _EPOCH
            state[1] = 0.0
        state[1] += credits
        threshold = max(self._factor * state[2], self._min)
        if state[1] >= threshold and now - state[3] >= _COOLDOWN:
            state[3] = now
            return state[1], state[2]
        return None


class Alerter:
    """Posts alert events as JSON to ``webhook_url`` (if set); started and closed by its owner."""

    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings
        self.sent: collections.deque[dict[str, Any]] = collections.deque(maxlen=500)
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(1000)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._fired: set[tuple[str, str, float]] = set()

    async def start(self) -> None:
        """Start the sender when a webhook is configured."""
        if self.settings.webhook_url:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=5.0), trust_env=False
            )
            self._task = asyncio.create_task(self._run(), name="ruxa gateway alerts")

    async def aclose(self) -> None:
        """Stop sending; queued alerts are dropped."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def alert(self, event: str, **fields: Any) -> None:
        """Record, log and queue one alert."""
        record = {"event": event, "time": time.time(), **fields}
        self.sent.append(record)
        log.warning("gateway alert: %s %s", event, json.dumps(fields, sort_keys=True))
        if self._task is not None:
            try:
                self._queue.put_nowait(record)
            except asyncio.QueueFull:
                log.warning("gateway: alert queue full; %s not posted", event)

    def budget(self, scope: str, period: str, used: float, limit: float | None) -> None:
        """Alert once per threshold crossed by ``used`` of ``limit`` in this period."""
        if not limit:
            return
        share = used / limit
        for threshold in self.settings.thresholds:
            mark = (scope, period, threshold)
            if share + 1e-9 >= threshold and mark not in self._fired:
                self._fired.add(mark)
                self.alert(
                    "budget_threshold",
                    scope=scope,
                    period=period,
                    threshold=threshold,
                    used=round(used, 6),
                    limit=limit,
                )

    async def _run(self) -> None:
        assert self._session is not None
        assert self.settings.webhook_url
        url = self.settings.webhook_url
        while True:
            record = await self._queue.get()
            for attempt in range(3):
                try:
                    async with self._session.post(url, json=record) as resp:
                        if resp.status < 300:
                            break
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.5 * 2**attempt)
