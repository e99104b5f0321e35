"""``python -m benchmarks.gateway_upstream``: the CPU of the gateway's upstream hop, layer by layer.

The gateway benchmark measures whole processes; this one measures, in this
process, what one upstream request costs the gateway at each layer of its
path, against the simulator in its own process, 32 requests in flight on
uvloop (the standalone gateway's loop):

* ``floor``: the least a keep-alive HTTP/1.1 client does (``benchmarks/_loadgen.py``);
* ``transport``: the SDK's light transport (``LightTransport.request``) alone;
* ``relay, full path``: ``send_once`` through a client's whole request path
  (outage gate, rate permit, transport, reply parse; ``task_state`` for a query);
* ``relay``: ``send_once`` as the gateway's key clients send it, by the short
  path of ``_direct`` (transport and reply parse);
* ``baseline transport`` (with ``--baseline-transport FILE``): the
  ``LightTransport`` of another copy of ``_light_transport.py``, to compare versions.

CPU per request is user and system time of this process (``os.times``), the
median of the rounds, the layers interleaved round by round; ``--profile``
prints the top functions of the ``relay`` query layer. Figures go to stdout
(and to ``--out`` as a markdown table).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.util
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
from ruxa_async import RuxaClient, Timeouts, _wire
from ruxa_async._client import send_once
from ruxa_async._transport import Transport
from ruxa_async.gateway import UpstreamKey
from ruxa_async.gateway._keys import default_client

BODY = json.dumps({"model": "google/nano-banana", "input": {"prompt": "a red fox"}}).encode()
IN_FLIGHT = 32


Layer = tuple[str, str, Callable[[], Awaitable[object]]]


async def _interleaved(
    layers: list[Layer], requests: int, rounds: int, profile: bool
) -> list[tuple[str, str, float, float, float]]:
    """Each layer's median user µs, system µs and requests a second, rounds interleaved.

    Round by round every layer runs once, so drift on the shared machine hits all
    alike (what one request costs depends on how busy the simulator keeps the loop).
    """

    def worker(one: Callable[[], Awaitable[object]], n: int) -> Awaitable[None]:
        async def run() -> None:
            for _ in range(n):
                await one()

        return run()

    for _, _, one in layers:  # warm-up
        await asyncio.gather(*(worker(one, 50) for _ in range(IN_FLIGHT)))
    per = requests // IN_FLIGHT
    done = per * IN_FLIGHT
    seen: dict[int, list[tuple[float, float, float]]] = {i: [] for i in range(len(layers))}
    for r in range(rounds):
        for i, (kind, layer, one) in enumerate(layers):
            last = profile and r == rounds - 1 and (kind, layer) == ("query", "relay")
            prof = cProfile.Profile() if last else None
            before, started = os.times(), time.perf_counter()
            if prof is not None:
                prof.enable()
            await asyncio.gather(*(worker(one, per) for _ in range(IN_FLIGHT)))
            if prof is not None:
                prof.disable()
                pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(18)
            after, took = os.times(), time.perf_counter() - started
            seen[i].append(
                (
                    1e6 * (after.user - before.user) / done,
                    1e6 * (after.system - before.system) / done,
                    done / took,
                )
            )
    return [
        (
            kind,
            layer,
            statistics.median(u for u, _, _ in seen[i]),
            statistics.median(s for _, s, _ in seen[i]),
            statistics.median(x for _, _, x in seen[i]),
        )
        for i, (kind, layer, _) in enumerate(layers)
    ]


def _baseline_transport(path: Path) -> type[Transport]:
    """``LightTransport`` from another copy of ``_light_transport.py`` (an older version)."""
    spec = importlib.util.spec_from_file_location("ruxa_async._light_transport_baseline", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cls: type[Transport] = module.LightTransport
    return cls


async def _measure(
    url: str, key: str, args: argparse.Namespace
) -> list[tuple[str, str, float, float, float]]:
    upstream = UpstreamKey(name="bench", key=key, base_url=url)
    direct = default_client(upstream, timeout=30.0, max_in_flight=256)
    full = default_client(upstream, timeout=30.0, max_in_flight=256)
    full._core.direct = None  # the whole request path: rate controller, outage gate
    load = LightLoad(url)
    baseline: Transport | None = None
    try:
        await direct.start()
        await full.start()
        transport = direct._core.transport
        if args.baseline_transport is not None:
            baseline = _baseline_transport(args.baseline_transport)(
                base_url=url,
                key=lambda: key,
                timeouts=Timeouts(total=30.0, read=30.0),
                max_connections=256,
                user_agent="ruxa-async/baseline",
            )
            baseline.open()
        tid = (await send_once(direct, "create", _wire.CREATE_PATH, BODY))["taskId"]
        path = _wire.query_path(tid)
        floor_query = load.payload("GET", path, key, None)
        floor_create = load.payload("POST", _wire.CREATE_PATH, key, BODY)

        def query_on(client: RuxaClient) -> Callable[[], Awaitable[object]]:
            async def relay_query() -> None:
                _wire.task_state(await send_once(client, "query", path))

            return relay_query

        def create_on(client: RuxaClient) -> Callable[[], Awaitable[object]]:
            return lambda: send_once(client, "create", _wire.CREATE_PATH, BODY)

        layers: list[Layer] = [
            ("query", "floor", lambda: load.timed(floor_query)),
            ("query", "transport", lambda: transport.request("GET", path)),
            ("query", "relay, full path", query_on(full)),
            ("query", "relay", query_on(direct)),
            ("create", "floor", lambda: load.timed(floor_create)),
            ("create", "transport", lambda: transport.request("POST", _wire.CREATE_PATH, BODY)),
            ("create", "relay, full path", create_on(full)),
            ("create", "relay", create_on(direct)),
        ]
        if baseline is not None:
            old = baseline
            layers.insert(2, ("query", "baseline transport", lambda: old.request("GET", path)))
            layers.insert(
                7,
                (
                    "create",
                    "baseline transport",
                    lambda: old.request("POST", _wire.CREATE_PATH, BODY),
                ),
            )
        return await _interleaved(layers, args.requests, args.rounds, args.profile)
    finally:
        load.close()
        if baseline is not None:
            await baseline.aclose()
        await full.aclose()
        await direct.aclose()


def main(argv: list[str] | None = None) -> int:
    """Measure each layer of the upstream hop; print (and optionally write) the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway_upstream")
    parser.add_argument("--requests", type=int, default=12000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile the relay query layer")
    parser.add_argument(
        "--baseline-transport",
        type=Path,
        help="also measure the LightTransport of this (older) _light_transport.py",
    )
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
            measured = runner.run(_measure(sim.url, sim.api_key, args))
    rows = [
        f"| {kind} | {layer} | {user + system:.0f} µs | {user:.0f} µs | {system:.0f} µs "
        f"| {rate:.0f} |"
        for kind, layer, user, system, rate in measured
    ]
    print("\n".join(rows), flush=True)
    if args.out is not None:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        load = os.getloadavg()[0]
        text = f"`python -m benchmarks.gateway_upstream` on {stamp}, load {load:.1f}\n\n"
        args.out.write_text(text + "\n".join(head + rows) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
