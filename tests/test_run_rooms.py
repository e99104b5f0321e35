"""The batch runner's rooms, each on its own, in process: planner, sink, downloads, report.

The subprocess tests in test_cli.py and test_kill_resume.py prove the whole
command; these pin each room's behaviour without a child process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from ruxa_async import (
    APIConnectionError,
    Job,
    JobOutcome,
    NotSubmittedError,
    PollPolicy,
    ServerError,
    TaskInfo,
    TaskState,
    TaskTimeoutError,
)
from ruxa_async._fetch import DownloadPipeline, wanted
from ruxa_async._gallery import Gallery, tile
from ruxa_async._jobsfile import JobsFileError, read_jobs
from ruxa_async._jobstatus import JobStatus
from ruxa_async._journal import FileRecord, JobRef, Journal
from ruxa_async._journal_reader import JournalReader
from ruxa_async._plan import Planner, survey
from ruxa_async._progress import BatchCounters
from ruxa_async._report import write_report
from ruxa_async._run import RunEnd, RunUsageError, dry_run, run_jobs
from ruxa_async._run_options import RunOptions
from ruxa_async._sink import JournalSink, classify
from ruxa_async.testing import FakeRuxa

from .conftest import make_client

NB = "google/nano-banana"


def _options(tmp_path: Path, **changes: Any) -> RunOptions:
    return RunOptions(
        jobs=tmp_path / "jobs.jsonl",
        out=tmp_path / "out",
        journal=tmp_path / "out" / "journal.sqlite",
        **changes,
    )


def _write_jobs(path: Path, *prompts: str) -> None:
    lines = [{"id": f"j{i}", "model": NB, "input": {"prompt": p}} for i, p in enumerate(prompts)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")


def _ref(key: str, fingerprint: str) -> JobRef:
    return JobRef(key=key, line=1, fingerprint=fingerprint, model=NB)


async def _journal_states(options: RunOptions, states: dict[str, JobStatus]) -> None:
    """Record each job of the jobs file in ``states`` as a run would have left it."""
    jobs = {j.key: j for j in read_jobs(options.jobs)}
    options.out.mkdir(exist_ok=True)
    async with Journal(options.journal) as journal:
        for key, state in states.items():
            job = jobs[key]
            ref = JobRef(key=key, line=job.line, fingerprint=job.fingerprint, model=job.model)
            if state is JobStatus.SUBMITTING:
                await journal.mark_submitting(ref)
                continue
            task_id = (
                None if state in (JobStatus.AMBIGUOUS, JobStatus.NOT_SUBMITTED) else "t_" + key
            )
            urls = (f"http://x/{key}.png",) if state is JobStatus.SUCCEEDED else ()
            journal.record_outcome(ref, state, task_id=task_id, result_urls=urls)
        await journal.flush()


# ------------------------------------------------------------------ planner


async def test_survey_counts_what_a_resume_would_do(tmp_path: Path) -> None:
    """Done, to re-attach, ambiguous and to send are counted; only what is sent is priced."""
    options = _options(tmp_path)
    _write_jobs(options.jobs, "done", "pending", "lost create", "new", "new", "fresh")
    await _journal_states(
        options,
        {"j0": JobStatus.SUCCEEDED, "j1": JobStatus.PENDING, "j2": JobStatus.SUBMITTING},
    )
    with JournalReader(options.journal) as reader:
        plan = survey(options, reader)
    assert (plan.done, plan.reattach, plan.ambiguous, plan.send) == (1, 1, 1, 2)
    assert plan.jobs.duplicates == 1
    assert plan.send_cost == 8.0
    assert plan.todo == 3


async def test_survey_with_resubmit_prices_the_ambiguous_job(tmp_path: Path) -> None:
    """--resubmit-ambiguous turns an ambiguous job into one to send, and pays for it."""
    options = _options(tmp_path, resubmit_ambiguous=True)
    _write_jobs(options.jobs, "lost create")
    await _journal_states(options, {"j0": JobStatus.AMBIGUOUS})
    with JournalReader(options.journal) as reader:
        plan = survey(options, reader)
    assert (plan.ambiguous, plan.resubmit, plan.send_cost) == (0, 1, 4.0)


async def test_survey_refuses_a_job_changed_since_it_was_journaled(tmp_path: Path) -> None:
    """A journaled key whose input changed is named with its line; nothing else is read."""
    options = _options(tmp_path)
    _write_jobs(options.jobs, "one", "two")
    await _journal_states(options, {"j1": JobStatus.PENDING})
    _write_jobs(options.jobs, "one", "changed")
    with JournalReader(options.journal) as reader, pytest.raises(JobsFileError) as info:
        survey(options, reader)
    assert "line 2" in str(info.value)
    assert "'j1' changed" in str(info.value)


async def test_planner_streams_steps_with_their_status(tmp_path: Path) -> None:
    """Each line gets its journal status; duplicates and invalid lines are marked."""
    options = _options(tmp_path)
    _write_jobs(options.jobs, "a", "b", "a", "c")
    with options.jobs.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "bad", "model": NB, "input": {"prompt": "x", "image_size": "0"}}))
    await _journal_states(options, {"j1": JobStatus.PENDING, "j3": JobStatus.SUCCEEDED})
    with JournalReader(options.journal) as reader:
        planner = Planner(options, reader, survey(options, reader).jobs.shared)
        steps = [step for batch in planner for step in batch]
    view = [(s.job.key, s.status, s.duplicate, s.task_id) for s in steps]
    assert view == [
        ("j0", JobStatus.NOT_SUBMITTED, False, None),
        ("j1", JobStatus.PENDING, False, "t_j1"),
        ("j2", JobStatus.NOT_SUBMITTED, True, None),
        ("j3", JobStatus.SUCCEEDED, False, "t_j3"),
        ("bad", JobStatus.INVALID, False, None),
    ]
    assert [m.index for m in steps[3].missing] == [0]
    assert [s.sends(False) for s in steps] == [True, False, False, False, False]


# --------------------------------------------------------------------- sink


def _outcome(**fields: Any) -> JobOutcome:
    return JobOutcome(job=Job(model=NB, input={"prompt": "x"}, key="k"), index=0, **fields)


def _info(state: TaskState, **fields: Any) -> TaskInfo:
    return TaskInfo(task_id="t1", state=state, **fields)


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        (_outcome(task_id="t1", info=_info(TaskState.SUCCESS)), JobStatus.SUCCEEDED),
        (_outcome(task_id="t1", info=_info(TaskState.FAIL)), JobStatus.FAILED),
        (_outcome(error=NotSubmittedError("no credits")), JobStatus.NOT_SUBMITTED),
        (_outcome(task_id="t1", error=TaskTimeoutError("t1", 5.0)), JobStatus.PENDING),
        (_outcome(error=ServerError("boom", code=500, http_status=500)), JobStatus.AMBIGUOUS),
        (_outcome(error=APIConnectionError("reset", request_sent=True)), JobStatus.AMBIGUOUS),
        (
            _outcome(error=APIConnectionError("refused", request_sent=False)),
            JobStatus.NOT_SUBMITTED,
        ),
    ],
)
def test_outcomes_map_to_one_status(outcome: JobOutcome, status: JobStatus) -> None:
    """Every kind of outcome becomes one runner status (ambiguity as the retry rules say)."""
    assert classify(outcome) is status


async def test_sink_records_by_key_not_metadata(tmp_path: Path) -> None:
    """The sink remembers each job's line by key while it is in flight, and journals outcomes."""
    options = _options(tmp_path)
    _write_jobs(options.jobs, "a")
    line = next(read_jobs(options.jobs))
    counters = BatchCounters()
    aborted: list[BaseException] = []
    async with Journal(tmp_path / "j.sqlite") as journal:
        sink = JournalSink(
            journal, counters, timeout=None, redact=lambda t: t, on_abort=aborted.append
        )
        job = sink.job(line)
        assert job.metadata is None
        assert sink.in_flight == 1
        await sink.before_create(job)
        failed = JobOutcome(
            job=job, index=0, task_id="t1", info=_info(TaskState.FAIL, fail_msg="nsfw")
        )
        assert sink.on_outcome(failed) is JobStatus.FAILED
        await journal.flush()
    assert sink.in_flight == 0
    with JournalReader(tmp_path / "j.sqlite") as reader:
        record = reader.job("j0")
    assert record is not None
    assert (record.state, record.task_id, record.error, record.line) == (
        JobStatus.FAILED,
        "t1",
        "nsfw",
        1,
    )
    assert (counters.finished, counters.failed, aborted) == (1, 1, [])


