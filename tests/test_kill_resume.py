"""Kill -9 and resume: a real ``ruxa-async run`` killed at each stage, then run again.

test_cli.py already kills a run once while it polls and once mid-submission.
These tests add the download stage and repeated kills (submission, then
polling, then downloads, then to the end), all against one standalone
simulator whose counters outlive every client process. After every kill and
every rerun they check the same invariants:

* the journal passes ``PRAGMA integrity_check``;
* no job was ever created twice: the simulator counts no duplicate create and
  the journal counts at most one create per job (until ``--resubmit-ambiguous``);
* every task the service created is recorded, or belongs to a job left
  ambiguous (its create was sent and never answered);
* every file under its final name is complete; partial data only ever lives in
  a temporary ``.part`` file, and none is left once a run completes.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers_proc import (
    FAST_CLI,
    SimProcess,
    integrity,
    journal_files,
    journal_jobs,
    kill_when,
    nb_job,
    read_results,
    run_cli,
    start_cli,
    started_sims,
    write_jobs,
)

KEY = "sk-kill-resume-0123456789"
FILE_SIZE = 32 * 1024 * 1024  # big enough that a download is in progress for a while
RESULT_FILE = re.compile(r"\.?\w+_\d+\.\w+(\.part)?")  # d0_0.png or its .d0_0.png.part


@pytest.fixture
def make_sim(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    """Start standalone simulators (``make_sim(**config)``) and stop them after the test."""
    with started_sims(functools.partial(SimProcess, tmp_path, key=KEY)) as make:
        yield make


def result_files(out: Path) -> dict[str, int]:
    """The result files (finished or temporary) under ``out``, with their sizes."""
    return {p.name: p.stat().st_size for p in out.iterdir() if RESULT_FILE.fullmatch(p.name)}


def incomplete(out: Path) -> dict[str, int]:
    """Files that hold part of a result: started, not yet complete."""
    if not out.exists():
        return {}
    try:
        return {name: size for name, size in result_files(out).items() if 0 < size < FILE_SIZE}
    except FileNotFoundError:  # a .part renamed while we looked
        return {}


def ambiguous_keys(journal: Path) -> set[str]:
    """Jobs whose create may have been sent but whose task id was never recorded."""
    rows = journal_jobs(journal)
    return {k for k, (state, tid, _) in rows.items() if tid is None and state != "not_submitted"}


def check_invariants(out: Path, sim: SimProcess, *, resent_orphans: int = 0) -> None:
    """What must hold after any kill or rerun (see the module docstring).

    ``resent_orphans``: tasks knowingly created twice by ``--resubmit-ambiguous``.
    """
    journal = out / "journal.sqlite"
    assert integrity(journal) == "ok"
    rows = journal_jobs(journal)
    max_creates = 2 if resent_orphans else 1
    over = {k: c for k, (_, _, c) in rows.items() if c > max_creates}
    assert not over, f"jobs created more than {max_creates} time(s): {over}"
    assert sim.stats()["duplicate_creates"] == resent_orphans
    recorded = {tid for _, tid, _ in rows.values() if tid is not None}
    on_service = {t["task_id"] for t in sim.tasks()}
    assert recorded <= on_service
    unrecorded = len(on_service - recorded)
    assert unrecorded <= len(ambiguous_keys(journal)) + resent_orphans, (
        f"{unrecorded} paid tasks are neither recorded nor covered by an ambiguous job"
    )
    finals = {n: s for n, s in result_files(out).items() if not n.endswith(".part")}
    broken = {n: s for n, s in finals.items() if s != FILE_SIZE}
    assert not broken, f"incomplete files under their final names: {broken}"
    for key, idx, name, state, size in journal_files(journal):
        if state == "done":
            assert size == FILE_SIZE, (key, idx)
            assert finals.get(name) == FILE_SIZE, f"{name} recorded done but not on disk"


def kill_mid_download(args: tuple[str, ...], out: Path, ids: int, attempts: int = 4) -> None:
    """SIGKILL once ``ids`` task ids are recorded and a file is half written.

    Waiting for the task ids keeps creates off the wire at the kill (a create in flight
    is rightly reported ambiguous, which is another test's subject). Runs again if the
    kill landed between files.
    """
    journal = out / "journal.sqlite"

    def ready() -> bool:
        if not incomplete(out):
            return False
        rows = journal_jobs(journal)
        return sum(tid is not None for _, tid, _ in rows.values()) >= ids

    for _ in range(attempts):
        proc = start_cli(*args, key=KEY)
        kill_when(proc, ready, what="a download was half done", every=0.002)
        if incomplete(out):
            return
    raise AssertionError(f"no kill landed inside a download in {attempts} attempts")


def check_completed(out: Path, keys: list[str], ambiguous: set[str]) -> None:
    """After a run to the end: one result per job, every file complete, no temporary left."""
    results = read_results(out)
    assert [r["key"] for r in results] == keys
    for r in results:
        if r["key"] in ambiguous:
            assert r["status"] == "ambiguous", r
            assert "--resubmit-ambiguous" in r["error"]
            continue
        assert r["status"] == "succeeded", r
        assert r["files"], r
        for name in r["files"]:
            assert (out / name).stat().st_size == FILE_SIZE
    assert not [n for n in os.listdir(out) if n.endswith(".part")], "temporary files left behind"


def test_sigkill_during_downloads_leaves_no_partial_file_under_its_final_name(
    tmp_path: Path, make_sim: Callable[..., SimProcess]
) -> None:
    """Killed mid-download: partial data only in .part files; the rerun completes every file."""
    sim = make_sim(file_size=FILE_SIZE, default_behavior={"median_seconds": 0.1, "sigma": 0.0})
    keys = [f"d{i}" for i in range(8)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", [nb_job(k, f"download {k}") for k in keys])
    out = tmp_path / "out"
    args: tuple[str, ...] = ("run", str(jobs), "--out", str(out), "--base-url", sim.url)
    args += ("--downloads", "1")
    args += tuple(FAST_CLI)

    kill_mid_download(args, out, len(keys))
    check_invariants(out, sim)
    assert all(name.endswith(".part") for name in incomplete(out))
    created = sim.stats()["tasks_created"]
    assert created == len(keys)

    done = run_cli(*args, key=KEY)
    assert done.returncode == 0, done.stderr
    check_invariants(out, sim)
    check_completed(out, keys, set())
    assert sim.stats()["tasks_created"] == created
    assert all(state == "done" for _, _, _, state, _ in journal_files(out / "journal.sqlite"))


def test_repeated_kills_then_resume_never_create_a_job_twice(
    tmp_path: Path, make_sim: Callable[..., SimProcess]
) -> None:
    """Killed submitting, then polling, then downloading, then resumed: no job paid twice."""
    # Every reply takes a second, so creates are reliably in flight when the first kill lands.
    sim = make_sim(
        file_size=FILE_SIZE,
        default_behavior={"median_seconds": 0.2, "sigma": 0.0},
        faults={"slow_reply": 1.0, "slow_seconds": 1.0},
    )
    keys = [f"r{i}" for i in range(10)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", [nb_job(k, f"repeat {k}") for k in keys])
    out = tmp_path / "out"
    journal = out / "journal.sqlite"
    args: tuple[str, ...] = ("run", str(jobs), "--out", str(out), "--base-url", sim.url)
    args += ("--downloads", "1")
    args += tuple(FAST_CLI)

    def creates_in_flight() -> bool:
        recorded = sum(1 for _, tid, _ in journal_jobs(journal).values() if tid is not None)
        return recorded >= 1 and sim.stats()["tasks_created"] > recorded

    # 1. Kill while creates are on the wire: those jobs become ambiguous.
    kill_when(start_cli(*args, "--concurrency", "2", key=KEY), creates_in_flight, what="creates")
    check_invariants(out, sim)
    ambiguous = ambiguous_keys(journal)
    assert ambiguous, "no create was in flight at the kill"
    orphans = sim.stats()["tasks_created"] - sum(
        1 for _, tid, _ in journal_jobs(journal).values() if tid is not None
    )
    assert 1 <= orphans <= len(ambiguous)

    # 2. Rerun with slow tasks; kill once every other job has its task (while polling).
    sim.configure(faults={"slow_reply": 0.0}, default_behavior={"median_seconds": 3.0})
    wanted = len(keys) - len(ambiguous)

    def all_submitted() -> bool:
        return sum(1 for _, t, _ in journal_jobs(journal).values() if t is not None) == wanted

    kill_when(start_cli(*args, key=KEY), all_submitted, what="every job submitted")
    check_invariants(out, sim)
    assert ambiguous_keys(journal) == ambiguous
    assert sim.stats()["tasks_created"] == wanted + orphans

    # 3. Rerun; kill in the middle of a download.
    sim.configure(default_behavior={"median_seconds": 0.1})
    kill_mid_download(args, out, len(keys) - len(ambiguous))  # ambiguous jobs are not resent
    check_invariants(out, sim)
    assert ambiguous_keys(journal) == ambiguous

    # 4. Rerun to the end: everything done except the ambiguous jobs, which are reported.
    done = run_cli(*args, key=KEY)
    assert done.returncode == 1, done.stderr
    check_invariants(out, sim)
    check_completed(out, keys, ambiguous)
    assert sim.stats()["tasks_created"] == wanted + orphans

    # 5. Only when asked, the ambiguous jobs are sent again; exactly the orphans get twins.
    again = run_cli(*args, "--resubmit-ambiguous", key=KEY)
    assert again.returncode == 0, again.stderr
    check_invariants(out, sim, resent_orphans=orphans)
    check_completed(out, keys, set())
    stats = sim.stats()
    assert stats["duplicate_creates"] == orphans
    assert stats["tasks_created"] == len(keys) + orphans


def test_integrity_check_helper_sees_a_corrupt_file(tmp_path: Path) -> None:
    """The journal check used above really detects a damaged SQLite file."""
    path = tmp_path / "j.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x INTEGER PRIMARY KEY, y TEXT)")
    conn.execute("CREATE INDEX ty ON t (y)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}" * 50) for i in range(2000)])
    conn.commit()
    conn.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(page * 3, page * 3 + 200):  # scribble over an index page
        data[offset] = 0xFF
    path.write_bytes(bytes(data))
    try:
        result = integrity(path)
    except Exception as exc:  # a badly damaged file may not even open
        result = f"error: {exc}"
    assert result != "ok"


def test_sigkill_at_60_creates_per_second_leaves_only_wire_creates_ambiguous(
    tmp_path: Path, make_sim: Callable[..., SimProcess]
) -> None:
    """Killed mid-submission behind a 60/s create limit: ambiguous <= creates on the wire.

    Jobs waiting for their permit, or refused with 429, were never created: they are
    not ambiguous and the resume simply sends them, each exactly once, and exits 0
    when nothing is ambiguous.
    """
    sim = make_sim(
        create_limit={"per_second": 60.0, "burst": 10},
        default_behavior={"median_seconds": 0.3, "sigma": 0.0},
    )
    n = 200
    keys = [f"w{i}" for i in range(n)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", [nb_job(k, f"wire {k}") for k in keys])
    out = tmp_path / "out"
    journal = out / "journal.sqlite"
    args: tuple[str, ...] = ("run", str(jobs), "--out", str(out), "--base-url", sim.url)
    args += ("--no-download", *FAST_CLI)

    def recorded() -> int:
        return sum(1 for _, tid, _ in journal_jobs(journal).values() if tid is not None)

    kill_when(start_cli(*args, key=KEY), lambda: recorded() >= 40, what="40 tasks recorded")
    check_invariants(out, sim)
    ambiguous = ambiguous_keys(journal)
    stats = sim.stats()
    orphans = stats["tasks_created"] - recorded()
    # Creates on the wire at the kill: those the server made without the client
    # recording them (orphans) plus a few the server had not answered yet.
    never_created = len(ambiguous) - orphans
    assert 0 <= orphans <= len(ambiguous)
    assert never_created <= 8, f"{never_created} jobs the server never created are ambiguous"
    assert recorded() < n, "the kill came after submission ended"

    done = run_cli(*args, key=KEY)
    assert done.returncode == (1 if ambiguous else 0), done.stderr
    check_invariants(out, sim)
    results = {r["key"]: r["status"] for r in read_results(out)}
    assert {k for k, s in results.items() if s == "ambiguous"} == ambiguous
    assert all(s == "succeeded" for k, s in results.items() if k not in ambiguous)
    assert sim.stats()["tasks_created"] == n - len(ambiguous) + orphans
    assert sim.stats()["duplicate_creates"] == 0
