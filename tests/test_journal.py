"""The SQLite journal and its reader: durable before-create records, upserts, locking, failures."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ruxa_async._jobstatus import TRANSITIONS, JobStatus
from ruxa_async._journal import FileRecord, JobRecord, JobRef, Journal, JournalError
from ruxa_async._journal_reader import JournalReader


def _ref(key: str, fingerprint: str = "fp") -> JobRef:
    return JobRef(key=key, line=1, fingerprint=fingerprint, model="google/nano-banana")


def _peek(path: Path, key: str) -> tuple[str, str | None] | None:
    """A job's state and task id through a separate reader (what another process sees)."""
    with JournalReader(path) as reader:
        record = reader.job(key)
    return None if record is None else (record.state.value, record.task_id)


def _jobs(path: Path, *keys: str) -> dict[str, JobRecord]:
    with JournalReader(path) as reader:
        return reader.jobs(keys)


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
            _ref("b"), JobStatus.SUCCEEDED, task_id="task_2", result_urls=("http://x/0.png",)
        )
        journal.record_file(
            FileRecord(key="b", index=0, url="http://x/0.png", path="b_0.png", state="done", size=9)
        )
        await journal.set_meta("endpoint", "simulator")
    async with Journal(path) as journal:
        assert await journal.get_meta("endpoint") == "simulator"
    with JournalReader(path) as reader:
        jobs, files = reader.jobs(["a", "b", "c"]), reader.files(["a", "b"])
    assert set(jobs) == {"a", "b"}
    assert jobs["a"].state is JobStatus.PENDING
    assert jobs["a"].task_id == "task_1"
    assert jobs["b"].state is JobStatus.SUCCEEDED
    assert jobs["b"].result_urls == ("http://x/0.png",)
    assert [(f.path, f.state, f.size) for f in files["b"]] == [("b_0.png", "done", 9)]


async def test_submitting_without_task_id_reloads_as_ambiguous(tmp_path: Path) -> None:
    """A job marked submitting whose task id never arrived is ambiguous after a restart."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        await journal.mark_submitting(_ref("a"))
    async with Journal(path):
        jobs = _jobs(path, "a")
    assert jobs["a"].ambiguous
    assert jobs["a"].creates == 1


async def test_outcome_keeps_the_recorded_task_id(tmp_path: Path) -> None:
    """An outcome written without a task id keeps the one already recorded."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        await journal.mark_submitting(_ref("a"))
        journal.record_task_id(_ref("a"), "task_1")
        journal.record_outcome(_ref("a"), JobStatus.FAILED, error="boom")
        await journal.flush()
        jobs = _jobs(path, "a")
    assert (jobs["a"].state, jobs["a"].task_id, jobs["a"].error) == (
        JobStatus.FAILED,
        "task_1",
        "boom",
    )


async def test_outcome_without_prior_row_creates_one(tmp_path: Path) -> None:
    """Writes are upserts: a task id for a job with no row yet is still recorded."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        journal.record_task_id(_ref("a"), "task_9")
        await journal.flush()
        assert _peek(path, "a") == ("pending", "task_9")


async def test_resubmitting_counts_creates(tmp_path: Path) -> None:
    """Marking a key submitting again clears its old task id and counts the extra create."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        await journal.mark_submitting(_ref("a"))
        journal.record_outcome(_ref("a"), JobStatus.AMBIGUOUS, error="dropped")
        await journal.mark_submitting(_ref("a"))
        jobs = _jobs(path, "a")
    assert (jobs["a"].state, jobs["a"].creates, jobs["a"].error) == (
        JobStatus.SUBMITTING,
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
        with JournalReader(path) as reader:
            assert len(list(reader.all_jobs())) == 500
            assert reader.counts() == {JobStatus.PENDING: 500}
        assert journal.commits < journal.writes / 10


async def test_forget_unfinished_removes_open_jobs_and_their_files(tmp_path: Path) -> None:
    """Jobs whose task did not end lose their job and file rows; finished ones stay."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        journal.record_task_id(_ref("a"), "t")
        journal.record_file(FileRecord(key="a", index=0, url="u", path="p", state="failed"))
        journal.record_outcome(_ref("b"), JobStatus.FAILED, task_id="t2", error="no")
        assert await journal.forget_unfinished() == 1
    with JournalReader(path) as reader:
        assert set(reader.jobs(["a", "b"])) == {"b"}
        assert reader.all_files() == []


async def test_reported_statuses_are_never_journaled(tmp_path: Path) -> None:
    """INVALID and DOWNLOAD_FAILED are derived when reporting; the journal refuses them."""
    async with Journal(tmp_path / "journal.sqlite") as journal:
        for status in (JobStatus.INVALID, JobStatus.DOWNLOAD_FAILED):
            with pytest.raises(ValueError, match="never journaled"):
                journal.record_outcome(_ref("a"), status)
    assert set(TRANSITIONS) == {
        s for s in JobStatus if s not in (JobStatus.INVALID, JobStatus.DOWNLOAD_FAILED)
    }


async def test_schema_1_journal_is_renamed_in_place(tmp_path: Path) -> None:
    """A journal from the first release reads with today's states: submitted -> pending."""
    path = tmp_path / "journal.sqlite"
    async with Journal(path) as journal:
        journal.record_task_id(_ref("a"), "t")
        journal.record_outcome(_ref("b"), JobStatus.NOT_SUBMITTED, error="x")
        await journal.flush()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE jobs SET state='submitted' WHERE key='a'")
        conn.execute("UPDATE jobs SET state='unsent' WHERE key='b'")
        conn.execute("UPDATE meta SET value='1' WHERE name='schema'")
    conn.close()
    with JournalReader(path) as reader:
        assert reader.job("a").state is JobStatus.PENDING  # type: ignore[union-attr]
    async with Journal(path):
        pass
    with JournalReader(path) as reader:
        assert reader.counts() == {JobStatus.PENDING: 1, JobStatus.NOT_SUBMITTED: 1}


def test_reader_of_a_missing_journal_reads_nothing(tmp_path: Path) -> None:
    """A journal that does not exist yet reads as empty, and is not created."""
    with JournalReader(tmp_path / "none.sqlite") as reader:
        assert reader.jobs(["a"]) == {}
        assert list(reader.all_jobs()) == []
    assert not (tmp_path / "none.sqlite").exists()


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
