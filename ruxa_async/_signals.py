"""Signal handlers on the running loop, and the serve-until-stopped loop built on them.

:func:`signal_handlers` installs handlers for a block (``ruxa-async run``,
``ruxa-async gateway``); :func:`run_until_signal` runs one coroutine in the
foreground until it ends or SIGINT or SIGTERM arrives (``ruxa-async simulate``
and ``python -m ruxa_async.testing``). The module knows nothing of the SDK or of
the simulator, and imports nothing from either, so the simulator may use it and
still owe the SDK nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any

__all__ = ["run_until_signal", "signal_handlers"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signal_handlers(handlers: Mapping[signal.Signals, Callable[[], object]]) -> Iterator[None]:
    """Call ``handlers[sig]()`` on the running loop whenever ``sig`` arrives, within the block.

    A signal the loop cannot take a handler for (Windows, a thread other than
    the main one) is left as it was. The handlers are removed on the way out.
    """
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig, handler in handlers.items():
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


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
    task = loop.create_task(work)
    stopper = loop.create_task(stop.wait())
    try:
        with signal_handlers(dict.fromkeys(signals, stop.set)):
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        task.cancel()
        await asyncio.wait({task, stopper})
    if not task.cancelled():
        task.result()
