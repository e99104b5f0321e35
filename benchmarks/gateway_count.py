"""Instructions per request of the real standalone gateway, end to end, under callgrind.

``python -m benchmarks.gateway_count [--requests N] [--kinds query,create] [--keep FILE]
[--strace FILE | --profile FILE]``

The simulator runs natively; the gateway (``python -m ruxa_async gateway``,
state in a SQLite file, its own light upstream client) runs under valgrind's
``callgrind`` (all threads, user space only: syscalls are not counted). The
load is this benchmark's light load generator (``_loadgen``), 32 requests in
flight (``--in-flight``). After a warm-up, the counters are zeroed (``callgrind_control -z``),
``N`` requests of one kind are sent, and the counters are dumped
(``callgrind_control -d``): instructions / N is the figure. Unlike times on a
shared machine, it does not move with the load (about ±1 % run to run for
queries, ±3 % for creates, whose SQLite writer batches as timing allows).
``--keep`` copies each dump for ``callgrind_annotate``. ``--strace`` instead
runs the gateway natively and counts its system calls (``strace -c -f``) over
the N requests; ``--profile`` runs it natively under cProfile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._loadgen import LightLoad
from benchmarks._procs import Child, Simulator, free_port
from benchmarks.gateway import BODY, _write_config

IN_FLIGHT = 32


def _instructions(out: Path, before: set[Path], keep: Path | None) -> int:
    """The instruction total of the callgrind dump written since ``before`` was listed
    (the dump is copied to ``keep`` when given, for ``callgrind_annotate``)."""
    for _ in range(100):
        fresh = set(out.parent.glob(out.name + ".*")) - before
        for path in fresh:
            text = path.read_text("utf-8", "replace")
            found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            if found:
                if keep is not None:
                    shutil.copyfile(path, keep)
                return int(found.group(1))
        time.sleep(0.2)
    raise RuntimeError(f"no new callgrind dump at {out}.*")


def _control(pid: int, flag: str) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True)


async def _drive(
    load: LightLoad, payloads: list[bytes], total: int, in_flight: int = IN_FLIGHT
) -> None:
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            await load.timed(payloads[i % len(payloads)])

    await asyncio.gather(*(worker() for _ in range(in_flight)))


async def _run(args: argparse.Namespace, work: Path) -> dict[str, float]:
    sim_config = {"default_behavior": {"median_seconds": 36000, "sigma": 0}, "seed": 1}
    token = "rxu_bench-" + secrets.token_hex(8)
    out = work / "callgrind.out"
    results: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(Simulator(sim_config, work, None, "count"))
        sim.wait_ready()
        config = work / "gateway.toml"
        _write_config(config, sim, token, args.http)
        port = free_port()
        if args.profile:  # natively under cProfile instead (stats written at SIGTERM)
            argv = [sys.executable, "-m", "cProfile", "-o", args.profile]
        elif args.strace:  # natively, its system calls counted
            argv = [sys.executable]
        else:
            argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"]
            argv += ["--separate-threads=no", sys.executable]
        argv += ["-m", "ruxa_async", "gateway"]
        argv += ["--config", str(config), "--port", str(port), "--loop", args.loop]
        gw = stack.enter_context(Child(argv, work / "gateway.log", None))
        load = LightLoad(f"http://127.0.0.1:{port}")
        stack.callback(load.close)
        started = time.monotonic()
        while True:
            try:
                await load.timed(load.payload("POST", "/api/v1/tasks/create", token, BODY))
                break
            except (OSError, RuntimeError):
                if time.monotonic() - started > 300:
                    raise RuntimeError(f"the gateway did not start:\n{gw.log_tail()}") from None
                await asyncio.sleep(0.5)
        create = load.payload("POST", "/api/v1/tasks/create", token, BODY)
        ids = [await _create(port, token) for _ in range(64)]
        queries = [load.payload("GET", f"/api/v1/tasks/query/{task}", token, None) for task in ids]
        for kind in args.kinds.split(","):
            payloads = queries if kind == "query" else [create]
            await _drive(load, payloads, args.warmup)
            if args.profile:
                await _drive(load, payloads, args.requests, args.in_flight)
                continue
            if args.strace:
                strace = await asyncio.create_subprocess_exec(
                    "strace", "-c", "-f", "-o", f"{args.strace}.{kind}", "-p", str(gw.pid)
                )
                await asyncio.sleep(1.0)  # attached
                await _drive(load, payloads, args.requests, args.in_flight)
                strace.send_signal(signal.SIGINT)
                await asyncio.wait_for(strace.wait(), 30)
                continue
            _control(gw.pid, "-z")
            await _drive(load, payloads, args.requests, args.in_flight)
            base = Path(f"{out}.{gw.pid}")
            before = set(base.parent.glob(base.name + ".*"))
            _control(gw.pid, "-d")
            keep = None if args.keep is None else Path(f"{args.keep}.{kind}")
            results[kind] = _instructions(base, before, keep) / args.requests
            print(f"{kind}: {results[kind] / 1000:.1f} k instructions per request", flush=True)
    return results


async def _create(port: int, token: str) -> str:
    """One create whose reply is read (the load generator reads only the status): its id."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        "POST /api/v1/tasks/create HTTP/1.1\r\nHost: gw\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + BODY)
    data = await reader.read()
    writer.close()
    return str(json.loads(data.split(b"\r\n\r\n", 1)[1])["data"]["taskId"])


def main(argv: list[str] | None = None) -> int:
    """Count instructions per request of the gateway under callgrind."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway_count", description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--kinds", default="query,create")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT, help="requests in flight")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--profile", help="no valgrind: run the gateway under cProfile to here")
    parser.add_argument("--strace", help="no valgrind: count system calls (strace -c) to here")
    parser.add_argument("--keep", help="copy each dump to KEEP.query / KEEP.create")
    parser.add_argument("--http", default="auto", help="upstream_http of the gateway's config")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        asyncio.run(_run(args, Path(work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
