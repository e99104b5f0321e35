"""The ``ruxa-async`` command, run for real in subprocesses against the simulator over loopback."""

from __future__ import annotations

import functools
import io
import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers_proc import (
    FAST_CLI,
    SimProcess,
    child_env,
    cli,
    journal_files,
    journal_jobs,
    kill_when,
    reaped,
    run_cli,
    start_cli,
    started_sims,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "jobs.jsonl"
KEY = "sk-test-cli-0123456789"
NB = "google/nano-banana"
FAST = FAST_CLI


def ruxa(
    *args: str, key: str | None = KEY, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real command line to the end."""
    return run_cli(*args, key=key, timeout=timeout)


class Sim(SimProcess):
    """The simulator as a standalone process, so its counters outlive client processes."""

    def __init__(self, tmp: Path, key: str = KEY, **config: Any) -> None:
        settings = {"default_behavior": {"median_seconds": 0.2, "sigma": 0.2}, **config}
        super().__init__(tmp, key=key, **settings)


@pytest.fixture
def make_sim(tmp_path: Path) -> Iterator[Callable[..., Sim]]:
    """Start standalone simulators (``make_sim(**config)``) and stop them after the test."""
    with started_sims(functools.partial(Sim, tmp_path)) as make:
        yield make


@pytest.fixture(scope="module")
def shared_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """One simulator for tests that only compare counters before and after."""
    sim = Sim(tmp_path_factory.mktemp("sim"))
    yield sim
    sim.close()


def _jobs_file(path: Path, jobs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs), encoding="utf-8")
    return path


def _nb(key: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {"id": key, "model": NB, "input": {"prompt": prompt, **extra}}


def _results(out: Path) -> list[dict[str, Any]]:
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _journal_rows(path: Path) -> list[tuple[str, str, str | None]]:
    """(key, state, task_id) of every job of a journal, read as another process would."""
    return [(key, state, task_id) for key, (state, task_id, _) in journal_jobs(path).items()]


def _signal_when(
    proc: subprocess.Popen[str],
    journal: Path,
    ready: Callable[[list[tuple[str, str, str | None]]], bool],
    sig: int = signal.SIGKILL,
) -> list[tuple[str, str, str | None]]:
    """Send ``sig`` to ``proc`` once its journal satisfies ``ready``; return the rows after."""
    kill_when(
        proc,
        lambda: ready(_journal_rows(journal)),
        what="the journal state to signal at",
        sig=sig,
        limit=30,
        every=0.02,
    )
    return _journal_rows(journal)


# ------------------------------------------------------------------ the demo


def test_simulated_example_runs_end_to_end(tmp_path: Path) -> None:
    """`run examples/jobs.jsonl --simulate` succeeds: every job in results.jsonl, files on disk."""
    out = tmp_path / "out"
    done = ruxa("run", str(EXAMPLES), "--out", str(out), "--simulate", key=None)
    assert done.returncode == 0, done.stderr
    results = _results(out)
    assert len(results) == sum(1 for line in EXAMPLES.read_text().splitlines() if line.strip())
    assert {r["status"] for r in results} == {"succeeded"}
    for result in results:
        assert result["task_id"]
        assert result["files"]
        assert all((out / name).stat().st_size > 0 for name in result["files"])
    assert any(name.endswith(".mp4") for r in results for name in r["files"])
    assert "succeeded" in done.stdout
    assert (out / "journal.sqlite").exists()


def test_rerun_after_a_finished_run_creates_nothing(
    tmp_path: Path, make_sim: Callable[..., Sim]
) -> None:
    """Running the same command again skips every finished job: zero creates, same results."""
    sim = make_sim()
    jobs = _jobs_file(tmp_path / "jobs.jsonl", [_nb(f"j{i}", f"prompt {i}") for i in range(5)])
    out = tmp_path / "out"
    args = ("run", str(jobs), "--out", str(out), "--base-url", sim.url, *FAST)
    first = ruxa(*args)
    assert first.returncode == 0, first.stderr
    before = sim.stats()
    results = _results(out)
    second = ruxa(*args)
    assert second.returncode == 0, second.stderr
    after = sim.stats()
    assert (after["creates"], after["queries"], after["downloads"]) == (
        before["creates"],
        before["queries"],
        before["downloads"],
    )
    assert _results(out) == results
    assert before["tasks_created"] == 5


# ------------------------------------------------------------ crash safety


def test_sigkill_while_polling_then_rerun_reattaches(
    tmp_path: Path, make_sim: Callable[..., Sim]
) -> None:
    """Killed after all creates, the next run re-attaches: one task per job, no duplicate."""
    sim = make_sim(default_behavior={"median_seconds": 2.5, "sigma": 0.0})
    n = 8
    jobs = _jobs_file(tmp_path / "jobs.jsonl", [_nb(f"k{i}", f"slow {i}") for i in range(n)])
    out = tmp_path / "out"
    args = ("run", str(jobs), "--out", str(out), "--base-url", sim.url, *FAST)
    rows = _signal_when(
        start_cli(*args, key=KEY),
        out / "journal.sqlite",
        lambda rows: sum(1 for r in rows if r[2] is not None) == n,
    )
    assert all(state == "pending" for _, state, _ in rows)
    assert sim.stats()["tasks_created"] == n

    again = ruxa(*args)
    assert again.returncode == 0, again.stderr
    results = _results(out)
    assert [r["key"] for r in results] == [f"k{i}" for i in range(n)]
    assert all(r["status"] == "succeeded" and r["files"] for r in results)
    assert {r["task_id"] for r in results} == {task_id for _, _, task_id in rows}
    stats = sim.stats()
    assert (stats["tasks_created"], stats["duplicate_creates"]) == (n, 0)


def test_interrupt_saves_state_and_rerun_finishes(
    tmp_path: Path, make_sim: Callable[..., Sim]
) -> None:
    """SIGINT ends the run with 130 and a results file; the next run re-attaches, creating none."""
    sim = make_sim(default_behavior={"median_seconds": 2.0, "sigma": 0.0})
    n = 4
    jobs = _jobs_file(tmp_path / "jobs.jsonl", [_nb(f"i{i}", f"int {i}") for i in range(n)])
    out = tmp_path / "out"
    args = ("run", str(jobs), "--out", str(out), "--base-url", sim.url, *FAST)
    proc = start_cli(*args, key=KEY)
    _signal_when(
        proc,
        out / "journal.sqlite",
        lambda rows: sum(1 for r in rows if r[2] is not None) == n,
        signal.SIGINT,
    )
    assert proc.returncode == 130
    assert {r["status"] for r in _results(out)} == {"pending"}
    again = ruxa(*args)
    assert again.returncode == 0, again.stderr
    assert {r["status"] for r in _results(out)} == {"succeeded"}
    assert sim.stats()["tasks_created"] == n


def test_sigkill_during_submission_leaves_ambiguous_jobs(
    tmp_path: Path, make_sim: Callable[..., Sim]
) -> None:
    """Jobs killed mid-create are ambiguous: not re-sent by default, re-sent with the flag.

    Creates are answered a second late, so some are on the wire at the kill; only
    those are ambiguous (each has a task on the service), never a job that waited
    for its permit.
    """
    sim = make_sim(faults={"slow_reply": 1.0, "slow_seconds": 1.0})
    n = 8
    jobs = _jobs_file(tmp_path / "jobs.jsonl", [_nb(f"s{i}", f"sub {i}") for i in range(n)])
    out = tmp_path / "out"
    args = ("run", str(jobs), "--out", str(out), "--base-url", sim.url, *FAST)

    def mid_submission(rows: list[tuple[str, str, str | None]]) -> bool:
        created = sum(1 for r in rows if r[2] is not None)
        submitting = sum(1 for r in rows if r[1] == "submitting")
        return created >= 2 and submitting >= 1

    rows = _signal_when(
        start_cli(*args, "--create-rate", "1", "--concurrency", "2", key=KEY),
        out / "journal.sqlite",
        mid_submission,
    )
    ambiguous = {key for key, state, task_id in rows if state == "submitting" and not task_id}
    assert 1 <= len(ambiguous) <= 2  # --concurrency 2: at most two creates on the wire
    recorded = sum(1 for r in rows if r[2] is not None)
    orphans = sim.stats()["tasks_created"] - recorded  # tasks made for the ambiguous jobs
    assert 0 <= orphans <= len(ambiguous)
    sim.configure(faults={"slow_reply": 0.0})

    second = ruxa(*args)
    assert second.returncode == 1, second.stderr
    by_key = {r["key"]: r for r in _results(out)}
    assert {k for k, r in by_key.items() if r["status"] == "ambiguous"} == ambiguous
    assert all(r["status"] == "succeeded" for k, r in by_key.items() if k not in ambiguous)
    assert "--resubmit-ambiguous" in by_key[next(iter(ambiguous))]["error"]
    assert sim.stats()["duplicate_creates"] == 0

    third = ruxa(*args, "--resubmit-ambiguous")
    assert third.returncode == 0, third.stderr
    assert {r["status"] for r in _results(out)} == {"succeeded"}
    assert sim.stats()["duplicate_creates"] <= len(ambiguous)


# --------------------------------------------------------------- bad input


def test_malformed_line_sends_nothing(tmp_path: Path, shared_sim: Sim) -> None:
    """A broken line stops the run before any request, naming the line."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        json.dumps(_nb("a", "fine")) + "\n" + json.dumps(_nb("b", "fine too")) + "\n"
        '{"id": "c", "model": "google/nano-banana", "input": {"prompt": "oops"}\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    before = shared_sim.stats()["requests"]
    done = ruxa("run", str(jobs), "--out", str(out), "--base-url", shared_sim.url, *FAST)
    assert done.returncode == 2
    assert "line 3" in done.stderr
    assert "not valid JSON" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert shared_sim.stats()["requests"] == before
    assert not (out / "results.jsonl").exists()


def test_bad_enum_fails_only_that_job(tmp_path: Path) -> None:
    """A value outside the catalogue fails its own job, naming line and field; others succeed."""
    jobs = _jobs_file(
        tmp_path / "jobs.jsonl",
        [_nb("ok-1", "a fox"), _nb("bad", "a cat", image_size="7:7"), _nb("ok-2", "a dog")],
    )
    out = tmp_path / "out"
    done = ruxa("run", str(jobs), "--out", str(out), "--simulate", *FAST, key=None)
    assert done.returncode == 1, done.stderr
    by_key = {r["key"]: r for r in _results(out)}
    assert by_key["ok-1"]["status"] == by_key["ok-2"]["status"] == "succeeded"
    bad = by_key["bad"]
    assert (bad["status"], bad["field"], bad["task_id"]) == ("invalid", "image_size", None)
    assert "line 2" in bad["error"]
    assert "image_size" in bad["error"]
    assert "line 2 (bad)" in done.stdout


def test_missing_key_is_a_usage_error(tmp_path: Path) -> None:
    """Without RUXA_API_KEY (and without --simulate) the run refuses to start."""
    jobs = _jobs_file(tmp_path / "jobs.jsonl", [_nb("a", "x")])
    done = ruxa("run", str(jobs), "--out", str(tmp_path / "out"), key=None)
    assert done.returncode == 2
    assert "RUXA_API_KEY is not set" in done.stderr
    assert "--simulate" in done.stderr


def test_unwritable_output_folder_is_a_usage_error(tmp_path: Path) -> None:
    """An output folder that cannot be created is reported in one line."""
    jobs = _jobs_file(tmp_path / "jobs.jsonl", [_nb("a", "x")])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = ruxa("run", str(jobs), "--out", str(blocker / "out"), "--simulate", key=None)
    assert done.returncode == 2
    assert "cannot write to the output folder" in done.stderr


def test_missing_jobs_file_is_a_usage_error(tmp_path: Path) -> None:
    """A jobs file that does not exist is named in the error."""
    done = ruxa("run", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"), "--simulate")
    assert done.returncode == 2
    assert "nope.jsonl not found" in done.stderr


def test_changed_job_is_refused_naming_the_key(tmp_path: Path, shared_sim: Sim) -> None:
    """A journaled key whose input changed is an error; nothing is sent."""
    jobs_path = tmp_path / "jobs.jsonl"
    out = tmp_path / "out"
    args = ("run", str(jobs_path), "--out", str(out), "--base-url", shared_sim.url, *FAST)
    _jobs_file(jobs_path, [_nb("same", "one"), _nb("edited", "before")])
    assert ruxa(*args).returncode == 0
    _jobs_file(jobs_path, [_nb("same", "one"), _nb("edited", "after")])
    before = shared_sim.stats()["requests"]
    done = ruxa(*args)
    assert done.returncode == 2
    assert "'edited'" in done.stderr
    assert "line 2" in done.stderr
    assert shared_sim.stats()["requests"] == before


# ------------------------------------------------------------ cost control


def test_dry_run_sends_nothing_and_shows_the_cost(tmp_path: Path, shared_sim: Sim) -> None:
    """--dry-run prints per-model counts and the estimate, touches neither network nor folder."""
    jobs = _jobs_file(
        tmp_path / "jobs.jsonl",
        [
            _nb("a", "x"),
            _nb("b", "y"),
            {"id": "v", "model": "sora-2", "input": {"prompt": "z", "seconds": "10"}},
        ],
    )
    out = tmp_path / "out"
    before = shared_sim.stats()["requests"]
    done = ruxa("run", str(jobs), "--out", str(out), "--base-url", shared_sim.url, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert re.search(r"google/nano-banana\s+2 jobs, 4 each, 8 credits", done.stdout)
    assert re.search(r"estimated credits\s+18", done.stdout)
    assert shared_sim.stats()["requests"] == before
    assert not out.exists()


def test_max_credits_stops_submitting(tmp_path: Path, shared_sim: Sim) -> None:
    """--max-credits sends jobs only while the estimated spend stays within the cap."""
    jobs = _jobs_file(tmp_path / "jobs.jsonl", [_nb(f"c{i}", f"cap {i}") for i in range(5)])
    out = tmp_path / "out"
    before = shared_sim.stats()["tasks_created"]
    done = ruxa(
        "run",
        str(jobs),
        "--out",
        str(out),
        "--base-url",
        shared_sim.url,
        "--max-credits",
        "10",
        *FAST,
    )
    assert done.returncode == 1, done.stderr
    assert shared_sim.stats()["tasks_created"] - before == 2
    statuses = [r["status"] for r in _results(out)]
    assert statuses == ["succeeded"] * 2 + ["not_submitted"] * 3
    assert "--max-credits 10 reached" in _results(out)[-1]["error"]


def test_identical_jobs_are_created_once(tmp_path: Path, shared_sim: Sim) -> None:
    """Identical jobs share one task and its files; --no-dedupe creates each."""
    jobs = _jobs_file(
        tmp_path / "jobs.jsonl",
        [_nb("first", "twin"), _nb("other", "single"), _nb("second", "twin")],
    )
    before = shared_sim.stats()["tasks_created"]
    out = tmp_path / "out"
    done = ruxa("run", str(jobs), "--out", str(out), "--base-url", shared_sim.url, *FAST)
    assert done.returncode == 0, done.stderr
    assert shared_sim.stats()["tasks_created"] - before == 2
    by_key = {r["key"]: r for r in _results(out)}
    assert by_key["second"]["same_as"] == "first"
    assert by_key["second"]["task_id"] == by_key["first"]["task_id"]
    assert by_key["second"]["files"] == by_key["first"]["files"]

    before = shared_sim.stats()["tasks_created"]
    separate = tmp_path / "separate"
    args = ("run", str(jobs), "--out", str(separate), "--base-url", shared_sim.url, *FAST)
    assert ruxa(*args, "--no-dedupe").returncode == 0
    assert shared_sim.stats()["tasks_created"] - before == 3


# --------------------------------------------------------------- downloads


def test_failed_download_is_recorded_and_retried_on_resume(
    tmp_path: Path, make_sim: Callable[..., Sim]
) -> None:
    """Files refused by the host are reported, and fetched by the next run without new creates."""
    sim = make_sim(result_ttl=0.0)
    jobs = _jobs_file(tmp_path / "jobs.jsonl", [_nb(f"d{i}", f"dl {i}") for i in range(3)])
    out = tmp_path / "out"
    args = ("run", str(jobs), "--out", str(out), "--base-url", sim.url, *FAST)
    first = ruxa(*args)
    assert first.returncode == 1, first.stderr
    results = _results(out)
    assert {r["status"] for r in results} == {"download_failed"}
    assert all("HTTP 404" in r["error"] for r in results)
    assert all(r["result_urls"] and not r["files"] for r in results)
    assert [f[3] for f in journal_files(out / "journal.sqlite")] == ["failed"] * 3

    sim.configure(result_ttl=None)
    creates = sim.stats()["creates"]
    second = ruxa(*args)
    assert second.returncode == 0, second.stderr
    assert sim.stats()["creates"] == creates
    results = _results(out)
    assert {r["status"] for r in results} == {"succeeded"}
    assert all((out / r["files"][0]).exists() for r in results)


# ------------------------------------------------------- fatal and secrets


def test_rejected_key_is_fatal_and_never_printed(
    tmp_path: Path, make_sim: Callable[..., Sim]
) -> None:
    """A wrong key stops the run with exit 3 after one create; no key appears anywhere."""
    sim = make_sim()
    jobs = _jobs_file(tmp_path / "jobs.jsonl", [_nb(f"w{i}", f"w {i}") for i in range(4)])
    out = tmp_path / "out"
    wrong = "sk-wrong-key-SHOULD-NOT-LEAK"
    done = ruxa("run", str(jobs), "--out", str(out), "--base-url", sim.url, "-vv", *FAST, key=wrong)
    assert done.returncode == 3, done.stderr
    assert "401" in done.stderr
    assert sim.stats()["creates"] == 1
    assert {r["status"] for r in _results(out)} == {"not_submitted"}
    for text in (done.stdout, done.stderr):
        assert wrong not in text
    for path in out.iterdir():
        assert wrong.encode() not in path.read_bytes()


def test_key_never_reaches_output_logs_journal_or_results(
    tmp_path: Path, make_sim: Callable[..., Sim]
) -> None:
    """With debug logging on, the key is in no output stream and no file the run writes."""
    secret = "sk-live-VERY-SECRET-0000"
    sim = make_sim()
    sim.close()
    sim = Sim(tmp_path, key=secret)
    try:
        jobs = _jobs_file(tmp_path / "jobs.jsonl", [_nb("s1", "x"), _nb("s2", "y", image_size="0")])
        out = tmp_path / "out"
        args = ("run", str(jobs), "--out", str(out), "--base-url", sim.url, "-vv", *FAST)
        done = ruxa(*args, key=secret)
        assert done.returncode == 1, done.stderr
        assert "DEBUG" in done.stderr
        for text in (done.stdout, done.stderr):
            assert secret not in text
        for path in out.iterdir():
            assert secret.encode() not in path.read_bytes()
    finally:
        sim.close()


# ---------------------------------------------------------- other commands


def test_status_and_wait_report_a_task(tmp_path: Path, shared_sim: Sim) -> None:
    """`status` shows a task's state; `wait` waits and downloads its result."""
    jobs = _jobs_file(tmp_path / "jobs.jsonl", [_nb("st", "status check")])
    out = tmp_path / "out"
    assert (
        ruxa("run", str(jobs), "--out", str(out), "--base-url", shared_sim.url, *FAST).returncode
        == 0
    )
    task_id = _results(out)[0]["task_id"]

    status = ruxa("status", task_id, "--json", "--base-url", shared_sim.url)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["state"] == "success"

    files = tmp_path / "files"
    waited = ruxa("wait", task_id, "--out", str(files), "--base-url", shared_sim.url)
    assert waited.returncode == 0, waited.stderr
    assert "state       success" in waited.stdout
    assert len(list(files.iterdir())) == 1

    missing = ruxa("status", "task_does_not_exist", "--base-url", shared_sim.url)
    assert missing.returncode == 1
    assert "404" in missing.stderr


def test_models_lists_the_catalogue() -> None:
    """`models` lists every model with its fields, allowed values and estimated price."""
    done = ruxa("models", key=None)
    assert done.returncode == 0
    assert "google/nano-banana-pro  (image, ~18 credits" in done.stdout
    assert "input.resolution" in done.stdout
    assert "1k, 2k, 4k" in done.stdout
    assert json.loads(ruxa("models", "--json", key=None).stdout)[0]["name"] == NB


def test_simulate_serves_until_terminated() -> None:
    """`simulate --port 0` prints its URL, answers, and exits cleanly on SIGTERM."""
    proc = subprocess.Popen(
        cli("simulate", "--port", "0"), stdout=subprocess.PIPE, text=True, env=child_env(None)
    )
    with reaped(proc):
        assert proc.stdout is not None
        match = re.search(r"Ruxa simulator at (http://\S+)", proc.stdout.readline())
        assert match
        with urllib.request.urlopen(match.group(1) + "/_sim/stats", timeout=5) as reply:
            assert json.loads(reply.read())["creates"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_help_documents_the_exit_codes() -> None:
    """`run --help` lists the exit codes."""
    done = ruxa("run", "--help", key=None)
    assert done.returncode == 0
    for code in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"\n  {code}" in done.stdout


def test_progress_falls_back_to_plain_lines_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the optional rich package, even a forced rich display is plain text lines."""
    from ruxa_async._progress import BatchCounters, PlainDisplay, make_display, print_summary

    monkeypatch.setitem(sys.modules, "rich", None)
    stream = io.StringIO()
    counters = BatchCounters(todo=3, submitted=3, finished=1, succeeded=1)
    display = make_display("rich", counters, stream=stream, interval=60)
    assert isinstance(display, PlainDisplay)
    display.start()
    display.stop()
    assert "1/3 done: 3 submitted, 2 running, 1 succeeded" in stream.getvalue()
    print_summary("title", [("jobs", "3")], ["  line 2 (x): failed"], stream=stream)
    assert "  jobs  3" in stream.getvalue()
