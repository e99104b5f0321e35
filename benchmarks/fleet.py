"""Fleet benchmark: P worker processes sharing one account through Redis.

``python -m benchmarks.fleet`` (``--tasks N`` to scale down) runs, side by side
against one standalone simulator whose create and query limits (100/s each)
are shared by the account, with a real ``redis-server``:

* the ideal: one process that knows the limits;
* P = 1, 2, 4, 8 processes with limits unknown and a RedisCoordinator, the
  tasks split evenly; and P = 1 and 4 without a coordinator (discovery alone,
  and a fleet of independent clients);
* every job submitted twice by two processes with one idempotency key;
* callback fan-in: the simulator calls back a process that does not await
  the task; the latency from its receipt to the awaiting process resolving;
* Redis killed mid-run: outcomes, duplicates and the degraded time.

Writes ``benchmarks/results-fleet.md``. Workers are this module run with
``--worker``; they wait at a start line so all begin together, and time
themselves on CLOCK_MONOTONIC (comparable across processes on Linux).
``FLEET_TRACE=dir`` writes each row's rate decisions (``trace-*.txt``, with
each 429's drain: the member's own sends weighed by its share, and the fleet
ledger's) and every grant time per process (``trace-*.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = "google/nano-banana"
KEY = "sk-fleet-bench"
LIMIT = 100.0
BURST = 10
OUT = ROOT / "benchmarks" / "results-fleet.md"


# ------------------------------------------------------------------ the worker


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    from ruxa_async import Job, RateLimits, RuxaClient, TaskInfo
    from ruxa_async._fleet import coordinator_from_url
    from ruxa_async.redis import RedisCoordinator

    limits = RateLimits()
    if args.known:
        limits = RateLimits(
            create_per_second=LIMIT, create_burst=BURST, query_per_second=LIMIT, query_burst=BURST
        )
    redis = RedisCoordinator(args.redis, namespace=args.namespace) if args.redis else None
    coordinator = redis if redis is not None else coordinator_from_url(None)
    received: dict[str, float] = {}
    grants: dict[str, list[float]] = {
        k: [] for k in ("create", "query", "create pace", "query pace")
    }
    trace = _trace_decisions(grants) if os.environ.get("FLEET_TRACE") else []
    callbacks = None
    if args.receiver:
        from ruxa_async.webhooks import CallbackServer

        def on_task(info: TaskInfo) -> None:
            received.setdefault(info.task_id, time.monotonic())

        callbacks = CallbackServer("127.0.0.1", 0, on_task=on_task)
    client = RuxaClient(
        KEY, base_url=args.url, rate_limits=limits, coordinator=coordinator, callbacks=callbacks
    )
    hops = _trace_fan_in(coordinator) if args.receiver or args.callback_url else {}
    async with client:
        print(json.dumps({"ready": True, "callback_url": client.callback_url}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the start line
        start = time.monotonic()
        cpu = time.process_time()
        calls = redis._store.calls if redis is not None else 0
        first, count = args.first, args.count
        jobs = [
            Job(model=MODEL, input={"prompt": f"{args.run} {i}"}, key=f"{args.run}-{i}")
            for i in range(first, first + count)
        ]
        resolved: dict[str, float] = {}
        errors = 0
        if args.receiver:
            await asyncio.to_thread(sys.stdin.readline)  # wait until the awaiting side is done
        elif args.keys or args.callback_url:
            gate = asyncio.Semaphore(200)

            async def one(job: Job) -> None:
                nonlocal errors
                async with gate:
                    try:
                        handle = await client.submit(
                            job.model,
                            job.input,
                            idempotency_key=job.key if args.keys else None,
                            callback_url=args.callback_url or None,
                        )
                        await handle
                        resolved[handle.task_id] = time.monotonic()
                    except Exception:
                        errors += 1

            await asyncio.gather(*(one(job) for job in jobs))
        else:
            report = await client.run_batch(jobs)
            errors = sum(1 for o in report.outcomes if not o.ok)
        end = time.monotonic()
        cpu = time.process_time() - cpu
        calls = (redis._store.calls if redis is not None else 0) - calls
        stats = client.statistics()
        fleet = stats.coordinator
        return {
            "start": start,
            "end": end,
            "errors": errors,
            "outcomes": count,
            "rate_limited": stats.rate_limited,
            "paused": stats.rate.paused_seconds,
            "episodes": stats.rate.episodes,
            "cpu": cpu,
            "redis_calls": calls,
            "permits": sum(stats.rate.permits.values()),
            "fleet_pauses": fleet.fleet_pauses if fleet else 0,
            "learned": {
                kind: [c.rate, c.estimated_limit] for kind, c in stats.rate.classes.items()
            },
            "degraded_seconds": fleet.degraded_seconds if fleet else 0.0,
            "degraded_events": fleet.degraded_events if fleet else 0,
            "leases": fleet.leases if fleet else 0,
            "leased_tokens": fleet.leased_tokens if fleet else 0,
            "resolved": resolved,
            "received": received,
            "trace": [(t - start, text) for t, text in trace],
            "grants": {
                kind: times if "pace" in kind else [t - start for t in times]
                for kind, times in grants.items()
            },
            "hops": hops,
        }


def _trace_decisions(grants: dict[str, list[float]]) -> list[tuple[float, str]]:
    """The rate controller's DEBUG decisions (429s, phase changes), stamped (``FLEET_TRACE``).

    ``grants`` receives every permit's grant time per kind: the fleet's sends, merged.
    """
    import logging

    lines: list[tuple[float, str]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if "429 on" in text or "pace:" in text or "gate" in text or "Redis" in text:
                lines.append((time.monotonic(), text))

    logger = logging.getLogger("ruxa_async")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Keep())

    from ruxa_async._limiter import RateController

    original = RateController.on_rate_limited

    async def every_429(self: RateController, permit: Any, *args: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        share = getattr(self._state, "share", None)
        shared = f", share {share(permit.kind):.2f}" if share is not None else ""
        lines.append(
            (now, f"429 ({permit.kind}, sent {now - permit.granted_at:.3f} s ago{shared})")
        )
        await original(self, permit, *args, **kwargs)

    RateController.on_rate_limited = every_429  # type: ignore[method-assign]
    grant = RateController._grant

    def granted(self: RateController, lane: Any, gate: Any, now: float) -> Any:
        grants[lane.kind].append(time.monotonic())
        grants[lane.kind + " pace"].append(lane.pace.rate)
        return grant(self, lane, gate, now)

    RateController._grant = granted  # type: ignore[method-assign]

    from ruxa_async._pace import Pace

    refused = Pace.on_refused

    def drains(
        self: Pace, granted_at: float, granted_rate: float, now: float, fleet: Any = None
    ) -> None:
        last, drain = self.last_drain, self._drain(granted_at)
        own = drain  # the member's sends, weighed by its share
        if fleet is not None:  # fitted on the fleet's ledger: show that
            drain, last = fleet[0], fleet[1] or last

        def shape(d: Any) -> str:
            return f"{len(d.times)} sends over {d.span:.2f} s" if d is not None else "none"

        text = (
            f"fit inputs: {self.phase} at base {self.base:.1f}, granted {granted_rate:.1f}; "
            f"drain {shape(drain)}; last {shape(last)}; burst {self.estimated_burst} "
            f"(fitted {self.burst_fitted}){' from the ledger' if fleet is not None else ''}"
        )
        lines.append((time.monotonic(), text))
        # the drains themselves (its own; the ledger's), to compare with the merged grants
        stamp = time.monotonic()
        ledger = list(fleet[0].times) if fleet is not None else None
        lines.append((stamp, "drain " + json.dumps([stamp, granted_at, list(own.times), ledger])))
        refused(self, granted_at, granted_rate, now, fleet)

    Pace.on_refused = drains  # type: ignore[method-assign]
    return lines


def _trace_fan_in(coordinator: Any) -> dict[str, float]:
    """Stamp each fan-in hop: B's publish sent (``published``), A's message (``heard``)."""
    stamps: dict[str, float] = {}
    publish, deliver = coordinator._publish, coordinator._deliver_callback

    async def published(batch: list[tuple[str, Any]]) -> bool:
        sent: bool = await publish(batch)
        now = time.monotonic()
        for _, info in batch:
            stamps.setdefault(info.task_id, now)
        return sent

    def heard(info: Any) -> None:
        stamps.setdefault(info.task_id, time.monotonic())
        deliver(info)

    coordinator._publish, coordinator._deliver_callback = published, heard
    return stamps


# ------------------------------------------------------------------ the harness


class Fleet:
    """Worker processes started together; their JSON reports."""

    def __init__(self, url: str, specs: list[list[str]]) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        base = [sys.executable, "-m", "benchmarks.fleet", "--worker", "--url", url]
        self.procs = [
            subprocess.Popen(
                base + spec, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
            )
            for spec in specs
        ]
        self.ready = [json.loads(self._line(p)) for p in self.procs]

    @staticmethod
    def _line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("a worker died before reporting")
        return line

    def go(self, procs: list[subprocess.Popen[str]] | None = None) -> None:
        for proc in procs or self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def reports(self, procs: list[subprocess.Popen[str]] | None = None) -> list[dict[str, Any]]:
        out = []
        for proc in procs or self.procs:
            out.append(json.loads(self._line(proc)))
            proc.wait(60)
        return out


def _sim(tmp: Path, **config: Any) -> Any:
    from tests.helpers_proc import SimProcess

    base = {
        "create_limit": {"per_second": LIMIT, "burst": BURST},
        "query_limit": {"per_second": LIMIT, "burst": BURST},
        "default_behavior": {"median_seconds": 2.0, "sigma": 0.4},
        "seed": 1,
    }
    return SimProcess(tmp, key=KEY, **{**base, **config})


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    size, extra = divmod(total, parts)
    spans, first = [], 0
    for i in range(parts):
        count = size + (1 if i < extra else 0)
        spans.append((first, count))
        first += count
    return spans


def calibrate(tmp: Path, requests: int = 5000) -> float:
    """c_req: client CPU per bare aiohttp keep-alive GET, 64 in flight (as ``benchmarks.run``)."""
    import aiohttp

    from benchmarks._calibrate import back_to_back_gets
    from benchmarks.baselines import _wire

    sim = _sim(tmp, create_limit=None, query_limit=None)

    async def measure() -> float:
        async with aiohttp.ClientSession(headers=_wire.headers(KEY)) as session:
            body = _wire.create_body(MODEL, {"prompt": "calibration"})
            async with session.post(sim.url + _wire.CREATE_PATH, json=body) as resp:
                task_id = (await _wire.checked_json(resp))["data"]["taskId"]
            url = sim.url + _wire.QUERY_PATH + task_id
            cpu = time.process_time()
            await back_to_back_gets(session, url, requests)
            return (time.process_time() - cpu) / requests * 1e6

    try:
        return asyncio.run(measure())
    finally:
        sim.close()


def run_fleet(
    tmp: Path, redis_url: str | None, procs: int, tasks: int, *, known: bool = False
) -> dict[str, Any]:
    """One configuration: makespan, 429s per 1,000 tasks, outcomes, duplicates."""
    sim = _sim(tmp)
    run, namespace = uuid.uuid4().hex[:6], f"bench{uuid.uuid4().hex[:6]}"
    try:
        specs = []
        for first, count in _split(tasks, procs):
            spec = ["--run", run, "--first", str(first), "--count", str(count)]
            spec += ["--namespace", namespace] + (["--redis", redis_url] if redis_url else [])
            specs.append(spec + (["--known"] if known else []))
        fleet = Fleet(sim.url, specs)
        sim_cpu = _cpu_of(sim.proc.pid)
        fleet.go()
        reports = fleet.reports()
        sim_cpu = _cpu_of(sim.proc.pid) - sim_cpu
        stats = sim.stats()
    finally:
        sim.close()
    makespan = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    if os.environ.get("FLEET_TRACE"):
        t0 = min(r["start"] for r in reports)
        timeline = sorted(
            (r["start"] - t0 + t, i, text) for i, r in enumerate(reports) for t, text in r["trace"]
        )
        path = Path(os.environ["FLEET_TRACE"]) / f"trace-p{procs}-{run}.txt"
        path.write_text("".join(f"{t:8.3f} p{i} {text}\n" for t, i, text in timeline))
        spans = [
            {"start": r["start"] - t0, "end": r["end"] - t0, "grants": r["grants"]} for r in reports
        ]
        path.with_suffix(".json").write_text(json.dumps(spans))
    cpu = sum(r["cpu"] for r in reports)
    permits = sum(r["permits"] for r in reports)
    rejected = stats["rate_limited_create"] + stats["rate_limited_query"]
    return {
        "procs": procs,
        "coordinator": redis_url is not None,
        "known": known,
        "makespan": makespan,
        "per_1000": 1000.0 * rejected / tasks,
        "errors": sum(r["errors"] for r in reports),
        "created": stats["tasks_created"],
        "duplicates": stats["duplicate_creates"],
        "requests_per_task": stats["requests"] / tasks,
        # where the time went: the pace each process ended at, pauses, 429 episodes
        "create_pace": statistics.median(r["learned"]["create"][0] for r in reports),
        "query_pace": statistics.median(r["learned"]["query"][0] for r in reports),
        "paused": statistics.median(r["paused"] for r in reports),
        "episodes": sum(r["episodes"] for r in reports),
        "per_lease": sum(r["leased_tokens"] for r in reports)
        / max(1, sum(r["leases"] for r in reports)),
        # CPU: the workers' (all together, per task), the busiest worker's share of one core,
        # the simulator's; Redis round trips per permit
        "cpu_us_per_task": 1e6 * cpu / tasks,
        "busiest_core": max(r["cpu"] / max(1e-9, r["end"] - r["start"]) for r in reports),
        "sim_cpu_us_per_task": 1e6 * sim_cpu / tasks,
        "redis_per_permit": sum(r["redis_calls"] for r in reports) / max(1, permits),
        "episodes_each": [r["episodes"] for r in reports],
        "remote_pauses": sum(r["fleet_pauses"] for r in reports),
        "degraded_events": sum(r["degraded_events"] for r in reports),
        "degraded_s": round(sum(r["degraded_seconds"] for r in reports), 2),
    }


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_twice(tmp: Path, redis_url: str, tasks: int) -> dict[str, Any]:
    """Two processes each submit every job, with the same idempotency keys."""
    sim = _sim(tmp)
    run, namespace = uuid.uuid4().hex[:6], f"bench{uuid.uuid4().hex[:6]}"
    try:
        spec = ["--run", run, "--first", "0", "--count", str(tasks), "--keys"]
        spec += ["--namespace", namespace, "--redis", redis_url]
        fleet = Fleet(sim.url, [spec, spec])
        fleet.go()
        reports = fleet.reports()
        stats = sim.stats()
    finally:
        sim.close()
    return {
        "jobs": tasks,
        "submits": 2 * tasks,
        "errors": sum(r["errors"] for r in reports),
        "created": stats["tasks_created"],
        "duplicates": stats["duplicate_creates"],
    }


def run_callbacks(tmp: Path, redis_url: str, tasks: int) -> dict[str, Any]:
    """The simulator calls back process B; process A awaits the tasks."""
    sim = _sim(tmp, create_limit=None, query_limit=None)
    run, namespace = uuid.uuid4().hex[:6], f"bench{uuid.uuid4().hex[:6]}"
    common = ["--run", run, "--namespace", namespace, "--redis", redis_url]
    try:
        receiver = Fleet(sim.url, [[*common, "--first", "0", "--count", "0", "--receiver"]])
        url = receiver.ready[0]["callback_url"]
        waiter = Fleet(sim.url, [[*common, "--first", "0", "--count", str(tasks), "--cb", url]])
        receiver.go()
        waiter.go()
        a = waiter.reports()[0]
        receiver.go()  # done: report
        b = receiver.reports()[0]
        stats = sim.stats()
    finally:
        sim.close()
    resolved, received = a["resolved"], b["received"]
    published, heard = b["hops"], a["hops"]
    lags = _quantiles(resolved[t] - received[t] for t in resolved if t in received)
    hops = {
        "B receipt -> B published": _quantiles(
            published[t] - received[t] for t in published if t in received
        ),
        "B published -> A heard": _quantiles(
            heard[t] - published[t] for t in heard if t in published
        ),
        "A heard -> A resolved": _quantiles(resolved[t] - heard[t] for t in resolved if t in heard),
    }
    return {
        "tasks": tasks,
        "via_callback": lags["n"],
        "queries": stats["queries"],
        **{f"{q}_ms": lags[q] for q in ("p50", "p99", "max")},
        "hops": hops,
    }


def _quantiles(values: Any) -> dict[str, float]:
    """p50/p99/max in milliseconds, and the count."""
    ms = sorted(1000.0 * v for v in values)
    if not ms:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    p99 = ms[int(0.99 * (len(ms) - 1))]
    return {"n": len(ms), "p50": statistics.median(ms), "p99": p99, "max": ms[-1]}


def run_outage(tmp: Path, tasks: int) -> dict[str, Any]:
    """Four processes; Redis is killed when about a third of the tasks were created."""
    from tests.services import RedisServer

    server = RedisServer()
    server.start()
    sim = _sim(tmp)
    run, namespace = uuid.uuid4().hex[:6], f"bench{uuid.uuid4().hex[:6]}"
    try:
        specs = [
            [
                *("--run", run, "--first", str(f), "--count", str(c)),
                "--namespace",
                namespace,
                "--redis",
                server.url,
            ]
            for f, c in _split(tasks, 4)
        ]
        fleet = Fleet(sim.url, specs)
        fleet.go()
        while sim.stats()["tasks_created"] < tasks // 3:
            time.sleep(0.05)
        server.stop()
        reports = fleet.reports()
        stats = sim.stats()
    finally:
        sim.close()
        server.close()
    return {
        "tasks": tasks,
        "outcomes": sum(r["outcomes"] for r in reports),
        "errors": sum(r["errors"] for r in reports),
        "created": stats["tasks_created"],
        "duplicates": stats["duplicate_creates"],
        "degraded_s": [round(r["degraded_seconds"], 1) for r in reports],
        "per_1000": 1000.0 * (stats["rate_limited_create"] + stats["rate_limited_query"]) / tasks,
    }


def _row_names(row: dict[str, Any]) -> tuple[str, str]:
    """A fleet row's first two cells: its processes (or the ideal) and its coordinator."""
    label = "ideal: 1, limits known" if row["known"] else str(row["procs"])
    return label, "Redis" if row["coordinator"] else "none"


