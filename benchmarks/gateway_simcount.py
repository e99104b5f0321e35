"""The simulator's instructions per create for the load generator's bytes and the gateway's.

``python -m benchmarks.gateway_simcount [--requests N] [--rounds R]``

Runs the simulator (``python -m ruxa_async.testing``) under valgrind's
``callgrind`` and sends it creates over the benchmark's light load generator,
32 in flight, in four shapes alternated round by round: the load generator's
request, the gateway's head (``User-Agent`` and ``Accept`` added) with the same
body, the load generator's head with the gateway's body (a ``callBackUrl`` of
the length the gateway sends), and the gateway's whole request (captured from
a running gateway). Instructions per request are user space only and do not
move with the machine's load; what they do not show is how fast the simulator
runs them (cache sharing with a busy gateway; see ``results-gateway.md``,
gw-up2's section).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._loadgen import LightLoad
from benchmarks._procs import Child, free_port
from benchmarks.gateway import BODY
from benchmarks.gateway_count import _control, _drive, _instructions

KEY = "sk-benchmark"
#: What the gateway sends upstream for the benchmark's create (its callback URL's length).
CALLBACK_BODY = (
    b'{"model":"google/nano-banana","callBackUrl":"http://127.0.0.1:35805/_gateway/callback/'
    + b"0" * 40
    + b'","input":{"prompt":"a red fox"}}'
)
SAME_BODY = b'{"model":"google/nano-banana","input":{"prompt":"a red fox"}}'


def request(netloc: str, body: bytes, gateway_head: bool) -> bytes:
    """A create as the load generator (or, with ``gateway_head``, the light transport) writes it."""
    head = f"POST /api/v1/tasks/create HTTP/1.1\r\nHost: {netloc}\r\n"
    if gateway_head:
        head += "User-Agent: ruxa-async/0.1.0.dev0\r\nAccept: application/json\r\n"
    head += f"Authorization: Bearer {KEY}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body


async def _run(requests: int, rounds: int, work: Path) -> dict[str, list[float]]:
    out = work / "callgrind.out"
    port = free_port()
    config = work / "sim.json"
    behavior = {"median_seconds": 36000, "sigma": 0}
    config.write_text(json.dumps({"default_behavior": behavior, "seed": 1, "api_key": KEY}))
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
    argv += ["--separate-threads=no", sys.executable, "-m", "ruxa_async.testing"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--config-json", str(config)]
    netloc = f"127.0.0.1:{port}"
    shapes = {
        "load generator": request(netloc, BODY, False),
        "gateway head, same body": request(netloc, SAME_BODY, True),
        "same head, callBackUrl": request(netloc, CALLBACK_BODY, False),
        "gateway (head + callBackUrl)": request(netloc, CALLBACK_BODY, True),
    }
    results: dict[str, list[float]] = {name: [] for name in shapes}
    with Child(argv, work / "sim.log", None) as sim:
        load = LightLoad(f"http://{netloc}")
        started = time.monotonic()
        while True:
            try:
                await load.timed(shapes["load generator"])
                break
            except (OSError, RuntimeError):
                if time.monotonic() - started > 300:
                    raise RuntimeError(f"the simulator did not start:\n{sim.log_tail()}") from None
                await asyncio.sleep(0.5)
        for payload in shapes.values():
            await _drive(load, [payload], 300)
        for _ in range(rounds):
            for name, payload in shapes.items():
                _control(sim.pid, "-z")
                await _drive(load, [payload], requests)
                base = Path(f"{out}.{sim.pid}")
                before = set(base.parent.glob(base.name + ".*"))
                _control(sim.pid, "-d")
                results[name].append(_instructions(base, before, None) / requests)
                print(f"{name}: {results[name][-1] / 1000:.1f} k", flush=True)
        load.close()
    return results


def main(argv: list[str] | None = None) -> int:
    """Print the simulator's instructions per create for each request shape."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        results = asyncio.run(_run(args.requests, args.rounds, Path(work)))
    for name, counts in results.items():
        print(f"| {name} | {' · '.join(f'{c / 1000:.1f} k' for c in counts)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
