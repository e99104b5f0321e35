"""``python -m benchmarks.gateway_redis``: what sharing the gateway's state through Redis costs.

One simulator and one ``redis-server``, each in its own process; gateways are
``ruxa-async gateway`` processes; the load generator is this process. Three
set-ups, measured one after the other in the same run:

* ``sqlite``: one gateway, the default in-memory/SQLite state;
* ``redis-1``: one gateway with ``--redis``;
* ``redis-2``: two gateways on one Redis; requests alternate between them and
  every query goes to the instance that did *not* create the task (so each one
  reads the ownership record from Redis);
* ``redis-2 rate``: the same with a user request rate (never reached) shared by
  the instances, so every query also spends a permit leased from Redis (64 per
  lease);
* ``redis-2 rate, lease 1``: the same with ``[state] rate_lease = 1``: a lease
  covers only the queries already waiting for one (at one in flight, every
  query is a Redis round trip).

Then, in this process, the permit path alone: two ``RedisFleet`` instances
spend permits of one user (32 concurrent callers), with ``rate_lease`` 64 and
1: CPU per permit and Redis calls per 1,000 permits.

For each: create and query latency (p50/p99, one request in flight) and
throughput (32 in flight), and the gateways' CPU per request. Tasks never
finish, so every query also goes upstream. The calibration ``c_req`` (CPU of a
bare aiohttp GET to the simulator, from this process) is measured in the same
run. Writes ``benchmarks/results-gateway-redis.md``; ``--smoke`` is a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/gateway_redis.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import aiohttp

from benchmarks._procs import Child, Simulator, cpu_seconds, free_port
from benchmarks.gateway import _pct, _wait_up
from ruxa_async.gateway import hash_token
from ruxa_async.gateway._redis_fleet import RedisFleet
from ruxa_async.gateway._redis_writer import GatewayRedis, Layout

OUT = Path(__file__).resolve().parent / "results-gateway-redis.md"
BODY = json.dumps({"model": "google/nano-banana", "input": {"prompt": "a red fox"}}).encode()
TOKEN = "rxu_bench-" + secrets.token_hex(8)
# name: (gateway instances, state in Redis, the user's (requests per second, burst) or None)
SETUPS: dict[str, tuple[int, bool, tuple[float, int] | None]] = {
    "sqlite": (1, False, None),
    "redis-1": (1, True, None),
    "redis-2": (2, True, None),
    "redis-2 rate": (2, True, (1e6, 1_000_000)),
    "redis-2 rate, lease 1": (2, True, (1e6, 1_000_000)),
}


class _Gateway(Child):
    def __init__(self, config: Path, work: Path, name: str, redis: str | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "ruxa_async", "gateway", "--config", str(config)]
        argv += ["--port", str(self.port)] + (["--redis", redis] if redis else [])
        super().__init__(argv, work / f"{name}.log", None)


async def _send(http: aiohttp.ClientSession, method: str, url: str, data: bytes | None) -> Any:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with http.request(method, url, data=data, headers=headers) as resp:
        reply = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{method} {url} -> {resp.status} {reply}")
        return reply


async def _loop(make: Callable[[int], Awaitable[Any]], total: int, width: int) -> list[float]:
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await make(i)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(width)))
    return latencies


async def _measure(urls: list[str], pids: list[int], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        for url in urls:
            await _wait_up(http, url)
        owner: list[int] = []
        ids: list[str] = []

        async def create(i: int) -> None:
            reply = await _send(http, "POST", f"{urls[i % len(urls)]}/api/v1/tasks/create", BODY)
            owner.append(i % len(urls))
            ids.append(reply["data"]["taskId"])

        async def query(i: int) -> None:
            j = i % len(ids)
            url = urls[(owner[j] + 1) % len(urls)]
            await _send(http, "GET", f"{url}/api/v1/tasks/query/{ids[j]}", None)

        await _loop(create, 100, 8)  # warm-up, and tasks to query
        await _loop(query, 100, 8)
        for kind, make in (("create", create), ("query", query)):
            latency = await _loop(make, n, 1)
            cpu = sum(cpu_seconds(p) for p in pids)
            started = time.perf_counter()
            await _loop(make, n, 32)
            took = time.perf_counter() - started
            out[kind] = {
                "p50_ms": 1000 * _pct(latency, 0.5),
                "p99_ms": 1000 * _pct(latency, 0.99),
                "rps": n / took,
                "gateway_cpu_us": 1e6 * (sum(cpu_seconds(p) for p in pids) - cpu) / n,
            }
    return out


async def _calibrate(sim: Simulator, n: int) -> float:
    headers = {"Authorization": f"Bearer {sim.api_key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(sim.url + "/api/v1/tasks/create", data=BODY) as resp:
            task_id = (await resp.json())["data"]["taskId"]
        url = f"{sim.url}/api/v1/tasks/query/{task_id}"

        async def get() -> None:
            async with http.get(url) as resp:
                await resp.read()

        await asyncio.gather(*(get() for _ in range(200)))
        cpu = time.process_time()
        await asyncio.gather(*(get() for _ in range(n)))
        return 1e6 * (time.process_time() - cpu) / n


async def _permits(url: str, lease: int, n: int, width: int = 32) -> dict[str, float]:
    """CPU per permit and Redis calls per 1,000 permits, two fleets on one Redis."""
    fleets: list[tuple[GatewayRedis, RedisFleet]] = []
    for i in range(2):
        redis = GatewayRedis(url, namespace=f"permits-{lease}", timeout=1.0)
        layout = Layout(redis, keep=60, ledger_ttl=60, hold=60, audit_maxlen=1000)
        fleets.append((redis, RedisFleet(redis, layout, max_lease=lease)))
    counter = iter(range(n))

    async def worker(k: int) -> None:
        fleet = fleets[k % 2][1]
        for _ in counter:
            if await fleet.request("bench", 1e6, 1_000_000) is not None:
                raise RuntimeError("a permit was refused")

    cpu = time.process_time()
    await asyncio.gather(*(worker(k) for k in range(width)))
    cpu = time.process_time() - cpu
    calls = sum(f.lease_calls for _, f in fleets)
    for redis, _ in fleets:
        await redis.aclose()
    return {"cpu_us": 1e6 * cpu / n, "calls_per_1000": 1000 * calls / n}


def _config(
    path: Path, sim: Simulator, rate: tuple[float, int] | None = None, lease: int = 64
) -> None:
    lines = ['signing_secret = "bench"', "sweep_interval = 3600", "[upstream]"]
    lines += [f'base_url = "{sim.url}"', "[[upstream.keys]]", 'name = "bench"']
    lines += [f'key = "{sim.api_key}"', "[users.bench]", f'token_sha256 = "{hash_token(TOKEN)}"']
    lines += ["budget = 1e12", "max_in_flight = 1000000"]
    if rate is not None:
        lines += [f"requests_per_second = {rate[0]:.1f}", f"burst = {rate[1]}"]
    lines += ["[state]", f"rate_lease = {lease}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per measurement")
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    parser.add_argument(
        "--only", nargs="*", choices=list(SETUPS), default=list(SETUPS), help="set-ups to run"
    )
    args = parser.parse_args()
    n = 100 if args.smoke else args.requests
    from tests.services import redis_server

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmpdir, redis_server() as redis:
        work = Path(tmpdir)
        sim_config = {"default_behavior": {"median_seconds": 36000, "sigma": 0}, "seed": 1}
        with Simulator(sim_config, work, None, "sim") as sim:
            sim.wait_ready()
            c_req = asyncio.run(_calibrate(sim, max(n, 1000)))
            for name in args.only:
                instances, shared, rate = SETUPS[name]
                config = work / f"gateway-{len(results)}.toml"
                _config(config, sim, rate, 1 if name.endswith("lease 1") else 64)
                url = redis.url if shared else None
                with contextlib.ExitStack() as stack:
                    gws = [
                        stack.enter_context(_Gateway(config, work, f"{name}-{i}", url))
                        for i in range(instances)
                    ]
                    results[name] = asyncio.run(
                        _measure([g.url for g in gws], [g.pid for g in gws], n)
                    )
        permits = {lease: asyncio.run(_permits(redis.url, lease, 10 * n)) for lease in (64, 1)}
    _write(results, permits, c_req, n, args.smoke)


def _write(
    results: dict[str, Any],
    permits: dict[int, dict[str, float]],
    c_req: float,
    n: int,
    smoke: bool,
) -> None:
    lines = [
        "# Gateway state in Redis: what sharing costs",
        "",
        f"`python -m benchmarks.gateway_redis{' --smoke' if smoke else ''}`, {n} requests per "
        f"figure, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
        f"{platform.python_version()}, {platform.machine()}. Calibration of this run: "
        f"c_req = {c_req:.0f} µs. A shared 2-core machine: timings are noisy.",
        "",
        "| set-up | create p50 / p99 ms | create req/s (32 in flight) | create gateway CPU µs "
        "| query p50 / p99 ms | query req/s | query gateway CPU µs |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        c, q = r["create"], r["query"]
        lines.append(
            f"| {name} | {c['p50_ms']:.2f} / {c['p99_ms']:.2f} | {c['rps']:.0f} "
            f"| {c['gateway_cpu_us']:.0f} | {q['p50_ms']:.2f} / {q['p99_ms']:.2f} "
            f"| {q['rps']:.0f} | {q['gateway_cpu_us']:.0f} |"
        )
    lines += [
        "",
        "`redis-2`: two gateways on one Redis, each query sent to the instance that did not "
        "create the task. `rate`: the user has a request rate (never reached) shared by the "
        "instances, so each query spends a permit leased from Redis: up to 64 per lease, or "
        "(`lease 1`) only as many as queries are waiting. Gateway CPU is summed over the "
        "gateway processes (Redis and the simulator not included).",
        "",
        f"The permit path alone, in this process ({10 * n} permits of one user, 32 concurrent "
        "callers over two instances on one Redis):",
        "",
        "| rate_lease | CPU µs per permit | Redis calls per 1,000 permits |",
        "|---|---|---|",
    ]
    lines += [
        f"| {lease} | {p['cpu_us']:.1f} | {p['calls_per_1000']:.1f} |"
        for lease, p in permits.items()
    ]
    lines += [""]
    OUT.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(json.dumps({"c_req_us": c_req, "permits": permits, **results}), file=sys.stderr)


if __name__ == "__main__":
    main()
