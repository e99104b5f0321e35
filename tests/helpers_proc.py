"""Real subprocesses for the reliability tests: a standalone simulator and the ruxa-async CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ruxa_async._journal import JournalError
from ruxa_async._journal_reader import JournalReader

ROOT = Path(__file__).resolve().parents[1]
NB = "google/nano-banana"

# Quick polling for the CLI against a simulator whose tasks take fractions of a second.
FAST_CLI = ["--first-check", "0.2", "--poll-min", "0.2", "--poll-max", "0.4", "--progress", "plain"]


def child_env(key: str | None = None, **extra: str) -> dict[str, str]:
    """The environment for a child process: this checkout importable, RUXA_* only as given."""
    env = {k: v for k, v in os.environ.items() if k not in ("RUXA_API_KEY", "RUXA_BASE_URL")}
    if key is not None:
        env["RUXA_API_KEY"] = key
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    """The argv of the real command line."""
    return [sys.executable, "-m", "ruxa_async", *args]


def run_cli(*args: str, key: str | None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run ``ruxa-async ARGS`` to the end and capture its output."""
    return subprocess.run(
        cli(*args),
        capture_output=True,
        text=True,
        env=child_env(key),
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def start_cli(*args: str, key: str | None) -> subprocess.Popen[str]:
    """Start ``ruxa-async ARGS`` in the background (stderr kept for diagnostics)."""
    return subprocess.Popen(
        cli(*args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(key),
        cwd=ROOT,
    )


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """``proc`` for the block; on the way out it is killed if still running and its pipes closed."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


S = TypeVar("S", bound="SimProcess")


@contextlib.contextmanager
def started_sims(start: Callable[..., S]) -> Iterator[Callable[..., S]]:
    """``make(**config)`` starts a simulator process with ``start``; all are stopped on exit."""
    sims: list[S] = []

    def make(**config: Any) -> S:
        sim = start(**config)
        sims.append(sim)
        return sim

    try:
        yield make
    finally:
        for sim in sims:
            sim.close()


class SimProcess:
    """``python -m ruxa_async.testing`` in its own process: its counters outlive every client."""

    def __init__(self, workdir: Path, *, key: str, **config: Any) -> None:
        self.key = key
        path = workdir / f"sim-{os.getpid()}-{id(self)}.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        args = [sys.executable, "-m", "ruxa_async.testing", "--port", "0", "--api-key", key]
        self.proc = subprocess.Popen(
            [*args, "--config-json", str(path)],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"at (http://\S+)", line)
        if match is None:
            self.close()
            raise AssertionError(f"the simulator did not start: {line!r}")
        self.url = match.group(1)

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as reply:
            return json.loads(reply.read())

    def stats(self) -> dict[str, Any]:
        """``GET /_sim/stats``."""
        data: dict[str, Any] = self._get("/_sim/stats")
        return data

    def tasks(self) -> list[dict[str, Any]]:
        """``GET /_sim/tasks``: every task the service created, in creation order."""
        data: list[dict[str, Any]] = self._get("/_sim/tasks")
        return data

    def configure(self, **patch: Any) -> None:
        """``POST /_sim/config`` (nested settings are patched field by field)."""
        request = urllib.request.Request(
            self.url + "/_sim/config",
            data=json.dumps(patch).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def close(self) -> None:
        """Stop the simulator (SIGTERM, then SIGKILL if it lingers)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def write_jobs(path: Path, jobs: list[dict[str, Any]]) -> Path:
    """A JSONL jobs file."""
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs), encoding="utf-8")
    return path


def nb_job(key: str, prompt: str) -> dict[str, Any]:
    """One google/nano-banana job line."""
    return {"id": key, "model": NB, "input": {"prompt": prompt}}


def read_results(out: Path) -> list[dict[str, Any]]:
    """The lines of ``out/results.jsonl``."""
    text = (out / "results.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def journal_jobs(path: Path) -> dict[str, tuple[str, str | None, int]]:
    """``{key: (state, task_id, creates)}`` from a journal, read as another process would."""
    try:
        with JournalReader(path) as reader:
            return {r.key: (r.state.value, r.task_id, r.creates) for r in reader.all_jobs()}
    except JournalError:
        return {}  # the run is creating the file right now


def journal_files(path: Path) -> list[tuple[str, int, str, str, int | None]]:
    """``(key, idx, path, state, size)`` of every file record of a journal."""
    try:
        with JournalReader(path) as reader:
            files = reader.all_files()
    except JournalError:
        return []
    return sorted((f.key, f.index, f.path, f.state, f.size) for f in files)


def integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of an SQLite file (the WAL is replayed as on reopening)."""
    conn = sqlite3.connect(path, timeout=10)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def kill_when(
    proc: subprocess.Popen[str],
    ready: Callable[[], bool],
    *,
    what: str,
    sig: int = signal.SIGKILL,
    limit: float = 45.0,
    every: float = 0.01,
) -> None:
    """Signal ``proc`` (SIGKILL unless ``sig``) once ``ready()`` holds; fail if it never does.

    Once signalled, ``proc`` has exited when this returns (its ``returncode`` is set).
    """
    deadline = time.monotonic() + limit
    with reaped(proc):
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                assert proc.stderr is not None
                raise AssertionError(f"the run ended before {what}: {proc.stderr.read()[-2000:]}")
            if ready():
                proc.send_signal(sig)
                proc.wait(15)
                return
            time.sleep(every)
        raise AssertionError(f"the run never reached the point to kill at: {what}")
