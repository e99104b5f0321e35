"""Run one coroutine in the foreground until it ends or SIGINT or SIGTERM arrives.

The serve-until-stopped loop of the command lines (``ruxa-async simulate`` and
``python -m ruxa_async.testing``). It knows nothing of the SDK or of the
simulator, and imports nothing from either, so the simulator may use it and
still owe the SDK nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine, Iterable
from typing import Any

__all__ = ["run_until_signal"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run_until_signal(
    work: Coroutine[Any, Any, None], signals: Iterable[signal.Signals] = STOP_SIGNALS
) -> None:
    """Run ``work`` until it returns or one of ``signals`` arrives, then cancel it.

    Returns once ``work`` is over; an error it raised (say an ``OSError`` from
    binding a port) is raised here. Where the loop cannot take signal handlers
    (Windows, a thread), only ``work`` ending or a cancellation stops it. The
    handlers are removed again on the way out.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    task = loop.create_task(work)
    stopper = loop.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        task.cancel()
        for sig in installed:
            loop.remove_signal_handler(sig)
        await asyncio.wait({task, stopper})
    if not task.cancelled():
        task.result()
