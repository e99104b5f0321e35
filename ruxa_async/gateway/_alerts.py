"""Alerts: budget thresholds, spend-rate jumps and key failures, posted to a webhook.

Alerts are queued (bounded) and posted by one coroutine, so a slow alert
receiver never slows a request. Every alert is also logged at WARNING and kept
in :attr:`Alerter.sent` (the last few hundred) for inspection.

With several instances sharing Redis, a budget threshold (per scope, period
and threshold) is first claimed in Redis (``SET NX``) by a background task, so
exactly one instance sends it. The claim never delays a request; when Redis
does not answer, the alert is sent anyway (a duplicate is better than a missed
budget alert). Spend jumps are then judged in Redis over the fleet's spend
(``_redis_fleet.SharedSpendWatch``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from .._tasks import stop
from ._config import AlertSettings, Window
from ._policy import window_bounds

__all__ = ["COOLDOWN", "EPOCH", "Alerter", "SpendWatch"]

log = logging.getLogger("ruxa_async")

EPOCH = 300.0  # spend is compared per 5-minute epoch
COOLDOWN = 3600.0
_MARK_TTL = 40 * 86_400.0  # longer than any budget window; the mark names its period

Claim = Callable[[str, float], Awaitable[bool | None]]

_DAY = 86_400.0  # every budget window starts and ends at a UTC midnight
_WINDOWS: tuple[Window, ...] = ("day", "week", "month")
_LIFE = "life"  # the period of a scoped token's budget: it has no window


class SpendWatch:
    """Flags a user whose spend in the current 5-minute epoch jumps far above their baseline.

    The baseline is an exponentially weighted mean of the user's earlier
    epochs (empty epochs count as zero). A jump is ``factor`` times the
    baseline and at least ``min_credits``; each user is flagged at most once
    an hour.
    """

    def __init__(self, settings: AlertSettings, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._users: dict[str, list[float]] = {}  # epoch start, epoch total, baseline, last alert
        self.update(settings)

    def update(self, settings: AlertSettings) -> None:
        """Take the jump factor and minimum of a (re)loaded config."""
        self._factor = settings.spend_jump_factor
        self._min = settings.spend_jump_min_credits

    def add(self, user: str, credits: float) -> tuple[float, float] | None:
        """Count ``credits`` for ``user``; ``(epoch spend, baseline)`` when that is a jump."""
        now = self._clock()
        state = self._users.get(user)
        if state is None:
            state = self._users[user] = [now, 0.0, 0.0, -COOLDOWN]
        elapsed = now - state[0]
        if elapsed >= EPOCH:
            epochs = int(elapsed // EPOCH)
            baseline = 0.7 * state[2] + 0.3 * state[1]
            state[2] = baseline * (0.7 ** (epochs - 1))
            state[0] += epochs * EPOCH
            state[1] = 0.0
        state[1] += credits
        threshold = max(self._factor * state[2], self._min)
        if state[1] >= threshold and now - state[3] >= COOLDOWN:
            state[3] = now
            return state[1], state[2]
        return None


class Alerter:
    """Posts alert events as JSON to ``webhook_url`` (if set); started and closed by its owner.

    ``claim`` (several instances sharing state) decides which instance sends an
    alert that must go out once across all of them. ``clock`` (Unix seconds)
    tells when a budget window rolls over: the thresholds already alerted in
    windows that have ended are forgotten then, and so are those of a scoped
    token's life budget that saw no create since the previous rollover.
    """

    def __init__(
        self,
        settings: AlertSettings,
        claim: Claim | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._lowest = min(settings.thresholds, default=math.inf)  # the first threshold crossed
        self.sent: collections.deque[dict[str, Any]] = collections.deque(maxlen=500)
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(1000)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._clock = clock
        self._day = math.floor(clock() / _DAY)  # the UTC day of the last rollover seen
        # (scope, period) -> the thresholds alerted, and the day of its latest budget check
        self._fired: dict[tuple[str, str], tuple[set[float], int]] = {}
        self._claim = claim
        self._claims: set[asyncio.Task[None]] = set()
        self._started = False

    async def start(self) -> None:
        """Start the sender when a webhook is configured."""
        self._started = True
        self._start_sender()

    def _start_sender(self) -> None:
        if self.settings.webhook_url:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=5.0), trust_env=False
            )
            self._task = asyncio.create_task(self._run(), name="ruxa gateway alerts")

    async def _stop_sender(self) -> None:
        task, session, self._task, self._session = self._task, self._session, None, None
        if task is not None:
            await stop([task])
        if session is not None:
            await session.close()

    def update(self, settings: AlertSettings) -> None:
        """Take the thresholds and webhook of a (re)loaded config (a new webhook gets new posts)."""
        old, self.settings = self.settings.webhook_url, settings
        self._lowest = min(settings.thresholds, default=math.inf)
        if not self._started or old == settings.webhook_url:
            return
        stopping = asyncio.get_running_loop().create_task(self._stop_sender())
        self._claims.add(stopping)
        stopping.add_done_callback(self._claims.discard)
        self._start_sender()

    async def aclose(self) -> None:
        """Stop sending; queued alerts and claims under way are dropped."""
        self._started = False
        await stop(self._claims)
        await self._stop_sender()

    async def idle(self) -> None:
        """Return once every claim under way is decided and every queued alert was posted."""
        while self._claims:
            await asyncio.gather(*self._claims, return_exceptions=True)
        if self._task is not None:
            await self._queue.join()

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
        now = self._clock()
        day = math.floor(now / _DAY)
        if day != self._day:
            self._roll_over(now, day)
        marks = self._fired.get((scope, period))
        share = used / limit
        if marks is None and share + 1e-9 < self._lowest:
            return  # below every threshold, none alerted yet: nothing to send or to mark
        fired = set() if marks is None else marks[0]
        for threshold in self.settings.thresholds:
            if share + 1e-9 >= threshold and threshold not in fired:
                fired.add(threshold)
                self.once(
                    f"budget:{scope}:{period}:{threshold:g}",
                    _MARK_TTL,
                    "budget_threshold",
                    scope=scope,
                    period=period,
                    threshold=threshold,
                    used=round(used, 6),
                    limit=limit,
                )
        if fired:
            self._fired[(scope, period)] = (fired, day)

    @property
    def marked_budgets(self) -> int:
        """How many budgets (scope and period) hold thresholds already alerted."""
        return len(self._fired)

    def _roll_over(self, now: float, day: int) -> None:
        """Forget the marks of ended windows, and of life budgets unchecked since the last one."""
        current = {window_bounds(window, now)[0] for window in _WINDOWS}
        self._fired = {
            key: (fired, seen)
            for key, (fired, seen) in self._fired.items()
            if key[1] in current or (key[1] == _LIFE and seen >= self._day)
        }
        self._day = day

    def spend_jump(self, user: str, spend: float, baseline: float) -> None:
        """Alert that ``user``'s spend jumped (once per cool-down hour across instances)."""
        self.once(
            f"spend_jump:{user}", COOLDOWN, "spend_jump", user=user, spend=spend, baseline=baseline
        )

    def once(self, mark: str, ttl: float, event: str, **fields: Any) -> None:
        """:meth:`alert`, sent by one instance only when several share state (claim ``mark``
        for ``ttl`` seconds in the background first; never waits)."""
        if self._claim is None:
            self.alert(event, **fields)
            return
        task = asyncio.get_running_loop().create_task(self._claimed(mark, ttl, event, fields))
        self._claims.add(task)
        task.add_done_callback(self._claims.discard)

    async def _claimed(self, mark: str, ttl: float, event: str, fields: dict[str, Any]) -> None:
        assert self._claim is not None
        won = await self._claim(mark, ttl)
        if won is False:
            log.debug("gateway: alert %s sent by another instance", mark)
            return
        if won is None:
            log.warning("gateway: shared state away; alert %s sent without the fleet claim", mark)
        self.alert(event, **fields)

    async def _run(self) -> None:
        assert self._session is not None
        assert self.settings.webhook_url
        url = self.settings.webhook_url
        while True:
            record = await self._queue.get()
            try:
                for attempt in range(3):
                    try:
                        async with self._session.post(url, json=record) as resp:
                            if resp.status < 300:
                                break
                    except (aiohttp.ClientError, asyncio.TimeoutError):
                        pass
                    await asyncio.sleep(0.5 * 2**attempt)
            finally:
                self._queue.task_done()
