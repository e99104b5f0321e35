"""The jobs file reader: lazy parsing, line-numbered errors, scan totals."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from ruxa_async._jobsfile import JobLine, JobsFileError, fingerprint, read_jobs, scan_jobs


def _write(tmp_path: Path, *lines: str | dict[str, object]) -> Path:
    path = tmp_path / "jobs.jsonl"
    text = "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


NB = "google/nano-banana"


def _job(prompt: str, **extra: object) -> dict[str, object]:
    return {"model": NB, "input": {"prompt": prompt}, **extra}


def test_reads_jobs_with_keys_and_line_numbers(tmp_path: Path) -> None:
    """Ids become keys; lines without an id are keyed by line number; blank lines are skipped."""
    path = _write(tmp_path, _job("a", id="fox"), "", "   ", _job("b"), _job("c", id=7))
    jobs = list(read_jobs(path))
    assert [(j.key, j.line) for j in jobs] == [("fox", 1), ("line-4", 4), ("7", 5)]
    assert jobs[0].input == {"prompt": "a"}
    assert jobs[0].fingerprint == fingerprint(NB, {"prompt": "a"})


def test_default_model_fills_a_missing_model(tmp_path: Path) -> None:
    """--model supplies the model of lines that have none; a line's own model wins."""
    path = _write(tmp_path, {"input": {"prompt": "x"}}, {"model": "sora-2", "input": {}})
    jobs = list(read_jobs(path, default_model=NB))
    assert [j.model for j in jobs] == [NB, "sora-2"]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"model": "m", "input": {', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"model": "m", "inputs": {}}', "unknown field 'inputs'"),
        ('{"input": {}}', 'no "model"'),
        ('{"model": "m"}', 'no "input"'),
        ('{"model": "m", "input": "a fox"}', '"input" must be a JSON object'),
        ('{"model": "m", "input": {}, "id": true}', '"id" must be a string or an integer'),
        ('{"model": "m", "input": {}, "id": ""}', '"id" must not be empty'),
        ('{"model": "m", "input": {"x": NaN}}', "not valid JSON"),
    ],
)
def test_bad_line_names_the_line(tmp_path: Path, line: str, needle: str) -> None:
    """Each kind of malformed line is reported with its line number and the problem."""
    path = _write(tmp_path, _job("ok"), line)
    with pytest.raises(JobsFileError) as info:
        list(read_jobs(path))
    assert info.value.line == 2
    assert needle in str(info.value)
    assert "line 2" in str(info.value)


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported by line, not as a crash."""
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b'{"model": "m", "input": {}}\n{"model": "\xff", "input": {}}\n')
    with pytest.raises(JobsFileError, match="line 2: not UTF-8"):
        list(read_jobs(path))


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    """A UTF-8 BOM at the start of the file is not a syntax error."""
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_job("a")).encode() + b"\n")
    assert len(list(read_jobs(path))) == 1


def test_missing_file_is_a_jobs_file_error(tmp_path: Path) -> None:
    """A file that does not exist gives a clear error, not a traceback."""
    with pytest.raises(JobsFileError, match="no such file"):
        list(read_jobs(tmp_path / "nope.jsonl"))


def test_reading_is_lazy(tmp_path: Path) -> None:
    """Jobs before a bad line are yielded before the error is raised."""
    path = _write(tmp_path, _job("a"), _job("b"), "oops")
    reader = read_jobs(path)
    assert next(reader).line == 1
    assert next(reader).line == 2
    with pytest.raises(JobsFileError):
        next(reader)


def test_scan_rejects_a_reused_id(tmp_path: Path) -> None:
    """Two lines with the same id are an error naming both lines."""
    path = _write(tmp_path, _job("a", id="x"), _job("b", id="y"), _job("c", id="x"))
    with pytest.raises(JobsFileError, match="line 3: job id 'x' is already used on line 1"):
        scan_jobs(path)


def test_scan_counts_models_cost_duplicates_and_invalid(tmp_path: Path) -> None:
    """Scan totals: per-model counts and cost of distinct valid jobs, duplicates, invalid ones."""
    path = _write(
        tmp_path,
        _job("a"),
        _job("a"),
        _job("b"),
        {"model": NB, "input": {"prompt": "c", "image_size": "7:7"}},
        {"model": "sora-2", "input": {"prompt": "v", "seconds": "10"}},
        {"model": "acme/unknown", "input": {"anything": 1}},
    )
    summary = scan_jobs(path)
    assert summary.total == 6
    assert summary.invalid == 1
    assert summary.duplicates == 1
    assert dict(summary.by_model) == {NB: 2, "sora-2": 1, "acme/unknown": 1}
    assert summary.cost == 4.0 * 2 + 10.0
    assert dict(summary.unpriced) == {"acme/unknown": 1}
    line, key, error = summary.invalid_examples[0]
    assert (line, key, error.field) == (4, "line-4", "image_size")
    assert summary.shared == {bytes.fromhex(fingerprint(NB, {"prompt": "a"}))}


def test_scan_without_dedupe_counts_every_job(tmp_path: Path) -> None:
    """With dedupe off, identical jobs are each counted and priced."""
    path = _write(tmp_path, _job("a"), _job("a"))
    summary = scan_jobs(path, dedupe=False)
    assert (summary.duplicates, summary.by_model[NB], summary.cost) == (0, 2, 8.0)


def test_scan_check_can_reject_a_job(tmp_path: Path) -> None:
    """The check hook sees every job (and whether it counts) and its error stops the scan."""
    path = _write(tmp_path, _job("a", id="keep"), _job("a", id="twin"), _job("b", id="bad"))
    seen: list[tuple[str, bool]] = []

    def check(batch: Sequence[tuple[JobLine, bool]]) -> None:
        for job, counted in batch:
            seen.append((job.key, counted))
            if job.key == "bad":
                raise JobsFileError(path, "changed", line=job.line)

    with pytest.raises(JobsFileError, match="line 3: changed"):
        scan_jobs(path, check=check)
    assert seen == [("keep", True), ("twin", False), ("bad", True)]


def test_scan_keeps_no_row_per_line(tmp_path: Path) -> None:
    """Distinct jobs leave nothing behind in the summary: only shared digests are kept."""
    path = _write(tmp_path, *(_job(f"p{i}") for i in range(50)), _job("p7"))
    summary = scan_jobs(path)
    assert (summary.total, summary.duplicates, len(summary.shared)) == (51, 1, 1)


def test_key_digest_collision_is_not_a_reused_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key digests only flag a suspect: the file itself decides whether an id is reused."""
    from ruxa_async import _jobsfile

    monkeypatch.setattr(_jobsfile, "hash_key", lambda key: 1)
    path = _write(tmp_path, _job("a", id="x"), _job("b", id="y"))
    assert scan_jobs(path).total == 2


def test_fingerprint_ignores_key_order() -> None:
    """Identical inputs written in another key order are the same job."""
    assert fingerprint(NB, {"a": 1, "b": 2}) == fingerprint(NB, {"b": 2, "a": 1})
    assert fingerprint(NB, {"a": 1}) != fingerprint("sora-2", {"a": 1})
