"""The journal sink: what the batch reports becomes journal writes and progress counts.

The one place where the SDK's vocabulary (:class:`OutcomeStatus`, errors,
progress events) is turned into the runner's (:class:`JobStatus`). It also
remembers, for each job in flight, which line of the jobs file it came from:
a job's identity is its key, looked up here, not carried in its metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ._batch_options import ProgressEvent
from ._errors import NotSubmittedError, TaskLostError, TaskTimeoutError
from ._jobsfile import JobLine
from ._jobstatus import JobStatus
from ._journal import FileRecord, JobRef, Journal, JournalError
from ._models import Job, JobOutcome, OutcomeStatus
from ._progress import BatchCounters
from ._retry import is_ambiguous_create

__all__ = ["JournalSink", "error_text"]

log = logging.getLogger("ruxa_async")


def error_text(error: BaseException | None) -> str:
    """``ErrorType: message`` for results and the summary."""
    if error is None:
        return "unknown error"
    return f"{type(error).__name__}: {error}"


def classify(outcome: JobOutcome) -> JobStatus:
    """Where a job stands after the batch yielded its outcome."""
    status = outcome.status
    if status is OutcomeStatus.SUCCEEDED:
        return JobStatus.SUCCEEDED
    if status is OutcomeStatus.FAILED:
        return JobStatus.FAILED
    if status is OutcomeStatus.NOT_SUBMITTED:
        return JobStatus.NOT_SUBMITTED
    if isinstance(outcome.error, TaskLostError):
        return JobStatus.LOST
    if outcome.task_id is not None:
        return JobStatus.PENDING
    if outcome.error is not None and is_ambiguous_create(outcome.error):
        return JobStatus.AMBIGUOUS
    return JobStatus.NOT_SUBMITTED


class JournalSink:
    """Records each job's progress in the journal and the counters, on the event loop.

    ``redact`` masks secrets in error texts; ``on_abort`` is called with a
    journal error that reached an outcome (the run must stop).
    """

    def __init__(
        self,
        journal: Journal,
        counters: BatchCounters,
        *,
        timeout: float | None,
        redact: Callable[[str], str],
        on_abort: Callable[[BaseException], None],
    ) -> None:
        self._journal = journal
        self._counters = counters
        self._timeout = timeout
        self._redact = redact
        self._on_abort = on_abort
        self._refs: dict[str, JobRef] = {}

    def job(self, line: JobLine, task_id: str | None = None) -> Job:
        """The batch job for ``line``, remembered until its outcome is recorded."""
        self._refs[line.key] = JobRef(
            key=line.key, line=line.line, fingerprint=line.fingerprint, model=line.model
        )
        return Job(model=line.model, input=line.input, key=line.key, task_id=task_id)

    @property
    def in_flight(self) -> int:
        """Jobs handed to the batch whose outcome is not recorded yet."""
        return len(self._refs)

    def _ref(self, job: Job) -> JobRef:
        assert job.key is not None
        return self._refs[job.key]

    async def on_send(self, job: Job) -> None:
        """Journal the job as in flight (its create is about to be sent); once committed."""
        await self._journal.mark_submitting(self._ref(job))

    def on_unsent(self, job: Job) -> None:
        """An answer proved the create made nothing: the job is no longer in flight."""
        self._journal.unmark_submitting(self._ref(job), "not sent yet (the service refused it)")

    def on_event(self, event: ProgressEvent) -> None:
        """Record the task id of a job just created."""
        if event.kind != "submitted" or event.task_id is None or event.job.task_id is not None:
            return
        self._counters.submitted += 1
        self._journal.record_task_id(self._ref(event.job), event.task_id)

    def on_outcome(self, outcome: JobOutcome) -> JobStatus:
        """Record how the job ended; return its status."""
        assert outcome.job.key is not None
        ref = self._refs.pop(outcome.job.key)
        error = outcome.error
        c = self._counters
        c.finished += 1
        if isinstance(error, JournalError):
            self._on_abort(error)
            return JobStatus.NOT_SUBMITTED
        status = classify(outcome)
        if status is JobStatus.SUCCEEDED:
            assert outcome.info is not None
            c.succeeded += 1
            urls = outcome.info.result_urls
            self._journal.record_outcome(
                ref, status, task_id=outcome.info.task_id, result_urls=urls
            )
        elif status is JobStatus.FAILED:
            assert outcome.info is not None
            c.failed += 1
            info = outcome.info
            reason = info.fail_msg or "the task failed"
            if info.fail_code:
                reason += f" (failCode {info.fail_code})"
            self._journal.record_outcome(ref, status, task_id=info.task_id, error=reason)
        elif status is JobStatus.PENDING:
            c.errors += 1
            reason = self._redact(error_text(error))
            if isinstance(error, TaskTimeoutError) and self._timeout is not None:
                reason = f"gave up waiting after --timeout {self._timeout:g} s"
            self._journal.record_outcome(ref, status, task_id=outcome.task_id, error=reason)
        elif status is JobStatus.LOST:
            c.errors += 1
            self._journal.record_outcome(
                ref, status, task_id=outcome.task_id, error=self._redact(error_text(error))
            )
        elif status is JobStatus.AMBIGUOUS:
            c.ambiguous += 1
            self._journal.record_outcome(ref, status, error=self._redact(error_text(error)))
        elif outcome.status is OutcomeStatus.NOT_SUBMITTED:
            c.not_submitted += 1
            reason = error.reason if isinstance(error, NotSubmittedError) else str(error)
            self._journal.record_outcome(ref, status, error=f"not submitted: {reason}")
        else:
            c.errors += 1
            self._journal.record_outcome(ref, status, error=self._redact(error_text(error)))
        return status

    def record_file(self, record: FileRecord) -> None:
        """Record a result file's state."""
        self._journal.record_file(record)
