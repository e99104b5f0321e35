"""Stopping the SDK's own background tasks for good.

``asyncio.wait_for`` before Python 3.12 can lose a cancellation that races
its operation's result (it returns the result instead), and a library's own
timeout can swallow one the same way. A background loop whose cancellation
was lost carries on, and ``gather`` on it then waits forever. :func:`stop`
cancels again until every task has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

__all__ = ["stop"]

log = logging.getLogger("ruxa_async")

_RECHECK = 0.1


async def stop(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until each has ended (cancelled again if it carried on)."""
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=_RECHECK)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.debug("%s ended with %r", task.get_name(), task.exception())
