"""Frozen domain objects: task states, task snapshots, jobs and their outcomes."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from ._config import Kind
from ._errors import NotSubmittedError

__all__ = [
    "BatchReport",
    "Job",
    "JobOutcome",
    "OutcomeStatus",
    "RequestEvent",
    "TaskInfo",
    "TaskState",
]


class TaskState(str, enum.Enum):
    """Where a task is in its life on the service.

    ``completed`` (seen in a Ruxa blog post) is read as :attr:`SUCCESS`. A state
    the SDK does not know is :attr:`UNKNOWN` and counts as still pending; the
    original text stays in :attr:`TaskInfo.raw_state`.
    """

    WAITING = "waiting"
    QUEUING = "queuing"
    GENERATING = "generating"
    SUCCESS = "success"
    FAIL = "fail"
    UNKNOWN = "unknown"

    @property
    def is_terminal(self) -> bool:
        """True for SUCCESS and FAIL."""
        return self is TaskState.SUCCESS or self is TaskState.FAIL

    @classmethod
    def parse(cls, value: object) -> TaskState:
        """Read a wire state, tolerating case, ``completed`` and unknown words."""
        if not isinstance(value, str):
            return cls.UNKNOWN
        text = value.strip().lower()
        return _STATE_ALIASES.get(text, cls.UNKNOWN)


_STATE_ALIASES: dict[str, TaskState] = {
    "waiting": TaskState.WAITING,
    "queuing": TaskState.QUEUING,
    "queueing": TaskState.QUEUING,
    "generating": TaskState.GENERATING,
    "success": TaskState.SUCCESS,
    "completed": TaskState.SUCCESS,
    "succeeded": TaskState.SUCCESS,
    "fail": TaskState.FAIL,
    "failed": TaskState.FAIL,
}


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value) if value is not None else {}


@attrs.frozen(kw_only=True)
class TaskInfo:
    """A snapshot of one task as the service last described it.

    Built only by the wire parser, from a query reply or a callback.
    """

    task_id: str
    state: TaskState
    raw_state: str = ""
    result_urls: tuple[str, ...] = ()
    fail_code: str | None = None
    fail_msg: str | None = None
    model: str | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None
    complete_time: datetime | None = None
    result: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_frozen_mapping, eq=False, repr=False
    )
    raw: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_frozen_mapping, eq=False, repr=False
    )

    @property
    def is_terminal(self) -> bool:
        """True when the task has finished, successfully or not."""
        return self.state.is_terminal

    @property
    def succeeded(self) -> bool:
        """True when the task finished successfully."""
        return self.state is TaskState.SUCCESS

    @property
    def failed(self) -> bool:
        """True when the task finished in failure."""
        return self.state is TaskState.FAIL


@attrs.frozen
class Job:
    """One generation to run in a batch: ``Job(model, input, key=..., metadata=..., task_id=...)``.

    ``key`` identifies the job in outcomes, journals and file names; when
    omitted, the batch uses the job's position. ``metadata`` is carried through
    to the outcome untouched. ``task_id``, when set, says the job's task was
    already created (by an earlier run, say): the batch re-attaches to it and
    never creates it again.
    """

    model: str
    input: Mapping[str, Any] = attrs.field(converter=_frozen_mapping)
    key: str | None = attrs.field(default=None, kw_only=True)
    metadata: Mapping[str, Any] | None = attrs.field(default=None, eq=False, kw_only=True)
    task_id: str | None = attrs.field(default=None, kw_only=True)


class OutcomeStatus(str, enum.Enum):
    """How a job in a batch ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ERROR = "error"
    NOT_SUBMITTED = "not_submitted"


@attrs.frozen(kw_only=True)
class JobOutcome:
    """What became of one job: its task id (if created) and the task or the error."""

    job: Job
    index: int
    task_id: str | None = None
    info: TaskInfo | None = None
    error: BaseException | None = attrs.field(default=None, eq=False)

    @property
    def status(self) -> OutcomeStatus:
        """SUCCEEDED, FAILED (task failed), ERROR (the SDK could not finish) or NOT_SUBMITTED."""
        if self.info is not None and self.info.succeeded:
            return OutcomeStatus.SUCCEEDED
        if self.info is not None and self.info.failed:
            return OutcomeStatus.FAILED
        if self.task_id is None and isinstance(self.error, NotSubmittedError):
            return OutcomeStatus.NOT_SUBMITTED
        return OutcomeStatus.ERROR

    @property
    def ok(self) -> bool:
        """True when the job's task succeeded."""
        return self.status is OutcomeStatus.SUCCEEDED

    @property
    def key(self) -> str:
        """The job's key, or its position in the batch as a string."""
        return self.job.key if self.job.key is not None else str(self.index)


@attrs.frozen(kw_only=True)
class BatchReport:
    """The result of :meth:`RuxaClient.run_batch`: outcomes in input order plus a summary."""

    outcomes: tuple[JobOutcome, ...]
    requests_sent: int
    rate_limited: int
    ambiguous_create_retries: int
    wall_time: float
    stop_reason: str | None = None

    @property
    def succeeded(self) -> int:
        """Jobs whose task succeeded."""
        return sum(1 for o in self.outcomes if o.status is OutcomeStatus.SUCCEEDED)

    @property
    def failed(self) -> int:
        """Jobs whose task failed, or that ended in an error after being submitted."""
        return sum(
            1 for o in self.outcomes if o.status in (OutcomeStatus.FAILED, OutcomeStatus.ERROR)
        )

    @property
    def not_submitted(self) -> int:
        """Jobs never sent (stopped by no credits, a bad key, a deadline or a spend cap)."""
        return sum(1 for o in self.outcomes if o.status is OutcomeStatus.NOT_SUBMITTED)


@attrs.frozen(kw_only=True)
class RequestEvent:
    """One request a client sent, as given to ``RuxaClient(on_request=...)``.

    ``sent_at`` is the ``time.monotonic()`` reading when the rate controller let
    the request go; ``replied_at`` the reading once its reply (or failure) was
    in hand, taken before a 429 closes the rate controller's gate, so a request
    sent because the gate had reopened always has ``sent_at`` at least the
    pause after the 429's ``replied_at``. ``code`` is the Ruxa code of the
    reply (the envelope's, else the HTTP status; 200 for success), None when
    no reply came (a dropped connection or a timeout).
    """

    kind: Kind
    path: str
    sent_at: float
    replied_at: float
    code: int | None

    @property
    def rate_limited(self) -> bool:
        """True for a 429 reply."""
        return self.code == 429
