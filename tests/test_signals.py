"""run_until_signal: the serve-until-stopped loop shared by the command lines."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from ruxa_async._signals import run_until_signal


async def test_a_signal_cancels_the_work_and_returns() -> None:
    """The work is cancelled when one of the signals arrives, and the handler is removed."""
    before = signal.getsignal(signal.SIGUSR1)
    cancelled = asyncio.Event()

    async def work() -> None:
        os.kill(os.getpid(), signal.SIGUSR1)
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            cancelled.set()

    await run_until_signal(work(), signals=(signal.SIGUSR1,))
    assert cancelled.is_set()
    assert signal.getsignal(signal.SIGUSR1) == before


async def test_work_that_ends_by_itself_ends_the_wait() -> None:
    """Work that returns needs no signal; its error is raised to the caller."""
    finished = []

    async def work() -> None:
        finished.append(True)

    async def fails() -> None:
        raise OSError("address already in use")

    await run_until_signal(work(), signals=(signal.SIGUSR1,))
    assert finished == [True]
    with pytest.raises(OSError, match="already in use"):
        await run_until_signal(fails(), signals=(signal.SIGUSR1,))


async def test_cancelling_the_caller_cancels_the_work() -> None:
    """A cancelled caller is cancelled in turn (never swallowed), and the work with it."""
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def work() -> None:
        started.set()
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            cancelled.set()

    runner = asyncio.create_task(run_until_signal(work(), signals=(signal.SIGUSR1,)))
    await started.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert cancelled.is_set()
