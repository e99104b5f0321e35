"""``python -m benchmarks.gateway``: the key-holding gateway's cost and its bookkeeping at scale.

Two parts, written to ``benchmarks/results-gateway.md``:

1. Overhead: the same requests straight to the simulator and through the
   gateway, side by side in one run (the simulator and the gateway each in
   their own process; the load generator here). Latency with one request in
   flight (p50/p99, alternating direct and gateway blocks so drift hits both
   alike), throughput with 32 in flight. Queries are of tasks that never
   finish, so every gateway query goes upstream (settled tasks are answered
   from the gateway's own record and would flatter it).
2. Scale: 1,000 users with budgets, 10,000 tasks through one gateway. Every
   user tries one task more than the budget allows, and reads other users'
   tasks. Checks: zero overruns, zero cross-user reads, and the gateway's
   audit log, statistics and metrics agree with the simulator's counters.

``--smoke`` runs a few seconds of each, for CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import platform
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/gateway.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import aiohttp

from benchmarks._loadgen import LightLoad
from benchmarks._procs import Child, Simulator, cpu_seconds, free_port
from ruxa_async.gateway import Gateway, GatewayConfig, Policy, UpstreamKey, UserEntry, hash_token
from ruxa_async.testing import FakeRuxa, ModelBehavior, SimConfig

OUT = Path(__file__).resolve().parent / "results-gateway.md"
NB = "google/nano-banana"
BODY = json.dumps({"model": NB, "input": {"prompt": "a red fox"}}).encode()


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- part 1: overhead -----------------------------------------------------------------------


class GatewayProcess(Child):
    """``python -m ruxa_async gateway --config ... --loop LOOP`` on a known loopback port."""

    def __init__(
        self,
        config: Path,
        work: Path,
        profile: Path | None = None,
        loop: str = "auto",
        name: str = "gateway",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable]
        if profile is not None:  # written when the gateway stops on SIGTERM
            argv += ["-m", "cProfile", "-o", str(profile)]
        argv += ["-m", "ruxa_async", "gateway", "--config", str(config)]
        argv += ["--port", str(self.port), "--loop", loop]
        super().__init__(argv, work / f"{name}.log", None)


class PassthroughProcess(Child):
    """A proxy with no logic (``benchmarks._passthrough``): a ceiling for the gateway."""

    def __init__(self, kind: str, upstream: str, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "benchmarks._passthrough", "--kind", kind]
        argv += ["--upstream", upstream, "--port", str(self.port), "--loop", "uvloop"]
        super().__init__(argv, work / f"passthrough-{kind}.log", None)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the proxy prints ``ready``."""
        if self.line(timeout) != "ready":
            raise RuntimeError(f"the passthrough did not start:\n{self.log_tail()}")


