"""The end of a run: ``results.jsonl``, ``index.html`` and the summary, streamed.

The jobs file is read once more, a few hundred lines at a time, each batch
looked up in the journal: one ``results.jsonl`` line per job in file order, one
gallery tile per job, and the problems grouped by (status, reason) so that a
rejected key is one line of the summary, not one per job.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import attrs

from ._download import file_name
from ._gallery import Gallery
from ._jobsfile import JobLine, JobsSummary, digest, read_jobs
from ._jobstatus import JobStatus
from ._journal import FileRecord, JobRecord
from ._journal_reader import JournalReader
from ._plan import BATCH
from ._progress import BatchCounters, print_summary
from ._run_options import RunOptions

__all__ = ["AMBIGUOUS_TEXT", "Report", "credits_text", "print_report", "write_report"]

MAX_PROBLEMS = 10
AMBIGUOUS_TEXT = (
    "a create request may have reached Ruxa but no task id was recorded; not sent again "
    "to avoid paying twice (run with --resubmit-ambiguous to send it again)"
)
_SHOWN = (
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.DOWNLOAD_FAILED,
    JobStatus.INVALID,
    JobStatus.NOT_SUBMITTED,
    JobStatus.AMBIGUOUS,
    JobStatus.PENDING,
)


def credits_text(value: float) -> str:
    """Credits as people read them: ``18``, ``4.5``, ``3,982,148``."""
    return f"{value:,.2f}".rstrip("0").rstrip(".")


@attrs.define(kw_only=True)
class Report:
    """How many jobs ended in each status, and the grouped problems to print."""

    tally: Counter[JobStatus] = attrs.field(factory=Counter)
    problems: list[str] = attrs.field(factory=list)
    total: int = 0

    @property
    def complete(self) -> bool:
        """True when every job of the file succeeded."""
        return self.tally[JobStatus.SUCCEEDED] == self.total


class _Problems:
    def __init__(self) -> None:
        self.where: dict[tuple[JobStatus, str], list[str]] = {}
        self.counts: Counter[tuple[JobStatus, str]] = Counter()

    def add(self, status: JobStatus, reason: str, job: JobLine) -> None:
        reason = reason.removeprefix("not submitted: ")
        group = (status, reason)
        self.counts[group] += 1
        if group not in self.where and len(self.where) >= MAX_PROBLEMS:
            return
        where = self.where.setdefault(group, [])
        if len(where) < 3:
            where.append(f"line {job.line} ({job.key})")

    def lines(self) -> list[str]:
        lines = []
        for (status, reason), where in self.where.items():
            n = self.counts[(status, reason)]
            shown = ", ".join(where) + (", ..." if n > len(where) else "")
            head = f"{n} jobs {status.label}" if n > 1 else status.label
            lines.append(f"  {head}: {reason} [{shown}]" if reason else f"  {head} [{shown}]")
        return lines


def write_report(
    options: RunOptions, reader: JournalReader, jobs: JobsSummary, not_sent: str
) -> Report:
    """Write ``results.jsonl`` (and ``index.html``); blocking, run it in a worker thread.

    ``not_sent`` is the reason given for jobs this run did not submit.
    """
    report = Report()
    problems = _Problems()
    rows = _Rows(options, reader, jobs, not_sent)
    final = options.out / "results.jsonl"
    part = options.out / ".results.jsonl.part"
    title = "ruxa-async run" + (" (simulated)" if options.simulate else "")
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(part.open("w", encoding="utf-8"))
        gallery = stack.enter_context(Gallery(options.out, title)) if options.gallery else None
        lines = stack.enter_context(
            contextlib.closing(read_jobs(options.jobs, default_model=options.default_model))
        )
        while batch := _take(lines):
            for job, entry in rows.entries(batch):
                status = JobStatus(entry["status"])
                report.total += 1
                report.tally[status] += 1
                if status is not JobStatus.SUCCEEDED:
                    problems.add(status, options.redact(str(entry["error"] or "")), job)
                out.write(json.dumps(entry, ensure_ascii=False) + "\n")
                if gallery is not None:
                    gallery.add(entry, job.input)
    os.replace(part, final)
    report.problems = problems.lines()
    return report


def _take(lines: Iterator[JobLine]) -> list[JobLine]:
    batch: list[JobLine] = []
    for job in lines:
        batch.append(job)
        if len(batch) >= BATCH:
            break
    return batch


class _Rows:
    """Turns journal records into ``results.jsonl`` entries, batch by batch."""

    def __init__(
        self, options: RunOptions, reader: JournalReader, jobs: JobsSummary, not_sent: str
    ) -> None:
        self._options = options
        self._reader = reader
        self._shared = jobs.shared
        self._primaries: dict[bytes, str] = {}
        self._not_sent = not_sent

    def entries(self, batch: list[JobLine]) -> list[tuple[JobLine, dict[str, Any]]]:
        own = self._reader.jobs(job.key for job in batch)
        sources: list[str | None] = []
        for job in batch:
            sources.append(self._source(job, own.get(job.key)))
        wanted = {s for s in sources if s is not None and s not in own}
        records = {**own, **self._reader.jobs(wanted)} if wanted else own
        keys = {s if s is not None else j.key for s, j in zip(sources, batch, strict=True)}
        files = self._reader.files(keys) if self._options.download else {}
        entries = []
        for job, source in zip(batch, sources, strict=True):
            entry: dict[str, Any] = {"key": job.key, "line": job.line, "model": job.model}
            if job.metadata is not None:
                entry["metadata"] = job.metadata
            problem = job.problem()
            if problem is not None:
                where = (
                    f"input.{problem.field}: " if problem.field not in ("model", "input") else ""
                )
                entry.update(
                    status=JobStatus.INVALID.value,
                    task_id=None,
                    state=None,
                    result_urls=[],
                    files=[],
                    error=f"line {job.line}: {where}{problem}",
                    field=problem.field,
                )
            else:
                key = job.key
                if source is not None:
                    key = source
                    entry["same_as"] = source
                entry.update(self._from_record(key, records.get(key), files.get(key, [])))
            entries.append((job, entry))
        return entries

    def _source(self, job: JobLine, record: JobRecord | None) -> str | None:
        """The key of the earlier identical job whose task this one shares, if any."""
        if not self._options.dedupe or not self._shared or job.problem() is not None:
            return None
        fp = digest(job)
        if fp not in self._shared:
            return None
        primary = self._primaries.setdefault(fp, job.key)
        if primary == job.key:
            return None
        if record is not None and record.state is not JobStatus.NOT_SUBMITTED:
            return None
        return primary

    def _from_record(
        self, key: str, record: JobRecord | None, files: list[FileRecord]
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "status": JobStatus.NOT_SUBMITTED.value,
            "task_id": None,
            "state": None,
            "result_urls": [],
            "files": [],
            "error": None,
        }
        if record is None or record.state is JobStatus.NOT_SUBMITTED:
            result["error"] = (record.error if record is not None else None) or self._not_sent
            return result
        result["task_id"] = record.task_id
        if record.ambiguous:
            result.update(status=JobStatus.AMBIGUOUS.value, error=AMBIGUOUS_TEXT)
        elif record.state is JobStatus.PENDING:
            reason = record.error or "the run ended before the task finished"
            result.update(
                status=JobStatus.PENDING.value, error=f"{reason}; it may still finish: run again"
            )
        elif record.state is JobStatus.FAILED:
            result.update(status=JobStatus.FAILED.value, state="fail", error=record.error)
        else:
            result.update(state="success", result_urls=list(record.result_urls))
            result.update(self._files(key, record, files))
        return result

    def _files(self, key: str, record: JobRecord, files: list[FileRecord]) -> dict[str, Any]:
        status, names, error = JobStatus.SUCCEEDED, [], None
        if self._options.download:
            by_index = {f.index: f for f in files}
            for index, url in enumerate(record.result_urls):
                name = file_name(key, index, url)
                if (self._options.out / name).exists():
                    names.append(name)
                    continue
                status = JobStatus.DOWNLOAD_FAILED
                known = by_index.get(index)
                error = error or (
                    f"{name}: {known.error}"
                    if known is not None and known.error
                    else f"{name} was not downloaded"
                )
        return {"status": status.value, "files": names, "error": error}


def print_report(
    options: RunOptions, report: Report, counters: BatchCounters, jobs: JobsSummary, spent: float
) -> None:
    """Print the summary table and the grouped problems."""
    c = counters
    rows: list[tuple[str, str]] = [("jobs in file", str(jobs.total))]
    for status in _SHOWN:
        if report.tally[status]:
            rows.append((status.label, str(report.tally[status])))
    if c.skipped:
        rows.append(("finished in an earlier run", str(c.skipped)))
    if jobs.duplicates:
        rows.append(("identical jobs shared", str(jobs.duplicates)))
    rows.append(("tasks created / re-attached", f"{c.submitted} / {c.reattached}"))
    if options.download:
        saved = f"{c.downloads_done} saved"
        if c.downloads_failed:
            saved += f", {c.downloads_failed} failed"
        rows.append(("files", saved))
    rows.append(("requests / 429s", f"{c.requests} / {c.rate_limited}"))
    rows.append(("estimated credits", credits_text(spent)))
    rows.append(("time", f"{c.elapsed:.1f} s"))
    rows.append(("results", str(options.out / "results.jsonl")))
    if options.gallery:
        rows.append(("gallery", str(options.out / "index.html")))
    problems = report.problems
    if len(problems) == MAX_PROBLEMS:
        problems = [*problems, "  ... and maybe more: see results.jsonl"]
    title = "ruxa-async run" + (" (simulated)" if options.simulate else "")
    print_summary(title, rows, [options.redact(p) for p in problems])