# ---------------------------------------------------------------- downloads


async def test_download_pipeline_saves_and_records_files(tmp_path: Path, fake: FakeRuxa) -> None:
    """Queued files are saved under their names and recorded done; a 404 is recorded failed."""
    counters = BatchCounters()
    records: list[FileRecord] = []
    async with make_client(fake) as client:
        info = await client.generate(NB, {"prompt": "a fox"})
        files = wanted(tmp_path, "fox", [*info.result_urls, fake.url + "/files/nope/0.png"])
        async with DownloadPipeline(client, counters, records.append, workers=2, attempts=1) as p:
            for file in files:
                await p.put(file)
    assert sorted((r.path, r.state) for r in records) == [
        ("fox_0.png", "done"),
        ("fox_1.png", "failed"),
    ]
    assert (tmp_path / "fox_0.png").read_bytes().startswith(b"\x89PNG")
    assert (counters.downloads_done, counters.downloads_failed, counters.downloads_running) == (
        1,
        1,
        0,
    )


# ------------------------------------------------------------------- report


async def test_report_writes_one_line_per_job_and_groups_problems(tmp_path: Path) -> None:
    """results.jsonl follows the file; a duplicate names its twin; problems are grouped."""
    options = _options(tmp_path, download=False)
    _write_jobs(options.jobs, "a", "b", "a", "c", "d")
    await _journal_states(
        options, {"j0": JobStatus.SUCCEEDED, "j1": JobStatus.AMBIGUOUS, "j3": JobStatus.PENDING}
    )
    with JournalReader(options.journal) as reader:
        plan = survey(options, reader)
        report = write_report(options, reader, plan.jobs, "not submitted: the run was interrupted")
    results = [json.loads(x) for x in (options.out / "results.jsonl").read_text().splitlines()]
    assert [(r["key"], r["status"]) for r in results] == [
        ("j0", "succeeded"),
        ("j1", "ambiguous"),
        ("j2", "succeeded"),
        ("j3", "pending"),
        ("j4", "not_submitted"),
    ]
    assert (results[2]["same_as"], results[2]["task_id"]) == ("j0", "t_j0")
    assert report.tally[JobStatus.SUCCEEDED] == 2
    assert not report.complete
    assert any("not submitted: the run was interrupted [line 5 (j4)]" in p for p in report.problems)
    page = (options.out / "index.html").read_text(encoding="utf-8")
    assert page.count("<figure") == 5