async def _wait_up(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(300):
        try:
            async with session.get(url + "/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


async def _timed(
    session: aiohttp.ClientSession, method: str, url: str, key: str, data: bytes | None
) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    started = time.perf_counter()
    async with session.request(method, url, data=data, headers=headers) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {url} -> {resp.status}")
    return time.perf_counter() - started


async def _closed_loop(
    make: Callable[[int], Awaitable[float]], total: int, concurrency: int
) -> tuple[list[float], float]:
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            latencies.append(await make(i))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


#: Every route the overhead part can measure: (name, what it is). ``direct`` is always run.
ROUTES = {
    "direct": "straight to the simulator",
    "gateway-uvloop": "the gateway on uvloop (its default when uvloop is installed)",
    "gateway-asyncio": "the gateway on the standard asyncio loop (`--loop asyncio`)",
    "gateway-uvloop-aiohttp": "the gateway on uvloop relaying through aiohttp's client "
    '(`upstream_http = "aiohttp"`) instead of its own light HTTP/1.1 client',
    "passthrough-aiohttp": "ceiling: aiohttp low-level server + ClientSession, no logic (uvloop)",
    "passthrough-raw": "ceiling: raw asyncio byte pipe, no HTTP parsing at all (uvloop)",
}
THROUGHPUT_IN_FLIGHT = 32


def _steal_ticks() -> tuple[int, int] | None:
    """The host's steal and all CPU ticks so far (``/proc/stat``), or None off Linux.

    Steal is time this VM's virtual CPUs were ready to run but the host ran something
    else: a "slow spell" of the machine shows up here, not in any process's CPU time.
    """
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def _steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def _write_config(path: Path, sim: Simulator, user_token: str, http: str = "auto") -> None:
    """A gateway config with its own SQLite state file beside it (as a deployment has)."""
    state = path.with_suffix(".sqlite3")
    path.write_text(
        "\n".join(
            [
                'signing_secret = "bench"',
                f'upstream_http = "{http}"',
                "sweep_interval = 3600",
                f'state_path = "{state}"',
                "[upstream]",
                f'base_url = "{sim.url}"',
                "[[upstream.keys]]",
                'name = "bench"',
                f'key = "{sim.api_key}"',
                "[users.bench]",
                f'token_sha256 = "{hash_token(user_token)}"',
            ]
        )
        + "\n",
        encoding="utf-8",
    )


async def _overhead(
    work: Path,
    requests: int,
    rounds: int,
    routes: list[str],
    profile: Path | None = None,
    load_client: str = "light",
) -> dict[str, Any]:
    """Latency and throughput of each route in ``routes`` (plus ``direct``), interleaved."""
    sim_config = {"default_behavior": {"median_seconds": 36000, "sigma": 0}, "seed": 1}
    user_token = "rxu_bench-" + secrets.token_hex(8)
    routes = ["direct"] + [r for r in routes if r != "direct"]
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(Simulator(sim_config, work, None, "overhead"))
        sim.wait_ready()
        procs: dict[str, Child] = {"direct": sim}
        targets: dict[str, tuple[str, str]] = {"direct": (sim.url, sim.api_key)}
        for route in routes[1:]:
            kind, variant = route.split("-", 1)
            if kind == "gateway":
                loop, _, http = variant.partition("-")
                config = work / f"{route}.toml"
                _write_config(config, sim, user_token, http or "auto")
                gw = stack.enter_context(
                    GatewayProcess(
                        config, work, profile if variant == "uvloop" else None, loop, route
                    )
                )
                procs[route], targets[route] = gw, (gw.url, user_token)
            else:
                proxy = stack.enter_context(PassthroughProcess(variant, sim.url, work))
                proxy.wait_ready()
                procs[route], targets[route] = proxy, (proxy.url, sim.api_key)
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            ids: dict[str, list[str]] = {}
            for route, (base, key) in targets.items():
                if route.startswith("gateway"):
                    await _wait_up(session, base)
            for route, (base, key) in targets.items():
                if not route.startswith("gateway") and ids:
                    ids[route] = next(iter(ids.values()))
                    continue
                ids[route] = []
                for _ in range(64):  # a gateway answers queries of its own users' tasks only
                    async with session.post(
                        base + "/api/v1/tasks/create",
                        data=BODY,
                        headers={"Authorization": f"Bearer {key}"},
                    ) as resp:
                        ids[route].append((await resp.json())["data"]["taskId"])

            loads = {route: LightLoad(base) for route, (base, _) in targets.items()}
            for load in loads.values():
                stack.callback(load.close)

            def query(route: str) -> Callable[[int], Awaitable[float]]:
                base, key = targets[route]
                own = ids[route]
                if load_client == "light":
                    load = loads[route]
                    sends = [
                        load.payload("GET", f"/api/v1/tasks/query/{task}", key, None)
                        for task in own
                    ]
                    return lambda i: load.timed(sends[i % len(sends)])
                return lambda i: _timed(
                    session, "GET", f"{base}/api/v1/tasks/query/{own[i % len(own)]}", key, None
                )

            def create(route: str) -> Callable[[int], Awaitable[float]]:
                base, key = targets[route]
                if load_client == "light":
                    load = loads[route]
                    send = load.payload("POST", "/api/v1/tasks/create", key, BODY)
                    return lambda i: load.timed(send)
                return lambda i: _timed(session, "POST", f"{base}/api/v1/tasks/create", key, BODY)

            results: dict[str, Any] = {}
            n = requests // rounds
            for kind, make in (("query", query), ("create", create)):
                for route in routes:  # warm-up
                    await _closed_loop(make(route), 200, 8)
                lat: dict[str, list[float]] = {r: [] for r in routes}
                lat_rounds: dict[str, list[float]] = {r: [] for r in routes}  # each round's p50
                steal_before = _steal_ticks()
                for _ in range(rounds):
                    for route in routes:
                        got, _ = await _closed_loop(make(route), n, 1)
                        lat[route] += got
                        lat_rounds[route].append(1000 * _pct(got, 0.5))
                steal = _steal_pct(steal_before, _steal_ticks())
                rps: dict[str, list[float]] = {r: [] for r in routes}
                cpu: dict[str, dict[str, float]] = {
                    r: {"sim": 0.0, "proxy": 0.0, "kernel": 0.0} for r in routes
                }
                load_direct = 0.0
                for route in routes:  # each route's connections at full width, before measuring
                    await _closed_loop(make(route), 400, THROUGHPUT_IN_FLIGHT)
                for _ in range(rounds):
                    for route in routes:
                        pid = procs[route].pid
                        before = (
                            cpu_seconds(sim.pid),
                            cpu_seconds(pid),
                            cpu_seconds(pid, kernel_only=True),
                        )
                        load_before = time.process_time()
                        _, took = await _closed_loop(make(route), n, THROUGHPUT_IN_FLIGHT)
                        rps[route].append(n / took)
                        cpu[route]["sim"] += cpu_seconds(sim.pid) - before[0]
                        if route != "direct":
                            cpu[route]["proxy"] += cpu_seconds(pid) - before[1]
                            cpu[route]["kernel"] += cpu_seconds(pid, kernel_only=True) - before[2]
                        else:  # the load client's own cost: this run's c_req
                            load_direct += time.process_time() - load_before
                sent = rounds * n
                results[kind] = {
                    route: {
                        "p50_ms": 1000 * _pct(lat[route], 0.5),
                        "p99_ms": 1000 * _pct(lat[route], 0.99),
                        "p50_rounds_ms": lat_rounds[route],
                        "rps": statistics.median(rps[route]),
                        "rps_rounds": rps[route],
                        "sim_cpu_us": 1e6 * cpu[route]["sim"] / sent,
                        "proxy_cpu_us": 1e6 * cpu[route]["proxy"] / sent,
                        "proxy_kernel_us": 1e6 * cpu[route]["kernel"] / sent,
                    }
                    for route in routes
                }
                results[kind]["c_req_us"] = 1e6 * load_direct / sent
                results[kind]["steal_pct"] = steal
                _log(f"overhead {kind}: {json.dumps(results[kind])}")
    return results


# -- part 2: scale --------------------------------------------------------------------------


async def scale_run(
    users: int, per_user: int, *, concurrency: int = 100, cross_reads: int = 2
) -> dict[str, Any]:
    """``users`` users each try ``per_user + 1`` creates against a budget of ``per_user``.

    Returns the counts the report (and the CI test) check.
    """
    price = 4.0
    tokens = {f"u{i:04d}": "rxu_" + secrets.token_hex(12) for i in range(users)}
    sim_config = SimConfig(seed=5, default_behavior=ModelBehavior(median_seconds=0.5, sigma=0.3))
    async with FakeRuxa(sim_config) as sim:
        policy = Policy(budget=per_user * price, window="day")
        config = GatewayConfig(
            keys=(UpstreamKey(name="main", key=sim.api_key, base_url=sim.url),),
            users={
                name: UserEntry(name=name, token_sha256=hash_token(tok), policy=policy)
                for name, tok in tokens.items()
            },
            defaults=policy,
            sweep_interval=1.0,
            settle_after=2.0,
        )
        started = time.perf_counter()
        async with Gateway(config) as gw:
            url = await gw.listen("127.0.0.1", 0)
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as http:
                gate = asyncio.Semaphore(concurrency)
                owned: dict[str, list[str]] = {name: [] for name in tokens}
                codes: dict[int, int] = {}

                async def attempt(name: str) -> None:
                    async with (
                        gate,
                        http.post(
                            url + "/api/v1/tasks/create",
                            data=BODY,
                            headers={"Authorization": f"Bearer {tokens[name]}"},
                        ) as resp,
                    ):
                        reply = await resp.json()
                    codes[reply["code"]] = codes.get(reply["code"], 0) + 1
                    if reply["code"] == 200:
                        owned[name].append(reply["data"]["taskId"])

                await asyncio.gather(
                    *(attempt(name) for _ in range(per_user + 1) for name in tokens)
                )
                names = list(tokens)
                leaked = 0

                async def peek(name: str, other: str) -> None:
                    nonlocal leaked
                    for task_id in owned[other][:1]:
                        async with (
                            gate,
                            http.get(
                                f"{url}/api/v1/tasks/query/{task_id}",
                                headers={"Authorization": f"Bearer {tokens[name]}"},
                            ) as resp,
                        ):
                            if resp.status != 404:
                                leaked += 1

                await asyncio.gather(
                    *(
                        peek(name, names[(i + k + 1) % len(names)])
                        for i, name in enumerate(names)
                        for k in range(cross_reads)
                    )
                )
                for _ in itertools.count():  # no event says "all settled": callbacks and sweeps
                    if not gw.store.open_tasks():
                        break
                    await asyncio.sleep(0.2)
                async with http.get(url + "/metrics") as resp:
                    metrics = await resp.text()
            records = await gw.store.audit_records()
            stats = gw.statistics()
        took = time.perf_counter() - started
        sim_stats = sim.stats()
    created_per_user = [len(ids) for ids in owned.values()]
    metric_created = sum(
        float(m)
        for m in re.findall(r"^ruxa_gateway_tasks_created_total\{[^}]*\} (\S+)$", metrics, re.M)
    )
    metric_spend = sum(
        float(m) for m in re.findall(r"^ruxa_gateway_spend_credits\{[^}]*\} (\S+)$", metrics, re.M)
    )
    return {
        "users": users,
        "per_user": per_user,
        "seconds": took,
        "codes": codes,
        "overruns": sum(1 for n in created_per_user if n > per_user),
        "cross_user_reads": leaked,
        "cross_user_attempts": users * cross_reads,
        "sim_tasks_created": sim_stats.tasks_created,
        "sim_credits_spent": sim_stats.credits_spent,
        "gateway_created": stats.created,
        "gateway_settled": stats.settled,
        "audit_created": sum(1 for r in records if r["event"] == "created"),
        "audit_settled": sum(1 for r in records if r["event"] == "settled"),
        "audit_denied_budget": sum(
            1 for r in records if r["event"] == "denied" and r.get("reason") == "budget"
        ),
        "metric_created": metric_created,
        "metric_spend": metric_spend,
        "gateway_spend": sum(stats.spend.values()),
    }


# -- report ---------------------------------------------------------------------------------


def _loop_names() -> tuple[str, str]:
    """Which loop the load generator (this process) and the simulator run on."""
    here = type(asyncio.get_running_loop()).__module__.split(".")[0]
    return ("uvloop" if here == "uvloop" else "asyncio"), "asyncio (the standard loop)"


def _ceiling(c_req: float, sim_direct: float, proxy: float, sim: float) -> float:
    """The share of direct throughput a route can reach if CPU is the only bound.

    Each process is single-threaded (at most one core) and all of them share 2
    cores: direct runs at most 1 / max(c_req, sim_direct) requests a second; a
    route at most min(1/c_req, 1/proxy, 1/sim, 2/(c_req + proxy + sim)).
    """
    direct = 1.0 / max(c_req, sim_direct, 1e-9)
    route = min(1.0 / max(c_req, proxy, sim, 1e-9), 2.0 / max(c_req + proxy + sim, 1e-9))
    return min(1.0, route / direct)


def _overhead_lines(
    overhead: dict[str, Any], rounds: int, per_round: int, load_loop: str
) -> list[str]:
    lines = [
        "## Overhead: straight to the simulator vs through the gateway",
        "",
        "Simulator, gateways and ceiling proxies each in their own process, all started at once; "
        f"the load generator in this one ({load_loop}); the simulator runs on "
        "**the standard asyncio loop** for every route. The same client session measures every "
        "route in the same run. Latency: one request in flight, the routes' blocks alternated "
        f"round by round ({rounds} rounds). Throughput: {THROUGHPUT_IN_FLIGHT} in flight, "
        f"**median of {rounds} rounds** of {per_round:,} requests per route, routes alternated, "
        "after 400 requests per route at "
        f"{THROUGHPUT_IN_FLIGHT} in flight (connections opened, nothing measured). "
        "Added = route - direct. CPU per request from /proc during the throughput rounds "
        "(the other jobs on the machine disturb it less than wall-clock time).",
        "",
        "Routes: "
        + "; ".join(f"`{r}` {ROUTES[r]}" for r in next(iter(overhead.values())) if r in ROUTES)
        + ".",
        "",
        "| request | route | p50 | added p50 | p99 | added p99 | rps (median) | route / direct "
        "| route CPU / req (kernel) | simulator CPU / req | CPU-bound ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in overhead.items():
        d = row["direct"]
        c_req = row["c_req_us"]
        for route, r in row.items():
            if route not in ROUTES:
                continue
            own = r["proxy_cpu_us"]
            if route == "direct":
                added = ("", "")
                ratio, ceiling, own_cell = "100 %", "", "-"
            else:
                added = (
                    f"**{r['p50_ms'] - d['p50_ms']:+.2f} ms**",
                    f"{r['p99_ms'] - d['p99_ms']:+.2f} ms",
                )
                ratio = f"**{100 * r['rps'] / d['rps']:.0f} %**"
                ceiling = f"{100 * _ceiling(c_req, d['sim_cpu_us'], own, r['sim_cpu_us']):.0f} %"
                own_cell = f"{own:.0f} µs ({r.get('proxy_kernel_us', 0.0):.0f})"
            lines.append(
                f"| {kind} | {route} | {r['p50_ms']:.2f} ms | {added[0]} | {r['p99_ms']:.2f} ms "
                f"| {added[1]} | {r['rps']:.0f} | {ratio} | {own_cell} | {r['sim_cpu_us']:.0f} µs "
                f"| {ceiling} |"
            )
    lines += [
        "",
        "*c_req* (this run's calibration: the load generator's own CPU per request in the direct "
        "throughput rounds, i.e. one request of its client on this machine now): "
        + ", ".join(f"{kind} {row['c_req_us']:.0f} µs" for kind, row in overhead.items())
        + ". Host steal during the latency rounds (`/proc/stat`: time the VM's CPUs waited "
        "for the host; a slow spell of the machine shows here): "
        + ", ".join(
            f"{kind} " + ("n/a" if row.get("steal_pct") is None else f"{row['steal_pct']:.1f} %")
            for kind, row in overhead.items()
        )
        + ". Throughput per round (rps): "
        + "; ".join(
            f"{kind} {route} " + "/".join(f"{x:.0f}" for x in r["rps_rounds"])
            for kind, row in overhead.items()
            for route, r in row.items()
            if route in ROUTES
        )
        + ".",
        "",
        "Latency per round (each round's p50, ms; a round's added p50 is its route block's p50 "
        "minus the direct block's of the same round, a few seconds apart): "
        + "; ".join(
            f"{kind} direct " + "/".join(f"{x:.2f}" for x in row["direct"]["p50_rounds_ms"])
            for kind, row in overhead.items()
            if "p50_rounds_ms" in row["direct"]
        )
        + "; added "
        + "; ".join(
            f"{kind} {route} "
            + "/".join(
                f"{x - y:+.2f}"
                for x, y in zip(r["p50_rounds_ms"], row["direct"]["p50_rounds_ms"], strict=True)
            )
            for kind, row in overhead.items()
            for route, r in row.items()
            if route in ROUTES and route != "direct" and "p50_rounds_ms" in r
        )
        + ".",
        "",
        "Goals: added p50 <= 1 ms; >= 70 % of direct throughput.",
        "",
        "Reading these numbers: a proxied request costs the machine the load generator's "
        "client request (c_req), the proxy's CPU and the simulator's, where a direct one costs "
        "only the first and the last. Each process runs on at most one core and all three share "
        "2: direct runs at most 1 / max(c_req, simulator) requests a second, a route at most "
        "min(1 / max(c_req, route, simulator), 2 / (c_req + route + simulator)); their ratio is "
        "the *CPU-bound ceiling* column. The route's CPU counts the kernel's work for it "
        "(system time, in brackets): its socket reads and writes and the wake-ups they cause. "
        "The two `passthrough` routes have no logic at all: what they "
        "reach bounds any gateway built like them on this machine.",
        "",
    ]
    return lines


def _report(
    overhead: dict[str, Any],
    scale: dict[str, Any] | None,
    mode: str,
    load: tuple[float, float, float],
    rounds: int,
    per_round: int,
    load_loop: str,
) -> str:
    lines = [
        "# Gateway benchmark",
        "",
        f"Generated by `python -m benchmarks.gateway{' --smoke' if mode == 'smoke' else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"Python {platform.python_version()}, "
        f"2 cores shared with other jobs (load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} when the run started: expect noise).",
        "",
    ]
    lines += _overhead_lines(overhead, rounds, per_round, load_loop)
    if scale is None:
        return "\n".join(lines)
    lines += [
        f"## Scale: {scale['users']:,} users, "
        f"{scale['users'] * scale['per_user']:,} tasks through one gateway",
        "",
        f"Each user has a budget of {scale['per_user']} images and tries "
        f"{scale['per_user'] + 1}; each reads {scale['cross_user_attempts'] // scale['users']} "
        f"other users' tasks. Gateway, simulator and load in one process; "
        f"{scale['seconds']:.1f} s in all.",
        "",
        "| check | value |",
        "|---|---|",
        f"| replies by code | {json.dumps(scale['codes'], sort_keys=True)} |",
        f"| users over budget | **{scale['overruns']}** |",
        f"| cross-user reads that were not 404 | **{scale['cross_user_reads']}** of "
        f"{scale['cross_user_attempts']:,} |",
        f"| tasks created: simulator / gateway statistics / audit log / metrics | "
        f"{scale['sim_tasks_created']:,} / {scale['gateway_created']:,} / "
        f"{scale['audit_created']:,} / {scale['metric_created']:,.0f} |",
        f"| tasks settled: statistics / audit log | {scale['gateway_settled']:,} / "
        f"{scale['audit_settled']:,} |",
        f"| budget refusals in the audit log | {scale['audit_denied_budget']:,} |",
        f"| credits: simulator spent / gateway ledgers / metrics | "
        f"{scale['sim_credits_spent']:,.0f} / {scale['gateway_spend']:,.0f} / "
        f"{scale['metric_spend']:,.0f} |",
        "",
    ]
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> None:
    smoke = args.smoke
    logging.getLogger("ruxa_async").setLevel(logging.ERROR)  # 1,000 users cross 80 %: no log
    load_before = os.getloadavg()
    # 4,800 requests a round: at ~5,000 a second, 1,200 (the old default) took 0.2 s, and a
    # round's rate then moved by up to ±25 % with the machine's hiccups
    requests = args.requests or (600 if smoke else 24000)
    rounds = args.rounds or (3 if smoke else 5)
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    unknown = sorted(set(routes) - set(ROUTES))
    if unknown:
        raise SystemExit(f"unknown routes {unknown}; known: {', '.join(ROUTES)}")
    loop_name, _ = _loop_names()
    client = "light client, benchmarks/_loadgen.py" if args.load_client == "light" else "aiohttp"
    load_loop = f"{client} on **{loop_name}**, the same for every route"
    with tempfile.TemporaryDirectory(prefix="ruxa-gw-bench-") as tmp:
        overhead = await _overhead(
            Path(tmp), requests, rounds, routes, args.profile, args.load_client
        )
    mode = "smoke" if smoke else "full"
    if args.only == "overhead":  # a quick look (or a profile): a report only with --out
        if args.out is not None:
            text = _report(overhead, None, mode, load_before, rounds, requests // rounds, load_loop)
            args.out.write_text(text, encoding="utf-8")
            print(text)
        return
    scale = await scale_run(50 if smoke else args.users, 4 if smoke else 10)
    _log(f"scale: {json.dumps(scale)}")
    text = _report(overhead, scale, mode, load_before, rounds, requests // rounds, load_loop)
    (args.out or OUT).write_text(text, encoding="utf-8")
    print(text)


def main(argv: list[str] | None = None) -> int:
    """Run the gateway benchmark and write its markdown report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few seconds of each part")
    parser.add_argument("--out", type=Path, help=f"report path (default {OUT})")
    parser.add_argument(
        "--only",
        choices=("overhead",),
        help="run only the overhead part (its report is written only with --out)",
    )
    parser.add_argument("--requests", type=int, help="requests per route per overhead measurement")
    parser.add_argument("--rounds", type=int, help="rounds per measurement (default 5; smoke 3)")
    parser.add_argument(
        "--routes",
        default=",".join(r for r in ROUTES if r != "direct"),
        help=f"comma-separated routes besides direct (default all: {', '.join(ROUTES)})",
    )
    parser.add_argument("--users", type=int, default=1000, help="users in the scale part")
    parser.add_argument(
        "--load-client",
        choices=("light", "aiohttp"),
        default="light",
        help="the load generator's HTTP client, the same for every route (default light: "
        "benchmarks/_loadgen.py, the least CPU per request; aiohttp: a ClientSession)",
    )
    parser.add_argument(
        "--profile", type=Path, help="run the uvloop gateway under cProfile, stats to this path"
    )
    args = parser.parse_args(argv)
    if sys.version_info >= (3, 11):  # asyncio.Runner (a loop factory) is 3.11+
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_main(args))
            return 0
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
