"""The gateway's own CPU per request, in one process: no sockets, no upstream HTTP client.

``python -m benchmarks.gateway_cpu {query,create,server} [--requests N] [--in-flight K]
[--profile FILE]``

Raw request bytes go into the gateway's HTTP server (its connection protocol,
fed by hand), through the router and the gateway (with its SQLite state file)
to the SDK's requester, whose transport answers at once with replies recorded
from the simulator. ``server`` answers every request with a constant instead
(the HTTP server alone). It prints CPU per request (all threads, and the event
loop's thread alone); ``--profile`` adds a cProfile ranking.

Times move with the machine's load. For figures that do not, count
instructions with valgrind, at two sizes so that start-up cancels::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m benchmarks.gateway_cpu query --requests 1300
    # minus the same at --requests 300, over 1,000 requests

(with the interpreter's real path: valgrind does not follow pyenv's shim).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import json
import pstats
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ruxa_async._client import RuxaClient, use_transport
from ruxa_async._transport import Reply, Transport
from ruxa_async.gateway import Gateway
from ruxa_async.gateway._config import UpstreamKey, hash_token, load_config
from ruxa_async.gateway._endpoints import Router
from ruxa_async.gateway._exchange import Request, Response
from ruxa_async.gateway._httpserver import HttpServer, _Connection
from ruxa_async.gateway._keys import default_client
from ruxa_async.testing import FakeRuxa, ModelBehavior, SimConfig

NB = "google/nano-banana"
BODY = json.dumps({"model": NB, "input": {"prompt": "a red fox"}}).encode()
TOKEN = "rxu_bench-0123456789abcdef"
TASKS = 64


class Recorded:
    """The simulator's replies to one create and one query, with the ids left as holes."""

    create = b""
    query = b""
    ids = itertools.count()


class RecordedTransport(Transport):
    """Answers every request at once (after one loop turn) with a recorded reply."""

    async def request(self, method: str, path: str, body: bytes | None = None) -> Reply:
        self.requests_sent += 1
        await asyncio.sleep(0)
        if body is not None:
            task_id = f"task_{next(Recorded.ids):09d}".encode()
            return Reply(200, Recorded.create.replace(b"TASKID", task_id), None, {})
        return Reply(200, Recorded.query, None, {})


class Socket:
    """The transport a connection writes to: keeps the last write, wakes who waits for it."""

    def __init__(self) -> None:
        self.waiter: asyncio.Future[bytes] | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def write_eof(self) -> None:
        pass