def test_gallery_escapes_every_text_and_links_relatively(tmp_path: Path) -> None:
    """Prompts, keys and errors are escaped; files are relative links; no external asset."""
    entry = {
        "key": "<k>",
        "model": NB,
        "status": "failed",
        "files": ["a b.png"],
        "error": "<script>alert(1)</script>",
    }
    html = tile(entry, {"prompt": '"><img src=x onerror=alert(1)>'})
    assert "<script>" not in html
    assert "onerror=alert(1)>" not in html
    assert "&lt;k&gt;" in html
    assert 'src="a%20b.png"' in html
    with Gallery(tmp_path, "t & <t>", limit=1) as gallery:
        gallery.add(entry, {})
        gallery.add(entry, {})
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "and 1 more jobs" in page
    assert "t &amp; &lt;t&gt;" in page
    assert "http" not in page
    assert "<script" not in page


# -------------------------------------------------------------- whole engine


def _engine_options(tmp_path: Path, fake: FakeRuxa, **changes: Any) -> RunOptions:
    return _options(
        tmp_path,
        api_key=fake.api_key,
        base_url=fake.url,
        poll=PollPolicy(first_check=0.05, min_interval=0.05, max_interval=0.2),
        progress="none",
        **changes,
    )


async def test_engine_runs_then_resumes_without_creating_again(
    tmp_path: Path, fake: FakeRuxa, capsys: pytest.CaptureFixture[str]
) -> None:
    """run_jobs runs the file to the end; run again, it creates nothing and ends complete."""
    options = _engine_options(tmp_path, fake)
    _write_jobs(options.jobs, "a", "b", "c", "a")
    first = await run_jobs(options)
    assert (first.end, first.message) == (RunEnd.COMPLETE, None)
    assert fake.stats().tasks_created == 3
    second = await run_jobs(options)
    assert second.end is RunEnd.COMPLETE
    assert fake.stats().tasks_created == 3
    assert "finished in an earlier run" in capsys.readouterr().out
    results = [json.loads(x) for x in (options.out / "results.jsonl").read_text().splitlines()]
    assert all(r["files"] and (options.out / r["files"][0]).exists() for r in results)


