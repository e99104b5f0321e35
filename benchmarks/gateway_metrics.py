"""``python -m benchmarks.gateway_metrics``: what a fleet-wide ``/metrics`` scrape costs.

One ``redis-server`` holding the ledgers of N users (each in the users index
with a ledger of the current day) and one gateway on it, in this process. For
each N, the gateway's ``/metrics`` rendering (the read of every listed user's
ledger from Redis, one script call, then the Prometheus text) is timed over a
series of scrapes: latency p50/p99, this process' CPU per scrape, Redis' own
time per script call (``INFO commandstats``) and the size of the text. At most
2,000 users of the index are listed (``LISTED_USERS``), so the cost stops growing there. The
calibration ``c_req`` (CPU of a bare aiohttp GET to the simulator) is measured
in the same run. Writes ``benchmarks/results-gateway-metrics.md``; ``--smoke``
is a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/gateway_metrics.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import redis as redis_sync

from benchmarks._procs import Simulator
from benchmarks.gateway import _pct
from benchmarks.gateway_redis import _calibrate
from ruxa_async.gateway import Gateway, GatewayConfig, StateSettings
from ruxa_async.gateway._metrics import LISTED_USERS, prometheus_exposition
from ruxa_async.gateway._policy import window_bounds

OUT = Path(__file__).resolve().parent / "results-gateway-metrics.md"
NAMESPACE = "ruxa-gateway"


def _populate(url: str, users: int) -> None:
    """``users`` users in the index, each with a ledger of today."""
    now = time.time()
    period = window_bounds("day", now)[0]
    conn = redis_sync.Redis.from_url(url)
    try:
        conn.flushall()
        for start in range(0, users, 5000):
            pipe = conn.pipeline(transaction=False)
            for i in range(start, min(users, start + 5000)):
                user = f"user{i:06d}"
                pipe.zadd(f"{NAMESPACE}:users", {user: now - i})
                pipe.hset(
                    f"{NAMESPACE}:ledger:user:{user}:{period}",
                    mapping={"spent": f"{i % 97}.5", "held": "4"},
                )
            pipe.execute()
        conn.config_resetstat()
    finally:
        conn.close()


def _script_usec(url: str) -> tuple[float, int]:
    """Redis' time per EVALSHA call and the number of calls since the last reset."""
    conn = redis_sync.Redis.from_url(url)
    try:
        stats = conn.info("commandstats").get("cmdstat_evalsha", {})
    finally:
        conn.close()
    return float(stats.get("usec_per_call", 0.0)), int(stats.get("calls", 0))


async def _measure(url: str, scrapes: int) -> dict[str, Any]:
    config = GatewayConfig(signing_secret="bench", state=StateSettings(redis_url=url, timeout=5.0))
    async with Gateway(config) as gw:
        render = prometheus_exposition(gw)
        assert render is not None
        for _ in range(3):
            await render()
        _script_usec(url)
        redis_sync.Redis.from_url(url).config_resetstat()
        latencies: list[float] = []
        cpu = time.process_time()
        size = 0
        for _ in range(scrapes):
            started = time.perf_counter()
            body, _ = await render()
            latencies.append(time.perf_counter() - started)
            size = len(body)
        cpu = time.process_time() - cpu
        usec, calls = _script_usec(url)
        series = body.count(b"\nruxa_gateway_spend_credits{")
    return {
        "p50_ms": 1000 * _pct(latencies, 0.5),
        "p99_ms": 1000 * _pct(latencies, 0.99),
        "cpu_ms": 1000 * cpu / scrapes,
        "redis_ms": usec / 1000,
        "calls_per_scrape": calls / scrapes,
        "kib": size / 1024,
        "listed": series,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=30, help="per figure")
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    args = parser.parse_args()
    sizes = (100, 1_000) if args.smoke else (100, 1_000, 2_000, 10_000, 50_000)
    scrapes = 5 if args.smoke else args.scrapes
    from tests.services import redis_server

    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmpdir, redis_server() as redis:
        sim_config = {"default_behavior": {"median_seconds": 36000, "sigma": 0}, "seed": 1}
        with Simulator(sim_config, Path(tmpdir), None, "sim") as sim:
            sim.wait_ready()
            c_req = asyncio.run(_calibrate(sim, 200 if args.smoke else 2000))
        for users in sizes:
            _populate(redis.url, users)
            results[users] = asyncio.run(_measure(redis.url, scrapes))
    _write(results, c_req, scrapes, args.smoke)


def _write(results: dict[int, dict[str, Any]], c_req: float, scrapes: int, smoke: bool) -> None:
    lines = [
        "# Gateway metrics in a fleet: what a scrape costs",
        "",
        f"`python -m benchmarks.gateway_metrics{' --smoke' if smoke else ''}`, {scrapes} scrapes "
        f"per figure, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
        f"{platform.python_version()}, {platform.machine()}. Calibration of this run: "
        f"c_req = {c_req:.0f} µs. A shared 2-core machine: timings are noisy.",
        "",
        "| users in Redis | users listed | scrape p50 / p99 ms | gateway CPU ms per scrape "
        "| Redis ms per scrape (script) | Redis calls per scrape | text KiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for users, r in results.items():
        lines.append(
            f"| {users:,} | {r['listed']:,} | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} "
            f"| {r['cpu_ms']:.1f} | {r['redis_ms']:.2f} | {r['calls_per_scrape']:.0f} "
            f"| {r['kib']:.0f} |"
        )
    lines += [
        "",
        "Each scrape reads the listed users' ledgers in one script call (Redis' own time in its "
        "column: Redis serves nobody else meanwhile), then renders the Prometheus text in the "
        f"gateway. At most {LISTED_USERS:,} users of the index are listed besides the "
        "configured ones (none here), so past that the cost no longer grows with the number "
        "of users.",
        "",
    ]
    OUT.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(json.dumps({"c_req_us": c_req, **{str(k): v for k, v in results.items()}}))


if __name__ == "__main__":
    main()
