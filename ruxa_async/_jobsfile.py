"""The batch runner's jobs file: one JSON object per line, read lazily, errors by line number.

A line looks like ``{"id": "fox-1", "model": "google/nano-banana", "input": {...}}``;
``id`` and ``metadata`` are optional and ``model`` may come from a default.
Blank lines are ignored. A job without ``id`` is keyed ``line-<n>``.

:func:`scan_jobs` reads the whole file once to check it before anything is
sent, keeping per line only a 16-byte digest of its key (to refuse a key used
twice) and, when de-duplicating, a 16-byte digest of what it asks for with the
line of its first occurrence: about 200 bytes a line at the peak, so a
million-line file is checked in about 200 MB. :func:`read_jobs` streams the
file, one :class:`JobLine` at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._errors import InvalidInputError
from .catalog import estimate_cost, validate_input

__all__ = [
    "JobLine",
    "JobsFileError",
    "JobsSummary",
    "fingerprint",
    "read_jobs",
    "scan_jobs",
]

_FIELDS = ("id", "model", "input", "metadata")
_FIELD_SET = frozenset(_FIELDS)
_EXAMPLES = 20
_CHECK_CHUNK = 1000
_canonical = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
).encode


class JobsFileError(ValueError):
    """The jobs file cannot be used: missing, unreadable, or a line is not a valid job."""

    def __init__(self, path: Path, message: str, *, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_decode = json.JSONDecoder(parse_constant=_reject_constant).decode


def fingerprint(model: str, input: Mapping[str, Any]) -> str:
    """A stable digest of what a job asks for (model plus canonical input JSON)."""
    text = _canonical({"model": model, "input": input})
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@attrs.frozen(kw_only=True)
class JobLine:
    """One job read from the file, with where it came from."""

    line: int
    key: str
    model: str
    input: Mapping[str, Any]
    metadata: Mapping[str, Any] | None = None
    fingerprint: str

    def problem(self) -> InvalidInputError | None:
        """The catalogue's objection to this job's input, or None when it passes."""
        try:
            validate_input(self.model, self.input)
        except InvalidInputError as exc:
            return exc
        return None


@attrs.define(kw_only=True)
class JobsSummary:
    """What a full pass over the jobs file found.

    ``shared`` holds the digests (:func:`digest`) of the jobs that occur more
    than once (only when de-duplicating); ``invalid_examples`` holds the first
    few catalogue rejections as ``(line, key, error)``.
    """

    total: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    by_model: Counter[str] = attrs.field(factory=Counter)
    cost: float = 0.0
    unpriced: Counter[str] = attrs.field(factory=Counter)
    invalid_examples: list[tuple[int, str, InvalidInputError]] = attrs.field(factory=list)
    shared: set[bytes] = attrs.field(factory=set, repr=False)


def digest(job: JobLine) -> bytes:
    """The 16 bytes of a job's fingerprint."""
    return bytes.fromhex(job.fingerprint)


def _parse(path: Path, number: int, raw: bytes, default_model: str | None) -> JobLine | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobsFileError(path, f"not UTF-8 text ({exc.reason})", line=number) from None
    if number == 1:
        text = text.removeprefix("\ufeff")
    text = text.strip()
    if not text:
        return None
    try:
        data = _decode(text)
    except ValueError as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise JobsFileError(path, f"not valid JSON ({detail})", line=number) from None
    except RecursionError:
        raise JobsFileError(path, "not valid JSON (nested too deeply)", line=number) from None
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "null"
        raise JobsFileError(path, f"expected a JSON object, got {kind}", line=number)
    unknown = sorted(data.keys() - _FIELD_SET)
    if unknown:
        raise JobsFileError(
            path,
            f"unknown field {unknown[0]!r} (a job has: {', '.join(_FIELDS)})",
            line=number,
        )
    model = data.get("model", default_model)
    if model is None:
        raise JobsFileError(path, 'no "model" (add one to the line or pass --model)', line=number)
    if not isinstance(model, str) or not model.strip():
        raise JobsFileError(path, '"model" must be a non-empty string', line=number)
    if "input" not in data:
        raise JobsFileError(path, 'no "input" object', line=number)
    job_input = data["input"]
    if not isinstance(job_input, dict):
        raise JobsFileError(path, '"input" must be a JSON object', line=number)
    key = _key(path, number, data.get("id"))
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise JobsFileError(path, '"metadata" must be a JSON object', line=number)
    try:
        digest = fingerprint(model.strip(), job_input)
    except (ValueError, RecursionError) as exc:  # inf from 1e400, a lone surrogate, ...
        raise JobsFileError(
            path, f'"input" cannot be sent as JSON ({type(exc).__name__})', line=number
        ) from None
    return JobLine(
        line=number,
        key=key,
        model=model.strip(),
        input=job_input,
        metadata=metadata,
        fingerprint=digest,
    )


