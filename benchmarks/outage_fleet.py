"""Outages in a fleet (issue 16, scenario E of ``benchmarks/outage.py``).

Four worker processes, each a ``RuxaClient`` querying the simulator steadily,
share one account; the simulator (its own process) drops every request for
``seconds``. With a ``RedisCoordinator`` the fleet shares one outage gate and
one prober; without one, each process probes for itself. The simulator counts
the requests it receives while down (``outage_requests``), so the figure is
the fleet's request rate against a service that is down.

Run through ``python -m benchmarks.outage --only E``; the worker side is
``python -m benchmarks.outage_fleet worker ...`` (started by the harness).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/outage_fleet.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
NB = "google/nano-banana"
PROCS = 4
LOOPS = 8  # query loops per worker, each one request at a time


# ------------------------------------------------------------------ the worker


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    from ruxa_async import OutagePolicy, RuxaClient
    from ruxa_async.redis import RedisCoordinator

    coordinator = RedisCoordinator(args.redis, namespace=args.namespace) if args.redis else None
    client = RuxaClient(
        args.key,
        base_url=args.url,
        coordinator=coordinator,
        outage=OutagePolicy(max_outage=600.0),
    )
    async with client:
        task_id = await client.create_task(NB, {"prompt": f"outage fleet {args.namespace}"})
        print(json.dumps({"ready": True}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the start line
        stop = time.monotonic() + args.seconds

        async def loop() -> None:
            while time.monotonic() < stop:
                await client.get_task(task_id)
                await asyncio.sleep(0.05)

        await asyncio.gather(*(loop() for _ in range(LOOPS)))
        stats = client.statistics()
    return {
        "requests": stats.requests_sent,
        "probes": stats.outage.probes,
        "outages": stats.outage.outages,
        "fleet_closes": stats.outage.fleet_closes,
        "fleet_reopens": stats.outage.fleet_reopens,
        "down_seconds": stats.outage.down_seconds,
    }


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--redis", default="")
    parser.add_argument("--namespace", default="bench")
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    result = asyncio.run(_worker(args))
    print(json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------- the harness


async def _readline(proc: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        raise RuntimeError("a worker exited early")
    data: dict[str, Any] = json.loads(line)
    return data


async def fleet_row(
    sim: Any,
    key: str,
    redis_url: str | None,
    *,
    outage: float,
    env: dict[str, str],
    until_up: Callable[[Any], Awaitable[None]],
) -> dict[str, Any]:
    """One variant: PROCS workers, ``outage`` seconds of "drop" two seconds into their load."""
    lead, tail = 2.0, 4.0
    argv = [sys.executable, "-m", "benchmarks.outage_fleet", "worker", "--url", sim.url]
    argv += ["--key", key, "--seconds", str(lead + outage + tail)]
    argv += ["--namespace", f"of{uuid.uuid4().hex[:8]}"]
    if redis_url:
        argv += ["--redis", redis_url]
    procs = [
        await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, cwd=ROOT
        )
        for _ in range(PROCS)
    ]
    try:
        for proc in procs:
            await _readline(proc, 60)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        await asyncio.sleep(lead)
        before = (await sim.stats())["outage_requests"]
        await sim.outage("drop", outage)
        await asyncio.sleep(1.0)
        first = (await sim.stats())["outage_requests"]
        await until_up(sim)
        after = (await sim.stats())["outage_requests"]
        results = [await _readline(proc, lead + outage + tail + 60) for proc in procs]
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 30)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return {
        "variant": "fleet (RedisCoordinator)" if redis_url else "no coordinator",
        "processes": PROCS,
        "outage s": outage,
        "server requests while down": after - before,
        "of them in the first second": first - before,
        "per second after the first": round((after - first) / (outage - 1.0), 2),
        "probes (all processes)": sum(r["probes"] for r in results),
        "processes told by the fleet": sum(r["fleet_closes"] > 0 for r in results),
        "resumed by another's probe": sum(r["fleet_reopens"] for r in results),
        "down s per process (median)": round(
            statistics.median(r["down_seconds"] for r in results), 1
        ),
        "requests per process (median)": statistics.median(r["requests"] for r in results),
    }


async def scenario_e(
    simulator: Callable[..., Any],
    key: str,
    env: dict[str, str],
    until_up: Callable[[Any], Awaitable[None]],
    quick: bool,
) -> list[dict[str, Any]]:
    """Both variants against one simulator each; a private ``redis-server`` for the fleet."""
    from tests.services import redis_server

    outage = 6.0 if quick else 12.0
    rows = []
    with redis_server() as redis:
        for redis_url in (redis.url, None):
            async with simulator() as sim:
                row = await fleet_row(
                    sim, key, redis_url, outage=outage, env=env, until_up=until_up
                )
            print(f"E {row['variant']}: {row}", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def goal_line(rows: list[dict[str, Any]]) -> str:
    """Met when the fleet sends about one probe per second while down, not one per process."""
    by = {row["variant"]: row for row in rows}
    fleet = by.get("fleet (RedisCoordinator)")
    alone = by.get("no coordinator")
    if fleet is None or alone is None:
        return "- E: not run"
    rate, other = fleet["per second after the first"], alone["per second after the first"]
    ok = rate <= 2.0 and rate < other
    seconds = fleet["outage s"]
    return (
        f"- E, {fleet['processes']} processes: {rate} requests/s reach the service while it is "
        f"down with a fleet gate, {other} without a coordinator "
        f"({'met' if ok else 'MISSED'}: <= 2 per second for the fleet); probes sent in "
        f"{seconds:g} s: {fleet['probes (all processes)']} by the fleet, "
        f"{alone['probes (all processes)']} without a coordinator"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit("run it through `python -m benchmarks.outage --only E`")
