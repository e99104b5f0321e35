"""The SQLite journal: durable before-create records, reload, upserts, locking, failures."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ruxa_async._journal import FileRecord, JobRef, JobState, Journal, JournalError


def _ref(key: str, fingerprint: str = "fp") -> JobRef:
    return JobRef(key=key, line=1, fingerprint=fingerprint, model="google/nano-banana")


def _peek(path: Path, key: str) -> tuple[str, str | None] | None:
    """Read a job's state and task id through a separate connection (what another process sees)."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT state, task_id FROM jobs WHERE key=?", (key,)).fetchone()
    finally:
        conn.close()
    return None if row is None else (row[0], row[1])


async def test_mark_submitting_is_committed_when_it_returns(tmp_path: Path) -> None:
    """Another connection sees the `submitting` row as soon as mark_submitting returns."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        await journal.mark_submitting(_ref("a"))
        assert _peek(path, "a") == ("submitting", None)


async def test_records_survive_reopening(tmp_path: Path) -> None:
    """Task ids, outcomes and files written before close are loaded by the next run."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        await journal.mark_submitting(_ref("a"))
        journal.record_task_id(_ref("a"), "task_1")
        await journal.mark_submitting(_ref("b"))
        journal.record_outcome(
            _ref("b"), JobState.SUCCEEDED, task_id="task_2", result_urls=("http://x/0.png",)
        )
        journal.record_file(
            FileRecord(key="b", index=0, url="http://x/0.png", path="b_0.png", state="done", size=9)
        )
        await journal.set_meta("endpoint", "simulator")
    async with Journal(path) as journal:
        jobs, files = await journal.load()
        assert await journal.get_meta("endpoint") == "simulator"
    assert jobs["a"].state is JobState.SUBMITTED
    assert jobs["a"].task_id == "task_1"
    assert jobs["b"].state is JobState.SUCCEEDED
    assert jobs["b"].result_urls == ("http://x/0.png",)
    assert [(f.path, f.state, f.size) for f in files["b"]] == [("b_0.png", "done", 9)]


async def test_submitting_without_task_id_reloads_as_ambiguous(tmp_path: Path) -> None:
    """A job marked submitting whose task id never arrived is ambiguous after a restart."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        await journal.mark_submitting(_ref("a"))
    async with Journal(path) as journal:
        jobs, _ = await journal.load()
    assert jobs["a"].ambiguous
    assert jobs["a"].creates == 1


async def test_outcome_keeps_the_recorded_task_id(tmp_path: Path) -> None:
    """An outcome written without a task id keeps the one already recorded."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        await journal.mark_submitting(_ref("a"))
        journal.record_task_id(_ref("a"), "task_1")
        journal.record_outcome(_ref("a"), JobState.FAILED, error="boom")
        jobs, _ = await journal.load()
    assert (jobs["a"].state, jobs["a"].task_id, jobs["a"].error) == (
        JobState.FAILED,
        "task_1",
        "boom",
    )


async def test_outcome_without_prior_row_creates_one(tmp_path: Path) -> None:
    """Writes are upserts: a task id for a job with no row yet is still recorded."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        journal.record_task_id(_ref("a"), "task_9")
        await journal.flush()
        assert _peek(path, "a") == ("submitted", "task_9")


async def test_resubmitting_counts_creates(tmp_path: Path) -> None:
    """Marking a key submitting again clears its old task id and counts the extra create."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        await journal.mark_submitting(_ref("a"))
        journal.record_outcome(_ref("a"), JobState.AMBIGUOUS, error="dropped")
        await journal.mark_submitting(_ref("a"))
        jobs, _ = await journal.load()
    assert (jobs["a"].state, jobs["a"].creates, jobs["a"].error) == (
        JobState.SUBMITTING,
        2,
        None,
    )


async def test_many_writes_are_group_committed(tmp_path: Path) -> None:
    """Queued writes share transactions: far fewer commits than writes."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        for i in range(500):
            journal.record_task_id(_ref(f"k{i}"), f"task_{i}")
        await journal.flush()
        jobs, _ = await journal.load()
        assert len(jobs) == 500
        assert journal.commits < journal.writes / 10


async def test_forget_removes_jobs_and_files(tmp_path: Path) -> None:
    """Forgotten keys lose their job and file rows."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        journal.record_task_id(_ref("a"), "t")
        journal.record_file(FileRecord(key="a", index=0, url="u", path="p", state="failed"))
        await journal.forget(["a"])
        jobs, files = await journal.load()
    assert (jobs, files) == ({}, {})


async def test_second_journal_on_the_same_file_is_refused(tmp_path: Path) -> None:
    """Two runs cannot share one journal: the second open fails while the first holds it."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path):
        with pytest.raises(JournalError, match="in use by another ruxa-async run"):
            await Journal(path).open()
    async with Journal(path):
        pass


async def test_write_failure_surfaces_on_the_next_awaited_call(tmp_path: Path) -> None:
    """A failed background write is raised by the next flush and poisons later writes."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        await journal.flush()
        other = sqlite3.connect(path)
        other.execute("DROP TABLE jobs")
        other.commit()
        other.close()
        journal.record_task_id(_ref("a"), "t")
        with pytest.raises(JournalError, match="writing the journal"):
            await journal.flush()
        assert journal.error is not None
        with pytest.raises(JournalError):
            journal.record_task_id(_ref("b"), "t2")


async def test_unopenable_path_is_a_journal_error(tmp_path: Path) -> None:
    """A journal path inside a missing folder fails with JournalError, not a traceback."""
    with pytest.raises(JournalError):
        await Journal(tmp_path / "missing" / "journal.sqlite").open()