async def test_engine_raises_its_own_usage_error(tmp_path: Path, fake: FakeRuxa) -> None:
    """A journal of another endpoint is a RunUsageError, and nothing is sent."""
    options = _engine_options(tmp_path, fake)
    _write_jobs(options.jobs, "a")
    assert (await run_jobs(options)).end is RunEnd.COMPLETE
    moved = attrs.evolve(options, base_url="http://127.0.0.1:9/elsewhere")
    with pytest.raises(RunUsageError, match="records jobs run against"):
        await run_jobs(moved)
    with pytest.raises(RunUsageError, match="not found"):
        await run_jobs(attrs.evolve(options, jobs=tmp_path / "missing.jsonl"))


def test_dry_run_reads_the_journal_and_writes_nothing(tmp_path: Path) -> None:
    """dry_run on a fresh folder counts every job as to send and creates no folder."""
    options = _options(tmp_path)
    _write_jobs(options.jobs, "a", "b")
    plan = dry_run(options)
    assert (plan.send, plan.send_cost) == (2, 8.0)
    assert not options.out.exists()


async def test_resume_of_identical_bytes_skips_the_full_check_and_an_edit_does_not(
    tmp_path: Path, fake: FakeRuxa, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal remembers the SHA-256 it checked; only those exact bytes skip the check."""
    from ruxa_async import _run

    options = _engine_options(tmp_path, fake)
    _write_jobs(options.jobs, "a", "b")
    assert (await run_jobs(options)).end is RunEnd.COMPLETE
    calls: list[Path] = []
    real = _run.survey

    def counting(o: RunOptions, reader: JournalReader) -> Any:
        calls.append(o.jobs)
        return real(o, reader)

    monkeypatch.setattr(_run, "survey", counting)
    assert (await run_jobs(options)).end is RunEnd.COMPLETE
    assert calls == []
    assert (await run_jobs(attrs.evolve(options, dedupe=False))).end is RunEnd.COMPLETE
    assert len(calls) == 1
    _write_jobs(options.jobs, "a", "b", "c")
    assert (await run_jobs(options)).end is RunEnd.COMPLETE
    assert len(calls) == 2
    assert fake.stats().tasks_created == 3


def test_recall_needs_the_same_digest_and_settings(tmp_path: Path) -> None:
    """A remembered check answers only for the same digest, default model and dedupe."""
    from ruxa_async._checked import recall, remember
    from ruxa_async._jobsfile import scan_jobs

    options = _options(tmp_path)
    _write_jobs(options.jobs, "a", "a", "b")
    jobs = scan_jobs(options.jobs)
    text = remember(options, "d1", jobs)
    again = recall(options, "d1", text)
    assert again is not None
    assert (again.total, again.duplicates, again.shared) == (3, 1, jobs.shared)
    assert recall(options, "d2", text) is None
    assert recall(attrs.evolve(options, default_model=NB), "d1", text) is None
    assert recall(options, "d1", "not json") is None
