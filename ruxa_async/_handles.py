"""TaskHandle: the caller's awaitable view of one task."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any

from ._errors import TaskFailedError, TaskTimeoutError
from ._models import TaskInfo, TaskState

__all__ = ["TaskHandle"]


class TaskHandle:
    """An awaitable for one submitted task.

    ``await handle`` returns the successful :class:`TaskInfo` or raises
    :class:`TaskFailedError`; :meth:`wait` adds a timeout. Cancelling or timing
    out an await stops *that caller's* wait only: the client keeps tracking the
    task, and other awaits of the same handle are unaffected.
    """

    __slots__ = ("_future", "_state", "_task_id")

    def __init__(
        self,
        task_id: str,
        future: asyncio.Future[TaskInfo],
        state: Callable[[str], TaskState | None],
    ) -> None:
        self._task_id = task_id
        self._future = future
        self._state = state

    def __repr__(self) -> str:
        return f"<TaskHandle {self._task_id} {self.state.value}>"

    @property
    def task_id(self) -> str:
        """The service's id for this task."""
        return self._task_id

    def done(self) -> bool:
        """True once the task's outcome is known (or tracking ended with an error)."""
        return self._future.done()

    @property
    def state(self) -> TaskState:
        """The last state seen: WAITING until the first check, then as the service reported."""
        future = self._future
        if future.done():
            if not future.cancelled() and future.exception() is None:
                return future.result().state
            return TaskState.UNKNOWN
        return self._state(self._task_id) or TaskState.WAITING

    @property
    def info(self) -> TaskInfo | None:
        """The terminal snapshot once known, else None."""
        future = self._future
        if future.done() and not future.cancelled() and future.exception() is None:
            return future.result()
        return None

    async def wait(
        self, timeout: float | None = None, *, raise_on_failure: bool = True
    ) -> TaskInfo:
        """Wait for the outcome, at most ``timeout`` seconds.

        Returns the terminal :class:`TaskInfo`. Raises :class:`TaskFailedError`
        when the task failed (unless ``raise_on_failure=False``, which returns the
        failed snapshot), :class:`TaskTimeoutError` on timeout, or the error that
        ended tracking (for example :class:`AuthenticationError`).
        """
        if timeout is None:
            info = await asyncio.shield(self._future)
        else:
            try:
                info = await asyncio.wait_for(asyncio.shield(self._future), timeout)
            except asyncio.TimeoutError:
                raise TaskTimeoutError(self._task_id, timeout) from None
        if raise_on_failure and info.failed:
            raise TaskFailedError(info.task_id, info.fail_code, info.fail_msg, info)
        return info

    def __await__(self) -> Generator[Any, None, TaskInfo]:
        return self.wait().__await__()
