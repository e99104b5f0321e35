"""``python -m benchmarks.gateway_upstream``: the CPU of the gateway's upstream hop, layer by layer.

The gateway benchmark measures whole processes; this one measures, in this
process, what one upstream request costs the gateway at each layer of its
path, against the simulator in its own process, 32 requests in flight on
uvloop (the standalone gateway's loop):

* ``floor``: the least a keep-alive HTTP/1.1 client does (``benchmarks/_loadgen.py``);
* ``transport``: the SDK's light transport (``LightTransport.request``) alone;
* ``relay``: the whole path a gateway query or create takes to the transport and
  back (``send_once``: outage gate, rate permit, transport, reply parse, and
  ``task_state`` for a query).

CPU per request is user and system time of this process (``os.times``), the
median of the rounds; ``--profile`` prints the top functions of the ``relay``
layer. Figures go to stdout (and to ``--out`` as a markdown table).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

if __package__ in (None, ""):  # ``python benchmarks/gateway_upstream.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks._loadgen import LightLoad
from benchmarks._procs import Simulator
from ruxa_async import _wire
from ruxa_async._client import send_once
from ruxa_async.gateway import UpstreamKey
from ruxa_async.gateway._keys import default_client

BODY = json.dumps({"model": "google/nano-banana", "input": {"prompt": "a red fox"}}).encode()
IN_FLIGHT = 32


async def _rounds(
    one: Callable[[], Awaitable[object]], requests: int, rounds: int, profile: bool
) -> tuple[float, float, float]:
    """Median user µs, system µs and requests a second over ``rounds`` closed-loop rounds."""

    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    await asyncio.gather(*(worker(50) for _ in range(IN_FLIGHT)))  # warm-up
    user, system, rates = [], [], []
    per = requests // IN_FLIGHT
    done = per * IN_FLIGHT
    for i in range(rounds):
        prof = cProfile.Profile() if profile and i == rounds - 1 else None
        before, started = os.times(), time.perf_counter()
        if prof is not None:
            prof.enable()
        await asyncio.gather(*(worker(per) for _ in range(IN_FLIGHT)))
        if prof is not None:
            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(18)
        after, took = os.times(), time.perf_counter() - started
        user.append(1e6 * (after.user - before.user) / done)
        system.append(1e6 * (after.system - before.system) / done)
        rates.append(done / took)
    return statistics.median(user), statistics.median(system), statistics.median(rates)


async def _measure(url: str, key: str, requests: int, rounds: int, profile: bool) -> list[str]:
    client = default_client(
        UpstreamKey(name="bench", key=key, base_url=url), timeout=30.0, max_in_flight=256
    )
    load = LightLoad(url)
    rows = []
    try:
        await client.start()
        transport = client._core.transport
        tid = (await send_once(client, "create", _wire.CREATE_PATH, BODY))["taskId"]
        path = _wire.query_path(tid)
        floor_query = load.payload("GET", path, key, None)
        floor_create = load.payload("POST", _wire.CREATE_PATH, key, BODY)

        async def relay_query() -> None:
            _wire.task_state(await send_once(client, "query", path))

        layers: list[tuple[str, str, Callable[[], Awaitable[object]]]] = [
            ("query", "floor", lambda: load.timed(floor_query)),
            ("query", "transport", lambda: transport.request("GET", path)),
            ("query", "relay", relay_query),
            ("create", "floor", lambda: load.timed(floor_create)),
            ("create", "transport", lambda: transport.request("POST", _wire.CREATE_PATH, BODY)),
            ("create", "relay", lambda: send_once(client, "create", _wire.CREATE_PATH, BODY)),
        ]
        for kind, layer, one in layers:
            user, system, rate = await _rounds(
                one, requests, rounds, profile and layer == "relay" and kind == "query"
            )
            row = (
                f"| {kind} | {layer} | {user + system:.0f} µs | {user:.0f} µs | {system:.0f} µs "
                f"| {rate:.0f} |"
            )
            print(row, flush=True)
            rows.append(row)
    finally:
        load.close()
        await client.aclose()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure each layer of the upstream hop; print (and optionally write) the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway_upstream")
    parser.add_argument("--requests", type=int, default=12000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile the relay query layer")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    import uvloop

    sim_config = {"default_behavior": {"median_seconds": 36000, "sigma": 0}, "seed": 1}
    head = [
        "| request | layer | CPU / req | user | system | rps (this process alone) |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(head), flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="ruxa-upstream-") as tmp,
        Simulator(sim_config, Path(tmp), None, "upstream") as sim,
    ):
        sim.wait_ready()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # type: ignore[attr-defined]
            rows = runner.run(
                _measure(sim.url, sim.api_key, args.requests, args.rounds, args.profile)
            )
    if args.out is not None:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        load = os.getloadavg()[0]
        text = f"`python -m benchmarks.gateway_upstream` on {stamp}, load {load:.1f}\n\n"
        args.out.write_text(text + "\n".join(head + rows) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
