"""A jobs file already checked: what a resume may skip, and only when the bytes are identical.

A run records, in its journal, the SHA-256 of the jobs file it checked in
full, the settings the check depends on (default model, de-duplication, the
ruxa-async version) and the check's totals. A later run of a file with the
same digest and settings takes those totals instead of parsing every line
again: the file, and every journal row written since, is what was checked.
Any other file, setting or version is checked in full. Only the last check
is kept, so switching files back and forth always checks.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

from ._errors import InvalidInputError
from ._jobsfile import JobsSummary
from ._jobstatus import JobStatus
from ._journal_reader import JournalReader
from ._plan import Survey
from ._run_options import RunOptions
from ._version import __version__

__all__ = ["META_NAME", "file_digest", "recall", "remember"]

META_NAME = "checked_jobs_file"
_MAX_SHARED = 100_000


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks (blocking)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _identity(options: RunOptions, digest: str) -> list[object]:
    return [digest, options.default_model, options.dedupe, __version__]


def remember(options: RunOptions, digest: str, jobs: JobsSummary) -> str | None:
    """The journal value recording a full check of the file (None: too large to keep)."""
    if len(jobs.shared) > _MAX_SHARED:
        return None
    return json.dumps(
        {
            "file": _identity(options, digest),
            "total": jobs.total,
            "valid": jobs.valid,
            "invalid": jobs.invalid,
            "duplicates": jobs.duplicates,
            "by_model": dict(jobs.by_model),
            "cost": jobs.cost,
            "unpriced": dict(jobs.unpriced),
            "invalid_examples": [
                [line, key, str(error), error.model, error.field]
                for line, key, error in jobs.invalid_examples
            ],
            "shared": sorted(fp.hex() for fp in jobs.shared),
        }
    )


def recall(options: RunOptions, digest: str, text: str | None) -> JobsSummary | None:
    """The totals of an earlier full check of the same bytes and settings, else None."""
    if text is None:
        return None
    try:
        data = json.loads(text)
        if data["file"] != _identity(options, digest):
            return None
        return JobsSummary(
            total=data["total"],
            valid=data["valid"],
            invalid=data["invalid"],
            duplicates=data["duplicates"],
            by_model=Counter(data["by_model"]),
            cost=data["cost"],
            unpriced=Counter(data["unpriced"]),
            invalid_examples=[
                (line, key, InvalidInputError(message, model=model, field=field))
                for line, key, message, model, field in data["invalid_examples"]
            ],
            shared={bytes.fromhex(fp) for fp in data["shared"]},
        )
    except (ValueError, KeyError, TypeError):
        return None


def counted_from_journal(options: RunOptions, reader: JournalReader, jobs: JobsSummary) -> Survey:
    """What a resume will do, counted from the journal's states (no line is read).

    Exact when every journaled job is a line of the file, which holds when
    the file is the one last checked.
    """
    counts = reader.counts()
    done = counts[JobStatus.SUCCEEDED] + counts[JobStatus.FAILED]
    reattach = counts[JobStatus.PENDING]
    unsure = counts[JobStatus.SUBMITTING] + counts[JobStatus.AMBIGUOUS]
    distinct = jobs.valid - jobs.duplicates
    survey = Survey(jobs=jobs, done=done, reattach=reattach)
    if options.resubmit_ambiguous:
        survey.resubmit = unsure
    else:
        survey.ambiguous = unsure
    survey.send = max(0, distinct - done - reattach - unsure)
    return survey
