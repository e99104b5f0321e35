"""The batch CLI's ``--redis``: a run spends the fleet's shared budget."""

from __future__ import annotations

import json
from pathlib import Path

import redis as redis_sync

from tests.helpers_proc import FAST_CLI, nb_job, run_cli, write_jobs
from tests.services import free_port


def test_run_with_redis_counts_its_requests_in_the_fleet(tmp_path: Path, redis_url: str) -> None:
    """`run --simulate --redis URL` succeeds; its creates draw on the fleet's shared bucket."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", [nb_job(f"j{i}", f"fox {i}") for i in range(5)])
    out = tmp_path / "out"
    done = run_cli(
        "run", str(jobs), "--out", str(out), "--simulate", "--redis", redis_url, *FAST_CLI, key=None
    )
    assert done.returncode == 0, done.stderr[-2000:]
    conn = redis_sync.Redis.from_url(redis_url)
    try:
        granted = int(conn.hget("ruxa:rate:bucket:create", "granted") or 0)
    finally:
        conn.close()
    assert granted >= 5  # tokens leased from the shared bucket (a lease may hold spare ones)
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    assert {json.loads(line)["status"] for line in lines} == {"succeeded"}


def test_run_with_an_unreachable_redis_still_finishes(tmp_path: Path) -> None:
    """A Redis that is not there degrades the run to local limits; every job still succeeds."""
    jobs = write_jobs(tmp_path / "jobs.jsonl", [nb_job(f"j{i}", f"cat {i}") for i in range(3)])
    out = tmp_path / "out"
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = run_cli(
        "run", str(jobs), "--out", str(out), "--simulate", "--redis", url, *FAST_CLI, key=None
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len((out / "results.jsonl").read_text(encoding="utf-8").splitlines()) == 3
