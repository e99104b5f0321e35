"""Real taskiq and arq worker processes sharing one account through a real Redis.

Each test starts the standalone simulator, worker processes of the example apps
in ``examples/`` and the example's own enqueue command, then checks the
simulator's counters: every job one outcome, every task created once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers_proc import ROOT, SimProcess, child_env

KEY = "sk-fleet-test"


@pytest.fixture
def sim(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SimProcess]:
    """A standalone simulator; tasks take ``request.param`` seconds (0.4 s by default)."""
    median = getattr(request, "param", 0.4)
    process = SimProcess(
        tmp_path, key=KEY, default_behavior={"median_seconds": median, "sigma": 0.2}, seed=11
    )
    yield process
    process.close()


def fleet_env(sim: SimProcess, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a worker or enqueuer of the example apps."""
    return child_env(
        KEY,
        RUXA_BASE_URL=sim.url,
        RUXA_REDIS_URL=redis_url,
        FLEET_NAMESPACE=f"t{uuid.uuid4().hex[:6]}",
        FLEET_FIRST_CHECK="0.3",
        **extra,
    )


class Workers:
    """Worker processes, each in its own process group (killed whole)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(15)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def workers() -> Iterator[Workers]:
    """Worker processes stopped at the end of the test."""
    group = Workers()
    yield group
    group.close()


def enqueue(module: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def summary(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=50)
    assert proc.returncode == 0, err[-2000:]
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def taskiq_worker(count: int = 1) -> list[str]:
    return [
        *(sys.executable, "-m", "taskiq", "worker", "examples.fleet_taskiq:broker"),
        *("--workers", str(count), "--max-async-tasks", "20"),
    ]


def test_taskiq_jobs_sent_twice_are_created_once(
    sim: SimProcess, redis_url: str, workers: Workers
) -> None:
    """Two taskiq worker processes, every job sent twice with one key: one task per job."""
    env = fleet_env(sim, redis_url)
    workers.start(taskiq_worker(2), env)
    result = summary(enqueue("examples.fleet_taskiq", env, "20", "--twice"))
    assert result == {"results": 40, "ok": 40, "distinct_tasks": 20, "errors": []}
    stats = sim.stats()
    assert stats["tasks_created"] == 20
    assert stats["duplicate_creates"] == 0


@pytest.mark.parametrize("sim", [1.0], indirect=True)
def test_taskiq_worker_killed_mid_batch_creates_nothing_twice(
    sim: SimProcess, redis_url: str, workers: Workers
) -> None:
    """A worker SIGKILLed mid-batch: the queue redelivers its jobs, none is created twice."""
    env = fleet_env(sim, redis_url, FLEET_IDLE_TIMEOUT_MS="1000", FLEET_AMBIGUOUS="raise")
    doomed = workers.start(taskiq_worker(1), env)
    kicker = enqueue("examples.fleet_taskiq", env, "30", "--nudge-every", "0.5")
    deadline = time.monotonic() + 30
    while sim.stats()["tasks_created"] < 8:
        assert time.monotonic() < deadline, "the doomed worker never got going"
        time.sleep(0.02)
    workers.kill(doomed)
    workers.start(taskiq_worker(1), env)
    result = summary(kicker)
    stats = sim.stats()
    assert result["results"] == 30  # every job one outcome
    assert stats["duplicate_creates"] == 0
    # a job whose create was in flight at the kill is ambiguous and refused, never re-sent:
    # the server may or may not have created its task (once at most), but no job has two
    failed = 30 - int(str(result["ok"]))
    assert set(result["errors"]) <= {"AmbiguousCreateError"}  # type: ignore[arg-type]
    distinct = int(str(result["distinct_tasks"]))
    assert distinct == int(str(result["ok"]))
    assert distinct <= stats["tasks_created"] <= distinct + failed
    assert stats["tasks_created"] + failed >= 30


def test_arq_long_jobs_defer_and_reattach_without_a_second_create(
    sim: SimProcess, redis_url: str, workers: Workers
) -> None:
    """arq jobs that outlast their wait are deferred with Retry and re-attach by key."""
    env = fleet_env(sim, redis_url, FLEET_WAIT="0.2", FLEET_CHECK_EVERY="0.2")
    for _ in range(2):
        workers.start([sys.executable, "-m", "arq", "examples.fleet_arq.WorkerSettings"], env)
    result = summary(enqueue("examples.fleet_arq", env, "15", "--twice"))
    assert result == {"results": 30, "ok": 30, "distinct_tasks": 15, "errors": []}
    stats = sim.stats()
    assert stats["tasks_created"] == 15
    assert stats["duplicate_creates"] == 0
