"""How one batch runs (:class:`BatchOptions`) and what it tells on the way (:class:`ProgressEvent`).

Plain data shared by the batch (``_batch``), its intake (``_batch_intake``)
and the clients that build batches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

import attrs
from attrs import validators as v

from ._models import Job, JobOutcome, TaskState

__all__ = ["BatchOptions", "EventKind", "ProgressEvent"]

EventKind = Literal["submitted", "state", "finished"]


@attrs.frozen(kw_only=True)
class ProgressEvent:
    """A batch progress event: a job was submitted, its task changed state, or it finished."""

    kind: EventKind
    index: int
    job: Job
    task_id: str | None = None
    state: TaskState | None = None
    outcome: JobOutcome | None = None


@attrs.frozen(kw_only=True)
class BatchOptions:
    """How one batch runs; see :meth:`RuxaClient.as_completed` for each setting.

    ``validate`` None means the client's own setting.
    """

    max_pending: int = attrs.field(default=1000, validator=v.ge(1))
    timeout: float | None = None
    on_event: Callable[[ProgressEvent], None] | None = None
    before_create: Callable[[Job], Awaitable[None]] | None = None
    on_send: Callable[[Job], Awaitable[None]] | None = None
    on_unsent: Callable[[Job], None] | None = None
    validate: bool | None = None
