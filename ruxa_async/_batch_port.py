"""The seam between a batch and its client: what a batch needs, and the client's side of it.

A batch (``_batch.AsCompleted``) talks to its client only through a
:class:`BatchPort`: create a job's task, track and forget tasks, validate a
job, the callback URL, and how many creates may be under way. The client
builds a :class:`ClientPort` over its parts for each batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from ._core import ClientCore
from ._models import Job, TaskInfo, TaskState
from ._tally import Tally

__all__ = ["BatchPort", "ClientPort"]


class BatchPort(Protocol):
    """What a batch needs from its client; the client builds one for each batch."""

    @property
    def callback_url(self) -> str | None:
        """The callback URL the batch's tasks carry, if any."""
        ...

    @property
    def max_under_way(self) -> int:
        """How many creates may be under way at once: the rate controller's in-flight bound."""
        ...

    def validate(self, job: Job, wanted: bool | None) -> None:
        """Raise InvalidInputError if the catalogue rejects ``job``; None: the client decides."""
        ...

    async def create(
        self,
        job: Job,
        tally: Tally,
        sending: Callable[[], Awaitable[None]],
        failed: Callable[[BaseException], None],
    ) -> str:
        """Create ``job``'s task; ``sending`` is awaited as each attempt is about to be sent.

        ``failed`` is told the error of each attempt that failed.
        """
        ...

    def track(
        self,
        task_id: str,
        model: str | None,
        tally: Tally,
        on_state: Callable[[TaskState], None] | None,
    ) -> asyncio.Future[TaskInfo]:
        """Start watching a task; its checks are counted in ``tally``."""
        ...

    def forget(self, task_id: str) -> None:
        """Stop watching a task."""
        ...


class ClientPort:
    """A client's :class:`BatchPort`, over the client's parts."""

    __slots__ = ("_core",)

    def __init__(self, core: ClientCore) -> None:
        self._core = core

    @property
    def callback_url(self) -> str | None:
        return self._core.callback_url

    @property
    def max_under_way(self) -> int:
        return self._core.limiter.max_in_flight

    def validate(self, job: Job, wanted: bool | None) -> None:
        self._core.check_input(job.model, job.input, wanted)

    async def create(
        self,
        job: Job,
        tally: Tally,
        sending: Callable[[], Awaitable[None]],
        failed: Callable[[BaseException], None],
    ) -> str:
        core = self._core
        return await core.creator.create(
            job.model, job.input, core.callback_url, tally, sending, failed, job.key
        )

    def track(
        self,
        task_id: str,
        model: str | None,
        tally: Tally,
        on_state: Callable[[TaskState], None] | None,
    ) -> asyncio.Future[TaskInfo]:
        core = self._core
        core.require_open()
        return core.scheduler.track(
            task_id,
            model=model,
            callbacks=core.callback_url is not None,
            on_state=on_state,
            tally=tally,
        )

    def forget(self, task_id: str) -> None:
        self._core.scheduler.forget(task_id)
