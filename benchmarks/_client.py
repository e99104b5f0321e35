"""The client process: runs one contender on one workload and measures it from inside.

``python -m benchmarks._client SPEC.json OUT.json`` is started by the harness,
once per contender and workload, pinned to its own CPU. It builds the jobs,
lets the contender prepare its inputs, then measures only the run itself:
``time.process_time()`` over the run, RSS sampled every ``sample_interval``
seconds (plus the kernel's high-water mark), an event-loop lag probe (a
coroutine sleeping 100 ms that records its oversleep), and the moment each job
resolved. It prints ``START <monotonic>`` when the run begins; in hold mode
(W4) it runs until the harness writes ``stop <window_start>`` on stdin.

Every contender module exposes ``prepare(jobs, spec) -> object`` (built before
the baseline RSS is read, so the caller's own job list is not counted) and
``async run(prepared, spec, recorder)``, which reports each job through the
recorder and leaves its client-side counters (retries...) in ``recorder.counters``,
also when cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import logging
import math
import os
import socket
import sys
import time
import traceback
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

SUCCEEDED, FAILED, ERROR, NOT_SUBMITTED = 1, 2, 3, 4
PROBE_PERIOD = 0.1
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Job:
    """One job as the benchmark hands it to a contender: a model and its input."""

    model: str
    input: dict[str, Any]


@dataclass(frozen=True)
class RunSpec:
    """What one client process runs; written by the harness as JSON.

    Rates and times are already compressed by ``k`` (the workload's time
    factor): a rate here is the real-scale rate times ``k``, a duration the
    real-scale duration divided by ``k``.
    """

    contender: str
    module: str
    options: dict[str, Any]
    base_url: str
    api_key: str
    n: int
    models: list[str]
    prompt_prefix: str
    k: float
    create_rate: float | None
    create_burst: int
    query_rate: float | None
    query_burst: int
    max_pending: int
    wall_cap: float
    hold: bool = False
    cpu: int | None = None
    sample_interval: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> RunSpec:
        """Read a spec written by the harness."""
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    def jobs(self) -> list[Job]:
        """The workload's jobs; every input is unique, so the server can spot duplicates."""
        models = self.models
        prefix = self.prompt_prefix
        return [
            Job(models[i % len(models)], {"prompt": f"{prefix} job {i}"}) for i in range(self.n)
        ]


class Recorder:
    """Collects what happened to each job, by index; counts double resolutions."""

    __slots__ = (
        "counters",
        "counts",
        "created",
        "created_count",
        "double",
        "finished_created",
        "resolved_at",
        "status",
        "task_ids",
    )

    def __init__(self, n: int) -> None:
        self.task_ids: list[str | None] = [None] * n
        self.resolved_at: list[float] = [0.0] * n
        self.status = bytearray(n)
        self.counts = bytearray(n)
        self.created = bytearray(n)
        self.created_count = 0
        self.finished_created = 0
        self.double = 0
        self.counters: dict[str, float] = {}

    def on_created(self, index: int, task_id: str) -> None:
        """A create succeeded: the job is now pending on the service."""
        if self.task_ids[index] is None:
            self.task_ids[index] = task_id
        if not self.created[index]:
            self.created[index] = 1
            self.created_count += 1

    def on_resolved(self, index: int, task_id: str | None, status: int) -> None:
        """The job's outcome reached the caller (call exactly once per job)."""
        count = self.counts[index]
        if count:
            if count == 1:
                self.double += 1
            self.counts[index] = min(count + 1, 255)
            return
        self.counts[index] = 1
        self.resolved_at[index] = time.monotonic()
        self.status[index] = status
        if task_id is not None:
            self.on_created(index, task_id)
        if self.created[index]:
            self.finished_created += 1

    @property
    def pending(self) -> int:
        """Jobs created on the service and not yet resolved."""
        return self.created_count - self.finished_created


class Contender(Protocol):
    """The interface of a contender module."""

    def prepare(self, jobs: list[Job], spec: RunSpec) -> Any: ...

    async def run(self, prepared: Any, spec: RunSpec, recorder: Recorder) -> None: ...


# ---------------------------------------------------------------- measuring


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def peak_rss_bytes() -> int:
    """The kernel's RSS high-water mark (VmHWM) of this process."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


async def _lag_probe(out: list[tuple[float, float]]) -> None:
    monotonic = time.monotonic
    while True:
        start = monotonic()
        await asyncio.sleep(PROBE_PERIOD)
        now = monotonic()
        out.append((now, max(0.0, now - start - PROBE_PERIOD)))


async def _sampler(
    out: list[tuple[float, int, float, int]], recorder: Recorder, interval: float
) -> None:
    while True:
        out.append((time.monotonic(), rss_bytes(), time.process_time(), recorder.pending))
        await asyncio.sleep(interval)


class _GcWatch:
    """Times the cyclic garbage collector's pauses (they stall the event loop)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.longest = 0.0
        self.full_collections = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.total += pause
        self.longest = max(self.longest, pause)
        self.full_collections += info.get("generation") == 2


