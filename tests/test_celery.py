"""The Celery integration: a real `celery worker` with a real Redis broker, against a simulator.

Counts come from the standalone simulator (creates, duplicate creates) and from
Celery's own result backend. ``RUXA_CELERY_TASKS`` sets the prefork run's size
(default 32 here; the issue's full run is 500).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers_proc import ROOT, SimProcess, child_env

EXAMPLES = ROOT / "examples"
SLOW = "google/nano-banana-pro"
TASKS = int(os.environ.get("RUXA_CELERY_TASKS", "32"))
# Extra SIGKILLs of a random pool child at random moments (a soak; 0 in CI).
RANDOM_KILLS = int(os.environ.get("RUXA_CELERY_RANDOM_KILLS", "0"))


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimProcess]:
    """A fresh simulator per test: quick default tasks, a slow model to kill a worker inside."""
    proc = SimProcess(
        tmp_path,
        key="sk-celery",
        default_behavior={"median_seconds": 0.2, "sigma": 0.3},
        models={SLOW: {"median_seconds": 2.5, "sigma": 0.1}},
        seed=11,
    )
    try:
        yield proc
    finally:
        proc.close()


class Worker:
    """``celery -A celery_app worker`` (the example app) as a child process."""

    def __init__(self, redis_url: str, sim: SimProcess, log: Path, *args: str) -> None:
        env = child_env(
            sim.key,
            RUXA_BASE_URL=sim.url,
            CELERY_BROKER_URL=redis_url,
            RUXA_EXAMPLE_FAST_POLL="1",
        )
        env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLES), env["PYTHONPATH"]])
        self.log = log
        self._out = log.open("w")
        argv = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--loglevel=INFO"]
        self.proc = subprocess.Popen(
            [*argv, "--without-gossip", "--without-mingle", "-n", f"w{os.getpid()}@%h", *args],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=EXAMPLES,
        )

    def children(self) -> list[int]:
        """Pids of the pool's child processes."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[1]) == self.proc.pid:
                    pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


@pytest.fixture
def producer(redis_url: str) -> Iterator[Any]:
    """A Celery app that only sends tasks and asks workers what they are running."""
    from celery import Celery

    app = Celery("producer", broker=redis_url)
    try:
        yield app
    finally:
        app.close()


def enqueue(producer: Any, prompts: list[tuple[str, str]]) -> list[str]:
    """Send ``generate_image`` tasks by name; their Celery ids."""
    return [producer.send_task("generate_image", args=[p, m]).id for p, m in prompts]


def results(conn: redis.Redis, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The result backend's records of ``ids`` that exist so far."""
    found = {}
    for task_id, raw in zip(ids, conn.mget([f"celery-task-meta-{i}" for i in ids]), strict=True):
        if raw is not None:
            found[task_id] = json.loads(raw)
    return found


def wait_all(conn: redis.Redis, ids: list[str], worker: Worker, limit: float) -> dict[str, Any]:
    """Block until every task has a result (or fail with the worker's log)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done = results(conn, ids)
        if len(done) == len(ids):
            return done
        if worker.proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(
        f"{len(results(conn, ids))}/{len(ids)} results; worker log:\n"
        + worker.log.read_text()[-3000:]
    )


def ledger(conn: redis.Redis, kind: str) -> int:
    """A counter of the integration's ledger."""
    return int(conn.get(f"ruxa_async:celery:{kind}") or 0)


def test_prefork_worker_survives_a_killed_process(
    redis_url: str, sim: SimProcess, producer: Any, tmp_path: Path
) -> None:
    """Prefork x4: a SIGKILLed child's task is redelivered and re-attaches; none created twice."""
    conn = redis.Redis.from_url(redis_url)
    worker = Worker(redis_url, sim, tmp_path / "worker.log", "--pool", "prefork", "-c", "4")
    try:
        models = [SLOW if i % 10 == 3 else "google/nano-banana" for i in range(TASKS)]
        ids = enqueue(producer, [(f"prefork {i}", m) for i, m in enumerate(models)])
        victim = None
        deadline = time.monotonic() + 40
        while victim is None and time.monotonic() < deadline:
            victim = busy_child(producer, conn, sim)
        assert victim is not None, worker.log.read_text()[-3000:]
        victim_pid, victim_task = victim
        os.kill(victim_pid, signal.SIGKILL)
        rng = random.Random(TASKS)
        for _ in range(RANDOM_KILLS):
            time.sleep(rng.uniform(0.3, 2.0))
            children = worker.children()
            if children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rng.choice(children), signal.SIGKILL)
        done = wait_all(conn, ids, worker, limit=45 + TASKS * 0.2)
        stats = sim.stats()
        reattached, ambiguous = ledger(conn, "reattached"), ledger(conn, "ambiguous")
    finally:
        worker.stop()
        conn.close()
    print(f"reattached={reattached} ambiguous={ambiguous} stats={stats}")
    assert {r["status"] for r in done.values()} == {"SUCCESS"}
    assert reattached >= 1
    assert stats["duplicate_creates"] <= ambiguous
    assert stats["tasks_created"] - stats["duplicate_creates"] == TASKS
    assert done[victim_task]["result"]["pid"] != victim_pid  # finished by another process


