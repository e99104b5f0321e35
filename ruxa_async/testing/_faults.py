"""Injected faults: dropped connections, 500s and slow replies, before or after the work.

Each fault is drawn from its own random stream (seeded from ``SimConfig.seed``)
with the probability ``SimConfig.faults`` gives it, and counted by kind. A
fault after a create leaves a task the client cannot know about: it is
counted as ``ambiguous_created``.
"""

from __future__ import annotations

import asyncio
import random

from aiohttp import web

from ._config import SimConfig
from ._replies import Replies
from ._stats import Counters

__all__ = ["FaultInjector"]

_SERVER_ERROR = "Internal server error"


class FaultInjector:
    """Draws and applies the configured faults; ``active`` is False when none can strike."""

    def __init__(
        self, config: SimConfig, counters: Counters, replies: Replies, seed: str | None
    ) -> None:
        self._counters = counters
        self._replies = replies
        self._rng = random.Random(seed)
        self._config = config
        self.active = config.faults.active

    def apply(self, config: SimConfig) -> None:
        """Draw with ``config``'s probabilities from now on."""
        self._config = config
        self.active = config.faults.active

    def reseed(self, seed: str | None) -> None:
        """Restart the fault draws from ``seed``."""
        self._rng.seed(seed)

    def _draw(self, probability: float) -> bool:
        return probability > 0.0 and self._rng.random() < probability

    def _drop(self, request: web.Request, kind: str) -> web.Response:
        self._counters.faults[kind] += 1
        transport = request.transport
        if transport is not None:
            transport.close()
        return web.Response()  # never sent: aiohttp finds the transport closed

    def before(self, request: web.Request) -> web.Response | None:
        """A fault that strikes before any work (a dropped connection or a 500), or None."""
        faults = self._config.faults
        if self._draw(faults.drop_before):
            return self._drop(request, "drop_before")
        if self._draw(faults.error_500_before):
            self._counters.faults["error_500_before"] += 1
            return self._replies.reply(500, _SERVER_ERROR)
        return None

    async def after_create(self, request: web.Request) -> web.Response | None:
        """A fault that strikes once the task exists, or None; a slow reply may lose the client."""
        counters = self._counters
        faults = self._config.faults
        if self._draw(faults.error_500_after_create):
            counters.ambiguous_created += 1
            counters.faults["error_500_after_create"] += 1
            return self._replies.reply(500, _SERVER_ERROR)
        if self._draw(faults.drop_after_create):
            counters.ambiguous_created += 1
            return self._drop(request, "drop_after_create")
        if await self.maybe_slow():
            transport = request.transport
            if transport is None or transport.is_closing():
                counters.ambiguous_created += 1
        return None

    async def maybe_slow(self) -> bool:
        """Sleep ``faults.slow_seconds`` when a slow reply is drawn; True if it was."""
        faults = self._config.faults
        if not self._draw(faults.slow_reply):
            return False
        self._counters.faults["slow_reply"] += 1
        await asyncio.sleep(faults.slow_seconds)
        return True