def _fleet_section(ideal: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Makespan and 429s, limits unknown (goal: <= 1.15x ideal, <= 10 429s per 1,000)",
        "",
        "| processes | coordinator | makespan s | x ideal | 429s per 1,000 | requests/task "
        "| errors | created | duplicates | final pace create/query | paused s | episodes "
        "| tokens per lease |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in [ideal, *rows]:
        label, coordinator = _row_names(row)
        per_lease = f"{row['per_lease']:.1f}" if row["coordinator"] else "-"
        lines.append(
            f"| {label} | {coordinator} | {row['makespan']:.1f} | "
            f"{row['makespan'] / ideal['makespan']:.2f} | {row['per_1000']:.1f} | "
            f"{row['requests_per_task']:.2f} | {row['errors']} | {row['created']} | "
            f"{row['duplicates']} | {row['create_pace']:.0f}/{row['query_pace']:.0f} | "
            f"{row['paused']:.1f} | {row['episodes']} | {per_lease} |"
        )
    lines += [
        "",
        "*final pace*: the median over processes of the pace each ended at (req/s, the fleet's "
        "pace when shared); *paused s*: median time a process's 429 gate was closed; "
        "*episodes*: 429 episodes begun (each lowers the pace once); *tokens per lease*: "
        "permits per Redis round trip for the shared bucket.",
        "",
        "### Where the CPU and the pauses go",
        "",
        "| processes | coordinator | workers' CPU µs/task | busiest worker, share of a core "
        "| simulator CPU µs/task | Redis round trips per permit | episodes per process "
        "| gates copied from the fleet |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in [ideal, *rows]:
        label, coordinator = _row_names(row)
        lines.append(
            f"| {label} | {coordinator} | {row['cpu_us_per_task']:.0f} | "
            f"{row['busiest_core']:.2f} | {row['sim_cpu_us_per_task']:.0f} | "
            f"{row['redis_per_permit']:.2f} | {row['episodes_each']} | {row['remote_pauses']} |"
        )
    lines += [
        "",
        "*workers' CPU*: every worker process's CPU time during the run, summed, per task; "
        "*busiest worker*: the largest CPU time / wall time of one worker (1.0 is a whole core); "
        "*episodes per process*: 429 episodes each process began; *gates copied*: gates other "
        "processes closed, heard through pub/sub.",
        "",
    ]
    return lines


def _twice_section(twice: dict[str, Any]) -> list[str]:
    return [
        "## Every job submitted twice by two processes, same idempotency key (goal: 0 duplicates)",
        "",
        f"{twice['jobs']} jobs, {twice['submits']} submits: {twice['created']} tasks created, "
        f"{twice['duplicates']} duplicate creates, {twice['errors']} errors. The SIGKILL case "
        "(a taskiq worker killed mid-batch, its jobs redelivered) is "
        "`tests/test_fleet_workers.py::test_taskiq_worker_killed_mid_batch_creates_nothing_twice`.",
        "",
    ]


def _callbacks_section(cb: dict[str, Any]) -> list[str]:
    return [
        "## Callback fan-in (goal: resolved within 100 ms of delivery)",
        "",
        f"{cb['tasks']} tasks awaited by process A, every callback delivered to process B: "
        f"{cb['via_callback']} resolved through the fleet; latency from B's receipt to A's "
        f"resolution p50 {cb['p50_ms']:.1f} ms, p99 {cb['p99_ms']:.1f} ms, max "
        f"{cb['max_ms']:.1f} ms; {cb['queries']} status queries in all. Per hop (ms):",
        "",
        "| hop | p50 | p99 | max |",
        "| --- | --- | --- | --- |",
        *(
            f"| {hop} | {q['p50']:.1f} | {q['p99']:.1f} | {q['max']:.1f} |"
            for hop, q in cb["hops"].items()
        ),
        "",
    ]


def _outage_section(outage: dict[str, Any]) -> list[str]:
    return [
        "## Redis killed mid-run (4 processes)",
        "",
        f"{outage['tasks']} tasks: {outage['outcomes']} outcomes, {outage['errors']} errors, "
        f"{outage['created']} created, {outage['duplicates']} duplicates, "
        f"{outage['per_1000']:.1f} 429s per 1,000; degraded seconds per process "
        f"{outage['degraded_s']}.",
        "",
    ]


def _header(argv: list[str], c_req: float, loads: list[float], wall: float) -> list[str]:
    return [
        "# Fleet benchmark (issue 13)",
        "",
        f"`python -m benchmarks.fleet {' '.join(argv)}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; one run, all rows side by side. "
        "A shared 2-vCPU VM (other engineers' jobs running): timings are noisy, counts are "
        f"exact. Calibration c_req {c_req:.0f} µs (bare aiohttp GET, this run); 1-minute load "
        f"average {min(loads):.1f} to {max(loads):.1f} during the run. Simulator: create and query "
        f"limits {LIMIT:g}/s (burst {BURST}) for the whole account, task durations lognormal "
        f"(median 2 s). Total wall time {wall:.0f} s.",
        "",
    ]


SECTIONS = ("fleet", "twice", "callbacks", "outage")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--worker``, one worker process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--procs", default="1,2,4,8")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}"
    )
    parser.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the rows without a coordinator (P = 1 and 4)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--url", "--redis", "--namespace", "--run", "--cb"):
        parser.add_argument(flag, default="", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    for flag in ("--known", "--keys", "--receiver"):
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.callback_url = args.cb
        profile = os.environ.get("FLEET_PROFILE")  # a directory: one cProfile dump per worker
        if profile:
            import cProfile

            with cProfile.Profile() as profiler:
                report = asyncio.run(_worker(args))
            profiler.dump_stats(Path(profile) / f"worker-{args.run}-{args.first}.prof")
        else:
            report = asyncio.run(_worker(args))
        print(json.dumps(report), flush=True)
        return 0
    from tests.services import redis_server

    only = set(args.only.split(","))
    started = time.monotonic()
    loads = [os.getloadavg()[0]]
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmpdir, redis_server() as redis:
        tmp = Path(tmpdir)
        c_req = calibrate(tmp)
        print(f"c_req {c_req:.0f} us", flush=True)
        if "fleet" in only:
            ideal = run_fleet(tmp, None, 1, args.tasks, known=True)
            print("ideal", ideal, flush=True)
            rows = []
            for procs in (int(p) for p in args.procs.split(",")):
                rows.append(run_fleet(tmp, redis.url, procs, args.tasks))
                loads.append(os.getloadavg()[0])
                print(rows[-1], flush=True)
            for procs in (1, 4) if args.baselines else ():  # discovery alone; no coordinator
                rows.append(run_fleet(tmp, None, procs, args.tasks))
                print(rows[-1], flush=True)
            lines += _fleet_section(ideal, rows)
        if "twice" in only:
            twice = run_twice(tmp, redis.url, max(100, args.tasks // 4))
            print(twice, flush=True)
            lines += _twice_section(twice)
        if "callbacks" in only:
            cb = run_callbacks(tmp, redis.url, max(100, args.tasks // 20))
            print(cb, flush=True)
            lines += _callbacks_section(cb)
        if "outage" in only:
            outage = run_outage(tmp, max(200, args.tasks // 4))
            print(outage, flush=True)
            lines += _outage_section(outage)
    loads.append(os.getloadavg()[0])
    shown = sys.argv[1:] if argv is None else argv
    text = "\n".join(_header(shown, c_req, loads, time.monotonic() - started) + lines)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
