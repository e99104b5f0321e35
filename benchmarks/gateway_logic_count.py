"""Instructions per create (or query) of the gateway's own logic, in process, under callgrind.

``python -m benchmarks.gateway_logic_count {create,query} [--requests N]``

Requests go straight into the gateway's router (no HTTP server, no sockets) and through the
gateway (SQLite state in a temporary directory, its journal included) to the SDK's direct
sender, whose transport answers on the next loop turn with a recorded simulator reply. The
script runs itself under valgrind's ``callgrind`` with instrumentation off until the gateway
is up, warms up, zeroes the counters, sends ``N`` requests (16 in flight) and dumps them:
instructions / N is the figure. Deterministic to about ±0.5 k per create (the SQLite writer
batches as timing allows), and quick (~30 s): a check for each change of the create's Python
logic before the end-to-end count (``benchmarks.gateway_count``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.gateway_cpu import TOKEN, gateway_config
from ruxa_async._client import RuxaClient, use_transport
from ruxa_async._transport import Reply, Transport
from ruxa_async.gateway import Gateway
from ruxa_async.gateway._config import UpstreamKey
from ruxa_async.gateway._endpoints import Router
from ruxa_async.gateway._exchange import Request
from ruxa_async.gateway._keys import default_client

NB = "google/nano-banana"
BODY = json.dumps({"model": NB, "input": {"prompt": "a red fox"}}).encode()
CREATED = b'{"code":200,"message":"success","data":{"taskId":"TASKID"}}'
TASK = (
    b'{"code":200,"message":"success","data":{"taskId":"TASKID","model":"google/nano-banana",'
    b'"state":"waiting","param":"{}","resultJson":"","failCode":"","failMsg":"",'
    b'"costTime":null,"completeTime":null,"createTime":1764567600000,'
    b'"updateTime":1764567600000}}'
)
IN_FLIGHT = 16
_ids = itertools.count()


class NextTurn(Transport):
    """Answers each request on the next loop turn with a recorded reply."""

    async def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Reply] = loop.create_future()
        if body is not None:
            raw = CREATED.replace(b"TASKID", f"task_{next(_ids):09d}".encode())
        else:
            raw = TASK.replace(b"TASKID", path.rsplit("/", 1)[1].encode())
        loop.call_soon(done.set_result, Reply(200, raw, None, {}))
        return await done


def _client(key: UpstreamKey) -> RuxaClient:
    client = default_client(key, timeout=30.0, max_in_flight=64, http="aiohttp")
    use_transport(client, NextTurn)
    return client


def _control(flag: str) -> None:
    argv = ["callgrind_control", *flag.split(), str(os.getpid())]
    subprocess.run(argv, check=True, capture_output=True)


async def _run(kind: str, requests: int, work: Path) -> None:
    async with Gateway(gateway_config(work), client_factory=_client) as gw:
        gw.public_url = "http://127.0.0.1:8080"
        router = Router(gw)
        headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}

        async def create(i: int) -> bytes:
            reply = await router(Request("POST", "/api/v1/tasks/create", "", headers, BODY, None))
            if reply.status != 200:
                raise RuntimeError(reply.body.decode())
            return reply.body

        tasks = [json.loads(await create(0))["data"]["taskId"] for _ in range(64)]
        auth = {"authorization": headers["authorization"]}

        async def query(i: int) -> bytes:
            path = "/api/v1/tasks/query/" + tasks[i % len(tasks)]
            reply = await router(Request("GET", path, "", auth, b"", None))
            if reply.status != 200:
                raise RuntimeError(reply.body.decode())
            return reply.body

        one = create if kind == "create" else query

        async def send(total: int) -> None:
            counter = iter(range(total))

            async def worker() -> None:
                for i in counter:
                    await one(i)

            await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))

        _control("-i on")
        await send(300)
        _control("-z")
        await send(requests)
        _control("-d")


def _measure(kind: str, requests: int) -> float:
    """Run this script under callgrind; instructions per request."""
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        argv += [f"--callgrind-out-file={out}.%p", os.path.realpath(sys.executable)]
        argv += ["-m", "benchmarks.gateway_logic_count", kind, "--child", str(requests)]
        subprocess.run(argv, check=True, capture_output=True)
        for path in Path(work).glob("callgrind.out.*.1"):  # the dump of the N requests
            found = re.search(r"^summary: (\d+)", path.read_text("utf-8", "replace"), re.M)
            if found:
                return int(found.group(1)) / requests
    raise RuntimeError("no callgrind dump of the requests")


def main(argv: list[str] | None = None) -> int:
    """Count instructions per request of the gateway's logic in process."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gateway_logic_count", description=__doc__
    )
    parser.add_argument("kind", choices=("create", "query"))
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        import uvloop

        with tempfile.TemporaryDirectory() as work:
            uvloop.run(_run(args.kind, args.child, Path(work)))
        return 0
    figure = _measure(args.kind, args.requests)
    print(f"{args.kind}: {figure / 1000:.1f} k instructions per request (in process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
