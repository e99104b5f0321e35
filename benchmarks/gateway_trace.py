"""Where a gateway request's time goes, phase by phase, at 1 and at 32 in flight.

``python -m benchmarks.gateway_trace [--requests N] [--kinds query,create]
[--in-flight 1,32] [--strace] [--hog N]``

Runs the native simulator and the real standalone gateway
(``python -m ruxa_async gateway``, SQLite state, its light upstream client) with
``RUXA_GATEWAY_TRACE`` set (see ``ruxa_async/gateway/_trace.py``), drives it with
the overhead benchmark's light load generator, and prints the median (and p90)
of each phase of a request, the load generator's own latency, straight-to-the-
simulator latency for reference, and the SQLite commits (time, rows, rows in the journal).
Stamps are ``time.perf_counter()`` (CLOCK_MONOTONIC, shared by the processes),
so requests are assigned to a measurement by time.

``--strace`` also counts the gateway's system calls per request in each
measurement (``strace -c -f``; ``epoll_pwait`` per request is its loop turns,
roughly): it slows the gateway, so its latencies are not the native ones.
``--hog N`` runs N busy loops at ``nice 19`` during the measurements: the
gateway, simulator and load generator then win the CPU whenever they wake, but
each wake-up can wait for the hog's time slice to end (a crude slow spell).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks._loadgen import LightLoad
from benchmarks._procs import Child, Simulator, free_port
from benchmarks.gateway import BODY, _wait_up, _write_config
from benchmarks.gateway_count import _create

PHASES = (
    ("read>parsed", 0, 1),
    ("parsed>start", 1, 2),
    ("start>up_writing", 2, 8),
    ("up_writing>up_written", 8, 3),
    ("up_written>up_read", 3, 4),
    ("up_read>up_resumed", 4, 5),
    ("up_resumed>end", 5, 6),
    ("end>writing", 6, 9),
    ("writing>written", 9, 7),
    ("read>written", 0, 7),
)


async def _drive(
    load: LightLoad,
    payloads: list[bytes],
    total: int,
    in_flight: int,
    sent: list[tuple[float, float]] | None = None,
) -> list[float]:
    counter = iter(range(total))
    took: list[float] = []

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            took.append(await load.timed(payloads[i % len(payloads)]))
            if sent is not None:
                sent.append((started, time.perf_counter()))

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return took


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _syscalls(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m:
            counts[m.group(2)] = int(m.group(1))
    return counts


async def _run(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    sim_config = {"default_behavior": {"median_seconds": 36000, "sigma": 0}, "seed": 1}
    token = "rxu_bench-" + secrets.token_hex(8)
    trace = work / "trace.jsonl"
    windows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(Simulator(sim_config, work, None, "trace"))
        sim.wait_ready()
        config = work / "gateway.toml"
        _write_config(config, sim, token)
        port = free_port()
        argv = [sys.executable, "-m", "ruxa_async", "gateway"]
        argv += ["--config", str(config), "--port", str(port), "--loop", "uvloop"]
        os.environ["RUXA_GATEWAY_TRACE"] = str(trace)
        try:
            gw = stack.enter_context(Child(argv, work / "gateway.log", None))
        finally:
            del os.environ["RUXA_GATEWAY_TRACE"]
        load = LightLoad(f"http://127.0.0.1:{port}")
        direct = LightLoad(sim.url)
        stack.callback(load.close)
        stack.callback(direct.close)
        async with aiohttp.ClientSession() as session:  # until /healthz answers
            await _wait_up(session, f"http://127.0.0.1:{port}")
        ids = [await _create(port, token) for _ in range(64)]
        payloads = {
            "create": [load.payload("POST", "/api/v1/tasks/create", token, BODY)],
            "query": [load.payload("GET", f"/api/v1/tasks/query/{t}", token, None) for t in ids],
        }
        direct_payloads = {
            "create": [direct.payload("POST", "/api/v1/tasks/create", sim.api_key, BODY)],
            "query": [
                direct.payload("GET", f"/api/v1/tasks/query/{t}", sim.api_key, None)
                for t in ids  # unknown to the simulator's key? no: the gateway made them
            ],
        }
        hog = ["nice", "-n", "19", sys.executable, "-c", "while True: pass"]
        hogs = [subprocess.Popen(hog) for _ in range(args.hog)]  # noqa: ASYNC220 - before measuring
        try:
            for kind in args.kinds.split(","):
                for in_flight in (int(x) for x in args.in_flight.split(",")):
                    await _drive(load, payloads[kind], args.warmup, in_flight)
                    await _drive(direct, direct_payloads[kind], args.warmup, in_flight)
                    strace = None
                    if args.strace:
                        out = work / f"strace.{kind}.{in_flight}"
                        strace = await asyncio.create_subprocess_exec(
                            "strace", "-c", "-f", "-o", str(out), "-p", str(gw.pid)
                        )
                        await asyncio.sleep(1.0)
                    lat: list[float] = []
                    dlat: list[float] = []
                    sent: list[tuple[float, float]] = []
                    t0 = time.perf_counter()
                    rounds: list[float] = []  # each round's requests per second
                    spent = [0.0, 0.0]  # seconds driving the gateway, and straight to the simulator
                    for _ in range(args.rounds):  # alternated with direct, drift hits both
                        began = time.perf_counter()
                        got = await _drive(
                            load, payloads[kind], args.requests // args.rounds, in_flight, sent
                        )
                        lat += got
                        spent[0] += time.perf_counter() - began
                        rounds.append(len(got) / (time.perf_counter() - began))
                        began = time.perf_counter()
                        if strace is None:
                            dlat += await _drive(
                                direct,
                                direct_payloads[kind],
                                args.requests // args.rounds,
                                in_flight,
                            )
                        spent[1] += time.perf_counter() - began
                    t1 = time.perf_counter()
                    calls: dict[str, int] = {}
                    if strace is not None:
                        strace.send_signal(signal.SIGINT)
                        await asyncio.wait_for(strace.wait(), 30)
                        calls = _syscalls(work / f"strace.{kind}.{in_flight}")
                    windows.append(
                        {
                            "kind": kind,
                            "in_flight": in_flight,
                            "window": (t0, t1),
                            "client": lat,
                            "direct": dlat,
                            "calls": calls,
                            "n": len(lat),
                            "sent": sent,
                            "spent": spent,
                            "rounds": rounds,
                        }
                    )
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        gw.stop()
    if args.keep is not None:
        windows_file = args.keep.with_suffix(".windows.json")
        windows_file.write_text(
            json.dumps([{k: w[k] for k in ("kind", "in_flight", "window")} for w in windows])
        )
        args.keep.write_bytes(trace.read_bytes())
    for line in trace.read_text().splitlines():
        item = json.loads(line)
        if "frozen" in item:
            print(f"objects frozen at start-up (the GC skips them): {item['frozen']}")
            continue
        for w in windows:
            t0, t1 = w["window"]
            if "commit" in item:
                if t0 <= item["commit"][0] <= t1:
                    w.setdefault("commits", []).append(item)
            elif "gc" in item:
                if t0 <= item["gc"][0] <= t1:
                    w.setdefault("gc", []).append(item)
            elif (
                item["kind"] == w["kind"] and item["t"][0] is not None and t0 <= item["t"][0] <= t1
            ):
                w.setdefault("stamps", []).append(item["t"])
    return windows


def _report(windows: list[dict[str, Any]]) -> str:
    lines = []
    for w in windows:
        stamps = w.get("stamps", [])
        n = w["n"]
        head = f"{w['kind']} at {w['in_flight']} in flight ({n} requests, {len(stamps)} traced)"
        lines.append(head)
        client, dlat = w["client"], w["direct"]
        if dlat:
            rps = len(client) / w["spent"][0], len(dlat) / w["spent"][1]
            lines.append(
                f"  throughput {rps[0]:.0f}/s, direct {rps[1]:.0f}/s: "
                f"{100 * rps[0] / rps[1]:.0f} % "
                f"(rounds {'/'.join(f'{x:.0f}' for x in w['rounds'])})"
            )
            lines.append(
                f"  client p50 {1e3 * _q(client, 0.5):.3f} ms, direct p50 "
                f"{1e3 * _q(dlat, 0.5):.3f} ms, "
                f"added {1e3 * (_q(client, 0.5) - _q(dlat, 0.5)):+.3f}"
            )
        else:
            lines.append(f"  client p50 {1e3 * _q(client, 0.5):.3f} ms (under strace)")
        for name, a, b in PHASES:
            d = [s[b] - s[a] for s in stamps if s[a] is not None and s[b] is not None]
            if d:
                lines.append(
                    f"  {name:20s} p50 {1e6 * _q(d, 0.5):8.1f} us   p90 {1e6 * _q(d, 0.9):8.1f} us"
                )
        if w["in_flight"] == 1 and stamps:  # requests one at a time: match them by time
            inbound, outbound = [], []
            ordered = sorted(stamps, key=lambda s: s[0])
            starts = [s[0] for s in ordered]
            for begun, ended in w["sent"]:
                i = bisect.bisect_left(starts, begun)
                if i < len(ordered) and ordered[i][7] is not None and ordered[i][7] <= ended:
                    inbound.append(ordered[i][0] - begun)
                    outbound.append(ended - ordered[i][7])
            for name, d in (("client>read", inbound), ("written>client", outbound)):
                lines.append(
                    f"  {name:20s} p50 {1e6 * _q(d, 0.5):8.1f} us   p90 {1e6 * _q(d, 0.9):8.1f} us"
                )
        commits = w.get("commits", [])
        if commits:
            took = [c["commit"][1] - c["commit"][0] for c in commits]
            lines.append(
                f"  commits {len(commits)} ({len(commits) / max(1, n):.2f}/request): p50 "
                f"{1e6 * _q(took, 0.5):.1f} us, p90 {1e6 * _q(took, 0.9):.1f} us, rows "
                f"{statistics.mean(c['rows'] for c in commits):.1f}, journalled "
                f"{statistics.mean(c['journalled'] for c in commits):.1f}"
            )
            during = [c["commit"][1] - c["commit"][0] for c in commits if c.get("checkpointing")]
            if during:
                lines.append(
                    f"  commits while a checkpoint ran: {len(during)}, p50 "
                    f"{1e6 * _q(during, 0.5):.1f} us, p90 {1e6 * _q(during, 0.9):.1f} us, "
                    f"max {1e6 * max(during):.0f} us (all commits: max {1e6 * max(took):.0f} us)"
                )
        runs = w.get("gc", [])
        if runs:
            spent = sum(r["gc"][1] - r["gc"][0] for r in runs)
            by_gen = {g: sum(1 for r in runs if r["generation"] == g) for g in (0, 1, 2)}
            lines.append(
                f"  cyclic GC {1e6 * spent / max(1, n):.1f} us/request in {len(runs)} runs "
                f"(gen 0/1/2: {by_gen[0]}/{by_gen[1]}/{by_gen[2]}; longest "
                f"{1e3 * max(r['gc'][1] - r['gc'][0] for r in runs):.2f} ms)"
            )
        if w["calls"]:
            per = {k: v / n for k, v in sorted(w["calls"].items(), key=lambda kv: -kv[1])[:8]}
            lines.append("  syscalls/request " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Trace the gateway's requests phase by phase."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway_trace", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--kinds", default="query,create")
    parser.add_argument("--in-flight", default="1,32")
    parser.add_argument("--strace", action="store_true", help="count system calls per request")
    parser.add_argument("--hog", type=int, default=0, help="busy loops at nice 19 meanwhile")
    parser.add_argument("--keep", type=Path, help="copy the raw trace (JSON lines) here")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as work:
        if uvloop is not None:
            windows = uvloop.run(_run(args, Path(work)))
        else:  # pragma: no cover
            windows = asyncio.run(_run(args, Path(work)))
    print(_report(windows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
