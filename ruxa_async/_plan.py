"""Planning a run from the jobs file and the journal, streamed.

:func:`survey` reads the whole jobs file once before anything is sent: every
line must parse, keys must be unique, and a job the journal knows must still
ask for the same thing. It also counts what a run would do with each job
(:class:`Survey`), which is all ``--dry-run`` prints. :class:`Planner` then
streams the file again, a few hundred lines at a time, looking each batch of
keys up in the journal, and says where each job stands (:class:`Step`).
Neither holds a row per job beyond the jobs file's digests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from ._download import file_name
from ._jobsfile import JobLine, JobsFileError, JobsSummary, digest, read_jobs, scan_jobs
from ._jobstatus import JobStatus
from ._journal import FileRecord, JobRecord
from ._journal_reader import JournalReader
from ._run_options import RunOptions
from .catalog import estimate_cost

__all__ = ["MissingFile", "Planner", "Step", "Survey", "survey"]

BATCH = 256


@attrs.frozen(kw_only=True)
class MissingFile:
    """A result file of a succeeded job that is not (completely) on disk."""

    index: int
    url: str
    dest: Path


@attrs.frozen(kw_only=True)
class Step:
    """Where one job of the file stands as this run starts.

    ``status`` is the journal's state (``NOT_SUBMITTED`` when it has none) or
    ``INVALID``; ``duplicate`` marks a job identical to an earlier line, which
    shares that line's task.
    """

    job: JobLine
    status: JobStatus
    task_id: str | None = None
    duplicate: bool = False
    missing: tuple[MissingFile, ...] = ()

    def sends(self, resubmit_ambiguous: bool) -> bool:
        """True when this run creates a task for the job."""
        if self.duplicate or self.status is JobStatus.INVALID:
            return False
        if self.status.may_exist:
            return resubmit_ambiguous
        return self.status is JobStatus.NOT_SUBMITTED


@attrs.define(kw_only=True)
class Survey:
    """What a run of the file would do, job by job, counted."""

    jobs: JobsSummary = attrs.field(factory=JobsSummary)
    done: int = 0
    reattach: int = 0
    send: int = 0
    ambiguous: int = 0
    resubmit: int = 0
    send_by_model: Counter[str] = attrs.field(factory=Counter)
    send_cost: float = 0.0
    send_unpriced: int = 0

    @property
    def todo(self) -> int:
        """Jobs this run has to finish: to send, to re-send and to re-attach."""
        return self.send + self.resubmit + self.reattach


def _status(record: JobRecord | None) -> JobStatus:
    return JobStatus.NOT_SUBMITTED if record is None else record.state


def survey(options: RunOptions, reader: JournalReader) -> Survey:
    """Check the whole jobs file against itself and the journal; count what a run would do.

    Raises :class:`JobsFileError` naming the first bad line, a reused key or
    a job that changed since the journal recorded it. Blocking: run it in a
    worker thread.
    """
    result = Survey()

    def check(batch: Sequence[tuple[JobLine, bool]]) -> None:
        records = reader.jobs(job.key for job, _ in batch)
        for job, counted in batch:
            record = records.get(job.key)
            known = record is not None and record.state is not JobStatus.NOT_SUBMITTED
            if known and record is not None and record.fingerprint != job.fingerprint:
                raise JobsFileError(
                    options.jobs,
                    f"job {job.key!r} changed since the journal {options.journal} recorded "
                    "it (its model or input differs); restore it, give it a new id, or use "
                    "another --journal",
                    line=job.line,
                )
            if counted or known:
                _count(result, job, _status(record), options)

    result.jobs = scan_jobs(
        options.jobs, default_model=options.default_model, dedupe=options.dedupe, check=check
    )
    return result


def _count(result: Survey, job: JobLine, status: JobStatus, options: RunOptions) -> None:
    if status.is_final:
        result.done += 1
    elif status is JobStatus.PENDING:
        result.reattach += 1
    elif status.may_exist and not options.resubmit_ambiguous:
        result.ambiguous += 1
    else:
        if status.may_exist:
            result.resubmit += 1
        else:
            result.send += 1
        result.send_by_model[job.model] += 1
        cost = estimate_cost(job.model, job.input)
        if cost is None:
            result.send_unpriced += 1
        else:
            result.send_cost += cost


class Planner:
    """Streams the jobs file as :class:`Step` batches, looking each batch up in the journal.

    ``shared`` holds the digests of the jobs that occur more than once (from
    the full check): only those are remembered while streaming, so the plan
    keeps nothing per distinct job. Blocking: call :meth:`next_batch` from a
    worker thread, one call at a time.
    """

    def __init__(self, options: RunOptions, reader: JournalReader, shared: set[bytes]) -> None:
        self._options = options
        self._reader = reader
        self._shared = shared
        self._lines = read_jobs(options.jobs, default_model=options.default_model)
        self._seen: set[bytes] = set()

    def close(self) -> None:
        """Stop reading the file."""
        self._lines.close()

    def __iter__(self) -> Iterator[list[Step]]:
        while batch := self.next_batch():
            yield batch

    def next_batch(self) -> list[Step]:
        """The next few hundred steps, in file order; empty at the end of the file."""
        lines: list[JobLine] = []
        for job in self._lines:
            lines.append(job)
            if len(lines) >= BATCH:
                break
        if not lines:
            return []
        records = self._reader.jobs(job.key for job in lines)
        done = [k for k, r in records.items() if r.state is JobStatus.SUCCEEDED]
        files = self._reader.files(done) if done and self._options.download else {}
        steps = []
        for job in lines:
            record = records.get(job.key)
            steps.append(self._step(job, record, files))
        return steps

    def _step(
        self, job: JobLine, record: JobRecord | None, files: dict[str, list[FileRecord]]
    ) -> Step:
        if job.problem() is not None:
            return Step(job=job, status=JobStatus.INVALID)
        status = _status(record)
        duplicate = False
        if self._options.dedupe and self._shared:
            fp = digest(job)
            if fp in self._shared:
                duplicate = fp in self._seen
                self._seen.add(fp)
        if record is None or status is JobStatus.NOT_SUBMITTED:
            return Step(job=job, status=JobStatus.NOT_SUBMITTED, duplicate=duplicate)
        missing = self._missing(job.key, record, files) if status is JobStatus.SUCCEEDED else ()
        return Step(job=job, status=status, task_id=record.task_id, missing=missing)

    def _missing(
        self, key: str, record: JobRecord, files: dict[str, list[FileRecord]]
    ) -> tuple[MissingFile, ...]:
        if not self._options.download:
            return ()
        sizes = {f.index: f.size for f in files.get(key, ())}
        missing = []
        for index, url in enumerate(record.result_urls):
            dest = self._options.out / file_name(key, index, url)
            try:
                size: int | None = dest.stat().st_size
            except OSError:
                size = None
            if size is None or sizes.get(index) not in (None, size):
                missing.append(MissingFile(index=index, url=url, dest=dest))
        return tuple(missing)