def busy_child(producer: Any, conn: redis.Redis, sim: SimProcess) -> tuple[int, str] | None:
    """A pool child waiting for a slow Ruxa task it has recorded: (pid, Celery task id)."""
    pending = {t["task_id"] for t in sim.tasks() if t["first_terminal_served_at"] is None}
    active = producer.control.inspect(timeout=1.0).active() or {}
    for tasks in active.values():
        for task in tasks:
            if list(task["args"])[1:] != [SLOW]:
                continue
            recorded = conn.get(f"ruxa_async:celery:{task['id']}")
            if recorded is not None and recorded.decode() in pending:
                return int(task["worker_pid"]), str(task["id"])
    return None


def test_threads_pool_shares_one_client(
    redis_url: str, sim: SimProcess, producer: Any, tmp_path: Path
) -> None:
    """The threads pool: every task of the worker runs on one client in one process."""
    conn = redis.Redis.from_url(redis_url)
    worker = Worker(redis_url, sim, tmp_path / "worker.log", "--pool", "threads", "-c", "8")
    try:
        ids = enqueue(producer, [(f"threads {i}", "google/nano-banana") for i in range(24)])
        done = wait_all(conn, ids, worker, limit=45)
        stats = sim.stats()
    finally:
        worker.stop()
        conn.close()
    assert {r["status"] for r in done.values()} == {"SUCCESS"}
    assert len({r["result"]["pid"] for r in done.values()}) == 1
    assert len({r["result"]["client"] for r in done.values()}) == 1
    assert len({r["result"]["thread"] for r in done.values()}) > 1
    assert stats["tasks_created"] == 24
    assert stats["duplicate_creates"] == 0


# ------------------------------------------------- generate_once without a worker


@pytest.fixture(scope="module")
def quick_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """One simulator for the tests below (they compare its counters before and after)."""
    proc = SimProcess(
        tmp_path_factory.mktemp("sim"),
        key="sk-once",
        default_behavior={"median_seconds": 0.05, "sigma": 0.2},
    )
    try:
        yield proc
    finally:
        proc.close()


def created(sim: SimProcess) -> int:
    """Tasks the simulator has created so far."""
    return int(sim.stats()["tasks_created"])


@pytest.fixture
def once(redis_url: str, quick_sim: SimProcess) -> Iterator[Any]:
    """The integration set up in this process, with its ledger in the test's Redis."""
    sim = quick_sim
    from ruxa_async import PollPolicy, SyncRuxaClient
    from ruxa_async.integrations import celery as ruxa_celery

    poll = PollPolicy(first_check=0.05, min_interval=0.05, max_interval=0.3)
    ruxa_celery.setup(
        ledger_url=redis_url,
        factory=lambda: SyncRuxaClient(sim.key, base_url=sim.url, poll=poll),
    )
    try:
        yield ruxa_celery
    finally:
        ruxa_celery.close()


def test_generate_once_reattaches_by_key(once: Any, quick_sim: SimProcess) -> None:
    """A second run under the same key waits for the first run's task: one create."""
    before = created(quick_sim)
    first = once.generate_once("google/nano-banana", {"prompt": "once"}, timeout=30, key="k1")
    second = once.generate_once("google/nano-banana", {"prompt": "once"}, timeout=30, key="k1")
    assert first.task_id == second.task_id
    assert created(quick_sim) - before == 1
    assert once.ledger_counts() == {"reattached": 1, "ambiguous": 0}


def test_generate_once_refused_create_frees_the_key(once: Any, quick_sim: SimProcess) -> None:
    """A create the service refused (422) created nothing: the key is free again."""
    from ruxa_async import ValidationError

    before = created(quick_sim)
    quick_sim.configure(accept_models=["google/nano-banana"])
    try:
        with pytest.raises(ValidationError):
            once.generate_once("sora-2", {"prompt": "refused"}, timeout=30, key="k2")
    finally:
        quick_sim.configure(accept_models="documented")
    info = once.generate_once("google/nano-banana", {"prompt": "ok"}, timeout=30, key="k2")
    assert info.succeeded
    assert created(quick_sim) - before == 1


@pytest.mark.parametrize("policy", ["create", "raise"])
def test_generate_once_dead_claim_is_ambiguous(
    once: Any, redis_url: str, quick_sim: SimProcess, policy: str
) -> None:
    """A claim left by a dead process is counted; then created again, or refused."""
    import socket

    before = created(quick_sim)

    from ruxa_async.integrations.celery import AmbiguousCreateError

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    conn = redis.Redis.from_url(redis_url)
    try:
        conn.set("ruxa_async:celery:k3", f"claim {socket.gethostname()} {dead.pid} 0 x")
    finally:
        conn.close()
    once.setup(
        ledger_url=redis_url,
        on_ambiguous=policy,
        factory=once._configured().factory,
    )
    if policy == "raise":
        with pytest.raises(AmbiguousCreateError):
            once.generate_once("google/nano-banana", {"prompt": "dead"}, timeout=30, key="k3")
        assert created(quick_sim) == before
    else:
        info = once.generate_once("google/nano-banana", {"prompt": "dead"}, timeout=30, key="k3")
        assert info.succeeded
        assert created(quick_sim) - before == 1
    assert once.ledger_counts()["ambiguous"] == 1