class Constant:
    """An application that answers every request alike (the server's own cost)."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def __call__(self, request: Request) -> Response:
        return Response(200, (("Content-Type", "application/json"),), b'{"code":200}')

    def refused(self, request: Request | None, status: int, message: str) -> Response:
        return self.router.refused(request, status, message)


async def record_replies() -> None:
    """One create (with a callback URL, as the gateway sends) and one query, from the simulator."""
    from aiohttp import ClientSession

    config = SimConfig(default_behavior=ModelBehavior(median_seconds=36000, sigma=0), seed=1)
    callback = "http://127.0.0.1:8080/_gateway/callback/CALLBACK"
    async with FakeRuxa(config) as fake, ClientSession() as http:
        headers = {"Authorization": f"Bearer {fake.api_key}"}
        body = json.dumps({"model": NB, "input": {"prompt": "a red fox"}, "callBackUrl": callback})
        async with http.post(f"{fake.url}/api/v1/tasks/create", data=body, headers=headers) as r:
            create = await r.read()
        task_id = json.loads(create)["data"]["taskId"]
        async with http.get(f"{fake.url}/api/v1/tasks/query/{task_id}", headers=headers) as r:
            Recorded.query = await r.read()
    Recorded.create = create.replace(task_id.encode(), b"TASKID")


def gateway_config(work: Path) -> Any:
    """A one-user gateway config with its SQLite state in ``work`` (no real upstream)."""
    path = work / "gateway.toml"
    lines = [
        'signing_secret = "bench"',
        "sweep_interval = 3600",
        f'state_path = "{work / "state.sqlite3"}"',
        "[upstream]",
        'base_url = "http://127.0.0.1:9"',
        "[[upstream.keys]]",
        'name = "bench"',
        'key = "k"',
        "[users.bench]",
        f'token_sha256 = "{hash_token(TOKEN)}"',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_config(str(path))


def _client(key: UpstreamKey) -> RuxaClient:
    client = default_client(key, timeout=30.0, max_in_flight=64, http="aiohttp")
    use_transport(client, RecordedTransport)
    return client


async def _run(args: argparse.Namespace) -> None:
    await record_replies()
    loop = asyncio.get_running_loop()
    async with Gateway(gateway_config(Path(tempfile.mkdtemp())), client_factory=_client) as gw:
        gw.public_url = "http://127.0.0.1:8080"
        Recorded.query = Recorded.query.replace(b"CALLBACK", gw.callback_token.encode())
        server = HttpServer(
            Router(gw), max_body=1 << 20, body_timeout=10, header_timeout=10, keepalive_timeout=75
        )
        create = (
            "POST /api/v1/tasks/create HTTP/1.1\r\nHost: gateway\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\nAccept: */*\r\n\r\n"
        ).encode() + BODY

        async def exchange(conn: _Connection, sock: Socket, data: bytes) -> bytes:
            sock.waiter = loop.create_future()
            conn.data_received(data)
            reply = await sock.waiter
            if not reply.startswith(b"HTTP/1.1 200 "):
                raise RuntimeError(reply[:300].decode("latin-1"))
            return reply

        def connect() -> tuple[_Connection, Socket]:
            conn, sock = _Connection(server), Socket()
            conn.connection_made(sock)  # type: ignore[arg-type]
            return conn, sock

        conn, sock = connect()
        ids = []
        for _ in range(TASKS):
            reply = await exchange(conn, sock, create)
            ids.append(json.loads(reply.split(b"\r\n\r\n", 1)[1])["data"]["taskId"])
        queries = [
            (
                f"GET /api/v1/tasks/query/{task_id} HTTP/1.1\r\nHost: gateway\r\n"
                f"Authorization: Bearer {TOKEN}\r\nAccept: */*\r\n\r\n"
            ).encode()
            for task_id in ids
        ]
        request: Callable[[int], bytes] = (
            (lambda i: create) if args.mode == "create" else (lambda i: queries[i % TASKS])
        )
        if args.mode == "server":
            server.app = Constant(server.app)  # type: ignore[arg-type]

        async def client(first: int, count: int) -> None:
            conn, sock = connect()
            for i in range(first, first + count):
                await exchange(conn, sock, request(i))

        def clients(total: int) -> Awaitable[Any]:
            each = total // args.in_flight
            return asyncio.gather(*(client(k * each, each) for k in range(args.in_flight)))

        await clients(min(args.requests, 50 * args.in_flight))  # warm up
        profile = cProfile.Profile() if args.profile else None
        started, loop_started = time.process_time(), time.thread_time()
        if profile is not None:
            profile.enable()
        await clients(args.requests)
        if profile is not None:
            profile.disable()
        cpu, loop_cpu = time.process_time() - started, time.thread_time() - loop_started
        sent = args.requests // args.in_flight * args.in_flight
        print(
            f"{args.mode}: {1e6 * cpu / sent:.1f} µs CPU per request "
            f"(event loop thread {1e6 * loop_cpu / sent:.1f}), {sent} requests, "
            f"{args.in_flight} in flight{', profiled' if profile else ''}"
        )
        if profile is not None:
            profile.dump_stats(args.profile)
            pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(30)


def main(argv: list[str] | None = None) -> int:
    """Measure one kind of request and print its CPU per request."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gateway_cpu", description=__doc__)
    parser.add_argument("mode", choices=("query", "create", "server"))
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--profile", type=Path, help="cProfile the measured requests to this file")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_run(args))
    else:
        asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
