"""Where a job of a batch run stands: one vocabulary for the journal, the plan and results.

The journal stores the states of its state machine (:data:`JOURNAL_STATES`);
``results.jsonl`` and the summary use the same words, plus two that are only
ever derived when reporting (``invalid``, ``download_failed``). Adding a state
(a *lost* task, say) means adding a member here and its transitions below.
"""

from __future__ import annotations

import enum

__all__ = ["JOURNAL_STATES", "TRANSITIONS", "JobStatus"]


class JobStatus(str, enum.Enum):
    """Where one job stands.

    ``NOT_SUBMITTED``: provably nothing was created (never sent, stopped before
    sending, or rejected). ``SUBMITTING``: a create is about to be (or was)
    sent and no task id is known. ``PENDING``: the task exists and its end is
    not recorded yet. ``SUCCEEDED`` / ``FAILED``: the task ended (final, paid
    for, never sent again). ``AMBIGUOUS``: a create may have reached the
    service but no task id came back. ``INVALID`` and ``DOWNLOAD_FAILED`` are
    only reported, never journaled.
    """

    NOT_SUBMITTED = "not_submitted"
    SUBMITTING = "submitting"
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    AMBIGUOUS = "ambiguous"
    INVALID = "invalid"
    DOWNLOAD_FAILED = "download_failed"

    @property
    def is_final(self) -> bool:
        """True when the task ended: nothing about the job is ever sent again."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.DOWNLOAD_FAILED)

    @property
    def may_exist(self) -> bool:
        """True when a create may have reached the service without a known task id."""
        return self in (JobStatus.SUBMITTING, JobStatus.AMBIGUOUS)

    @property
    def label(self) -> str:
        """The status as people read it: ``not submitted``."""
        return self.value.replace("_", " ")


JOURNAL_STATES = frozenset(
    {
        JobStatus.NOT_SUBMITTED,
        JobStatus.SUBMITTING,
        JobStatus.PENDING,
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.AMBIGUOUS,
    }
)

# Which journal states a job may move to from each (documentation and tests;
# the journal trusts the run engine and does not enforce it row by row).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.NOT_SUBMITTED: frozenset({JobStatus.SUBMITTING, JobStatus.PENDING}),
    JobStatus.SUBMITTING: frozenset(
        {JobStatus.PENDING, JobStatus.AMBIGUOUS, JobStatus.NOT_SUBMITTED, JobStatus.SUBMITTING}
    ),
    JobStatus.AMBIGUOUS: frozenset({JobStatus.SUBMITTING}),
    JobStatus.PENDING: frozenset({JobStatus.PENDING, JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
}