class _StopSignal:
    """Reads ``stop <window_start>`` from stdin (hold mode)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.window_start: float | None = None
        self._buffer = b""

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(sys.stdin.fileno(), self._readable)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(Exception):
            loop.remove_reader(sys.stdin.fileno())

    def _readable(self) -> None:
        chunk = os.read(sys.stdin.fileno(), 4096)
        if not chunk:
            self.event.set()
            return
        self._buffer += chunk
        if b"\n" in self._buffer:
            words = self._buffer.split(b"\n", 1)[0].split()
            if len(words) >= 2 and words[0] == b"stop":
                self.window_start = float(words[1])
            self.event.set()


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def _window(
    samples: list[tuple[float, int, float, int]],
    lags: list[tuple[float, float]],
    start: float,
    end: float,
) -> dict[str, Any]:
    """Figures over the hold window: RSS plateau, idle CPU share, loop lag."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2:
        return {}
    rss = sorted(s[1] for s in inside)
    cpu = (inside[-1][2] - inside[0][2]) / max(inside[-1][0] - inside[0][0], 1e-9)
    window_lags = [lag for t, lag in lags if start <= t <= end]
    return {
        "start": start,
        "end": end,
        "rss_plateau": rss[len(rss) // 2],
        "pending": inside[-1][3],
        "cpu_share": cpu,
        "loop_lag_p99": _percentile(window_lags, 0.99),
        "loop_lag_max": max(window_lags, default=None),
    }


async def measure(contender: Contender, prepared: Any, spec: RunSpec) -> dict[str, Any]:
    """Run the contender once under the probes; return the raw figures."""
    loop = asyncio.get_running_loop()
    recorder = Recorder(spec.n)
    samples: list[tuple[float, int, float, int]] = []
    lags: list[tuple[float, float]] = []
    stop = _StopSignal()
    if spec.hold:
        stop.attach(loop)
    gc.collect()
    gc_watch = _GcWatch()
    gc.callbacks.append(gc_watch)
    rss_base = rss_bytes()
    probe = loop.create_task(_lag_probe(lags))
    sampler = loop.create_task(_sampler(samples, recorder, spec.sample_interval))
    t_start = time.monotonic()
    cpu_start = time.process_time()
    print(f"START {t_start!r}", flush=True)
    run = loop.create_task(contender.run(prepared, spec, recorder))
    stopper = loop.create_task(stop.event.wait())
    error: str | None = None
    await asyncio.wait({run, stopper}, timeout=spec.wall_cap, return_when=asyncio.FIRST_COMPLETED)
    capped = not run.done() and not stop.event.is_set()
    stopped = not run.done() and stop.event.is_set()
    t_stop = time.monotonic()
    hold: dict[str, Any] = {}
    if stopped and stop.window_start is not None:
        hold = _window(samples, lags, stop.window_start, t_stop)
    if not run.done():
        run.cancel()
    try:
        await asyncio.wait_for(run, timeout=60.0)
    except asyncio.CancelledError:
        pass
    except Exception:
        error = traceback.format_exc()
    t_end = time.monotonic()
    cpu = time.process_time() - cpu_start
    stopper.cancel()
    probe.cancel()
    sampler.cancel()
    stop.detach(loop)
    gc.callbacks.remove(gc_watch)
    peak = peak_rss_bytes()
    return {
        "contender": spec.contender,
        "t_start": t_start,
        "t_stop": t_stop,
        "t_end": t_end,
        "cpu_s": cpu,
        "rss_base": rss_base,
        "rss_peak": peak,
        "rss_end": rss_bytes(),
        "capped": capped,
        "stopped": stopped,
        "error": error,
        "counters": recorder.counters,
        "double_resolved": recorder.double,
        "created": recorder.created_count,
        "task_ids": recorder.task_ids,
        "resolved_at": recorder.resolved_at,
        "status": list(recorder.status),
        "samples": samples,
        "lags": lags,
        "hold": hold,
        "gc": {
            "pause_total_s": gc_watch.total,
            "longest_pause_s": gc_watch.longest,
            "full_collections": gc_watch.full_collections,
        },
    }


def _wait_for_server(base_url: str, timeout: float = 60.0) -> None:
    """Block until the simulator accepts connections (both processes start together)."""
    host, port = urllib.parse.urlsplit(base_url).hostname, urllib.parse.urlsplit(base_url).port
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host or "127.0.0.1", port or 80), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``SPEC.json OUT.json``."""
    args = list(sys.argv[1:] if argv is None else argv)
    spec = RunSpec.load(Path(args[0]))
    _pin(spec.cpu)
    if os.environ.get("RUXA_BENCH_DEBUG"):  # the controller's decisions, in the kept client log
        logging.basicConfig(format="%(created).3f %(message)s")
        logging.getLogger("ruxa_async").setLevel(logging.DEBUG)
    module: Any = importlib.import_module(spec.module)
    contender: Contender = module
    prepared = contender.prepare(spec.jobs(), spec)
    _wait_for_server(spec.base_url)
    result = asyncio.run(measure(contender, prepared, spec))
    Path(args[1]).write_text(json.dumps(result), encoding="utf-8")
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
