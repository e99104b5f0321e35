"""An asyncio event loop on a virtual clock, for the limiter's and the outage gate's unit tests."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any

T0 = 1000.0


class _JumpingSelector(selectors.SelectSelector):
    """Never blocks: when nothing is ready it moves the loop's clock to the next timer."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise RuntimeError("deadlock: every task waits and no timer is pending")
        self._loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose time advances only when every task is blocked."""

    def __init__(self) -> None:
        self.now = T0
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def virtual_time(
    scenario: Callable[[VirtualTimeLoop], Coroutine[Any, Any, None]],
) -> Callable[[], None]:
    """Turn ``async def test_x(loop)`` into a plain test run on a fresh VirtualTimeLoop."""

    def test() -> None:
        loop = VirtualTimeLoop()
        try:
            loop.run_until_complete(scenario(loop))
        finally:
            loop.close()

    test.__name__ = test.__qualname__ = scenario.__name__
    test.__doc__ = scenario.__doc__
    return test