def _key(path: Path, number: int, value: object) -> str:
    if value is None:
        return f"line-{number}"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise JobsFileError(path, '"id" must be a string or an integer', line=number)
    key = str(value).strip()
    if not key:
        raise JobsFileError(path, '"id" must not be empty', line=number)
    if len(key) > 200:
        raise JobsFileError(path, '"id" is longer than 200 characters', line=number)
    return key


def read_jobs(path: Path, *, default_model: str | None = None) -> Generator[JobLine, None, None]:
    """Yield the file's jobs one by one; raise :class:`JobsFileError` at the first bad line."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise JobsFileError(path, "no such file") from None
    except IsADirectoryError:
        raise JobsFileError(path, "is a directory, not a jobs file") from None
    except OSError as exc:
        raise JobsFileError(path, f"cannot read it ({exc.strerror or exc})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            job = _parse(path, number, raw, default_model)
            if job is not None:
                yield job


def scan_jobs(
    path: Path,
    *,
    default_model: str | None = None,
    dedupe: bool = True,
    prices: Mapping[str, float] | None = None,
    check: Callable[[Sequence[tuple[JobLine, bool]]], None] | None = None,
) -> JobsSummary:
    """Read the whole file once: syntax, unique keys, catalogue checks, counts and cost.

    Raises :class:`JobsFileError` for the first line that is not a valid job or
    reuses a key. ``check`` sees every job, a thousand lines at a time, in file
    order, each with True when it is valid and the first of its kind, and may
    raise :class:`JobsFileError` itself (the batch runner compares the jobs
    with its journal there).
    """
    summary = JobsSummary()
    keys: set[int] = set()
    seen: set[bytes] = set()
    pending: list[tuple[JobLine, bool]] = []
    for job in read_jobs(path, default_model=default_model):
        summary.total += 1
        counted = _count(summary, job, seen, dedupe, prices)
        if check is not None:
            pending.append((job, counted))
            if len(pending) >= _CHECK_CHUNK:
                check(pending)
                pending = []
        key_digest = hash_key(job.key)
        if key_digest in keys:
            first = _first_line(path, job.key, default_model, job.line)
            if first is not None:
                raise JobsFileError(
                    path, f"job id {job.key!r} is already used on line {first}", line=job.line
                )
        keys.add(key_digest)
    if pending and check is not None:
        check(pending)
    return summary


def hash_key(key: str) -> int:
    """An 8-byte digest of a job key (a collision is checked against the file itself)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def _count(
    summary: JobsSummary,
    job: JobLine,
    seen: set[bytes],
    dedupe: bool,
    prices: Mapping[str, float] | None,
) -> bool:
    problem = job.problem()
    if problem is not None:
        summary.invalid += 1
        if len(summary.invalid_examples) < _EXAMPLES:
            summary.invalid_examples.append((job.line, job.key, problem))
        return False
    summary.valid += 1
    if dedupe:
        fp = digest(job)
        if fp in seen:
            summary.duplicates += 1
            summary.shared.add(fp)
            return False
        seen.add(fp)
    summary.by_model[job.model] += 1
    cost = estimate_cost(job.model, job.input, prices)
    if cost is None:
        summary.unpriced[job.model] += 1
    else:
        summary.cost += cost
    return True


def _first_line(path: Path, key: str, default_model: str | None, before: int) -> int | None:
    """The first line before ``before`` that uses ``key`` (None: a digest collision)."""
    for job in read_jobs(path, default_model=default_model):
        if job.line >= before:
            return None
        if job.key == key:
            return job.line
    return None
