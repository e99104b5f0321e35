"""The standalone gateway's HTTP/1.1 server at its edges, over raw loopback sockets."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ruxa_async._jsoncodec import json_encoder
from ruxa_async.gateway import Gateway
from ruxa_async.gateway._exchange import Request, Response
from ruxa_async.gateway._httpserver import HttpServer, start_server
from ruxa_async.testing import FakeRuxa, ModelBehavior, SimConfig
from tests.helpers_gateway import NB, PROMPT, TOKENS, config_for, raw, running, user_client
from tests.test_gateway_hostile import read_to_end

TEXT = (("Content-Type", "text/plain"),)


class App:
    """Echoes ``METHOD path body-length``; a path under ``/hold/`` waits for its gate."""

    def __init__(self) -> None:
        self.arrived: dict[str, asyncio.Event] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.seen: list[Request] = []

    def hold(self, name: str) -> asyncio.Event:
        """The event that ``/hold/name`` sets when it arrives (its gate is ``gates[name]``)."""
        self.gates[name] = asyncio.Event()
        self.arrived[name] = asyncio.Event()
        return self.arrived[name]

    async def __call__(self, request: Request) -> Response:
        self.seen.append(request)
        if request.path.startswith("/hold/"):
            name = request.path.removeprefix("/hold/")
            self.arrived[name].set()
            await self.gates[name].wait()
        if request.path == "/boom":
            raise RuntimeError("a bug in a handler")
        body = f"{request.method} {request.path} {len(request.body)}".encode()
        return Response(200, TEXT, body)

    def refused(self, request: Request | None, status: int, message: str) -> Response:
        return Response(status, TEXT, message.encode())


@asynccontextmanager
async def serving(app: App, **options: Any) -> AsyncIterator[HttpServer]:
    """The server on a free loopback port."""
    settings: dict[str, Any] = {"max_body": 1000, "body_timeout": 5.0, "header_timeout": 5.0}
    settings.update(options)
    server = await start_server(app, "127.0.0.1", 0, **settings)
    try:
        yield server
    finally:
        await server.aclose()


@asynccontextmanager
async def connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response off the wire: status, headers (lower-case names), body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def get(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: t", *extra]) + "\r\n\r\n").encode()


async def test_pipelined_requests_are_answered_in_order() -> None:
    """Three requests in one write, the first one slow: the replies come in request order."""
    app = App()
    arrived = app.hold("first")
    async with serving(app) as server, connection(server.port) as (reader, writer):
        writer.write(get("/hold/first") + get("/second") + get("/third"))
        await arrived.wait()
        app.gates["first"].set()
        replies = [await response(reader) for _ in range(3)]
    assert [body for _, _, body in replies] == [
        b"GET /hold/first 0",
        b"GET /second 0",
        b"GET /third 0",
    ]
    assert all(status == 200 for status, _, _ in replies)


async def test_a_keep_alive_connection_serves_request_after_request() -> None:
    """One connection, three requests one after another, each answered, none closing it."""
    app = App()
    async with serving(app) as server, connection(server.port) as (reader, writer):
        for i in range(3):
            writer.write(get(f"/n{i}"))
            status, headers, body = await response(reader)
            assert (status, body) == (200, f"GET /n{i} 0".encode())
            assert "connection" not in headers
            assert "date" in headers
        assert not reader.at_eof()
    assert len({id(r.headers) for r in app.seen}) == 3


async def test_connection_close_is_answered_and_then_closed() -> None:
    """A request asking ``Connection: close`` gets its reply, says so, and the socket closes."""
    async with serving(App()) as server, connection(server.port) as (reader, writer):
        writer.write(get("/bye", "Connection: close"))
        status, headers, body = await response(reader)
        rest, _ = await read_to_end(reader)
    assert (status, body) == (200, b"GET /bye 0")
    assert headers["connection"] == "close"
    assert rest == b""


async def test_http_1_0_keeps_alive_only_when_asked() -> None:
    """HTTP/1.0 closes by default; with ``Connection: keep-alive`` it stays and says so."""
    async with serving(App()) as server, connection(server.port) as (reader, writer):
        writer.write(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        _, headers, _ = await response(reader)
        assert headers["connection"].lower() == "keep-alive"
        writer.write(b"GET /b HTTP/1.0\r\n\r\n")
        status, headers, body = await response(reader)
        rest, _ = await read_to_end(reader)
    assert (status, body, headers["connection"], rest) == (200, b"GET /b 0", "close", b"")


async def test_a_malformed_request_gets_400_and_the_connection_closes() -> None:
    """Not HTTP: a 400 after the replies owed to earlier requests, then the socket closes."""
    async with serving(App()) as server, connection(server.port) as (reader, writer):
        writer.write(get("/fine") + b"NOT HTTP AT ALL\r\n\r\n" + get("/never"))
        first = await response(reader)
        status, headers, body = await response(reader)
        rest, _ = await read_to_end(reader)
    assert first[2] == b"GET /fine 0"
    assert status == 400
    assert headers["connection"] == "close"
    assert b"not valid HTTP" in body
    assert rest == b""


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n",  # declared
        b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"  # streamed
        + b"".join(b"100\r\n" + b"x" * 256 + b"\r\n" for _ in range(8)),
    ],
)
async def test_an_oversized_body_gets_413_and_the_connection_closes(request_bytes: bytes) -> None:
    """A body over ``max_body``, declared or streamed: 413 without reading it all, then close."""
    app = App()
    async with serving(app) as server, connection(server.port) as (reader, writer):
        writer.write(request_bytes)
        status, headers, body = await response(reader)
        rest, _ = await read_to_end(reader)
    assert status == 413
    assert headers["connection"] == "close"
    assert b"limit is 1000" in body or b"1000-byte limit" in body
    assert rest == b""
    assert app.seen == []


async def test_a_client_still_uploading_an_oversized_body_reads_the_413() -> None:
    """The server half-closes and drops the rest of an oversized upload, so the client reads
    the 413 rather than a connection reset."""
    async with serving(App()) as server, connection(server.port) as (reader, writer):
        writer.write(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n")
        writer.write(b"x" * 2_000_000)
        status, headers, _ = await response(reader)
        rest, reset = await read_to_end(reader)
    assert (status, headers["connection"], rest, reset) == (413, "close", b"", False)


async def test_a_body_in_chunks_and_pieces_arrives_whole() -> None:
    """A chunked body split over several writes reaches the handler whole."""
    async with serving(App()) as server, connection(server.port) as (reader, writer):
        writer.write(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
        await writer.drain()
        writer.write(b"cde\r\n3\r\nfgh\r\n0\r\n\r\n")
        status, _, body = await response(reader)
    assert (status, body) == (200, b"POST /up 8")


async def test_slow_headers_are_cut_off_by_the_deadline() -> None:
    """Headers that never finish: a 408 at the header deadline, then the socket closes."""
    async with serving(App(), header_timeout=0.2) as server:
        async with connection(server.port) as (reader, writer):
            writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Slow: aaa")
            status, headers, body = await response(reader)
            rest, _ = await read_to_end(reader)
        async with connection(server.port) as (silent, _):  # connects, sends nothing
            status_silent, _, _ = await response(silent)
    assert (status, headers["connection"], rest) == (408, "close", b"")
    assert b"headers did not arrive" in body
    assert status_silent == 408


async def test_a_slow_body_is_cut_off_by_the_body_deadline() -> None:
    """A body that stops arriving: a 408 at the body deadline, then the socket closes."""
    app = App()
    async with serving(app, body_timeout=0.2) as server, connection(server.port) as (r, w):
        w.write(b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        status, _, body = await response(r)
        rest, _ = await read_to_end(r)
    assert (status, rest) == (408, b"")
    assert b"body did not arrive within 0.2 s" in body
    assert app.seen == []


async def test_an_idle_keep_alive_connection_is_closed_quietly() -> None:
    """After its reply, a connection that sends nothing more is closed at the idle deadline."""
    app = App()
    server = await start_server(
        app, "127.0.0.1", 0, max_body=1000, body_timeout=5, header_timeout=5, keepalive_timeout=0.2
    )
    try:
        async with connection(server.port) as (reader, writer):
            writer.write(get("/once"))
            await response(reader)
            rest, _ = await read_to_end(reader)
    finally:
        await server.aclose()
    assert rest == b""


async def test_a_too_large_head_gets_431() -> None:
    """Request headers beyond the head limit: 431 and close, long before the deadline."""
    async with serving(App()) as server, connection(server.port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000)
        status, _, _ = await response(reader)
        rest, _ = await read_to_end(reader)
    assert (status, rest) == (431, b"")


async def test_head_gets_the_headers_without_the_body() -> None:
    """HEAD: the GET's Content-Length, no body; the connection serves the next request."""
    async with serving(App()) as server, connection(server.port) as (reader, writer):
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n" + get("/next"))
        status = await reader.readuntil(b"\r\n\r\n")
        after = await response(reader)
    assert status.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 9\r\n" in status  # len(b"HEAD /h 0")
    assert after[2] == b"GET /next 0"


async def test_expect_100_continue_is_honoured() -> None:
    """``Expect: 100-continue``: the server invites the body, then answers."""
    async with serving(App()) as server, connection(server.port) as (reader, writer):
        writer.write(
            b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"data")
        status, _, body = await response(reader)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert (status, body) == (200, b"POST /e 4")


async def test_a_failing_handler_gets_500_and_the_server_goes_on() -> None:
    """A handler's bug: a 500 on that connection, and the next connection is served."""
    async with serving(App()) as server:
        async with connection(server.port) as (reader, writer):
            writer.write(get("/boom"))
            status, _, _ = await response(reader)
        async with connection(server.port) as (reader, writer):
            writer.write(get("/ok"))
            after = await response(reader)
    assert status == 500
    assert after[0] == 200


async def test_shutdown_lets_a_request_in_flight_finish_and_closes_idle_connections() -> None:
    """Closing the server: idle connections close at once; a request in flight is answered
    (with ``Connection: close``), and only then does closing return."""
    app = App()
    arrived = app.hold("busy")
    server = await start_server(
        app, "127.0.0.1", 0, max_body=1000, body_timeout=5, header_timeout=5
    )
    async with (
        connection(server.port) as (busy, busy_writer),
        connection(server.port) as (
            idle,
            idle_writer,
        ),
    ):
        idle_writer.write(get("/first"))
        await response(idle)
        busy_writer.write(get("/hold/busy"))
        await arrived.wait()
        closing = asyncio.create_task(server.aclose())
        idle_rest, _ = await read_to_end(idle)
        assert not closing.done()
        app.gates["busy"].set()
        status, headers, body = await response(busy)
        busy_rest, _ = await read_to_end(busy)
        await closing
    assert idle_rest == b""
    assert (status, body, headers["connection"], busy_rest) == (
        200,
        b"GET /hold/busy 0",
        "close",
        b"",
    )
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)


# -- the gateway on this server -----------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[FakeRuxa]:
    async with FakeRuxa(SimConfig(seed=5)) as fake:
        yield fake


async def test_the_gateway_answers_refusals_in_its_envelope_and_counts_them(
    sim: FakeRuxa,
) -> None:
    """Malformed (400) and oversized (413) requests at the gateway: Ruxa envelopes, counted."""
    async with running(config_for(sim, max_body=1024)) as gw:
        assert gw.url is not None
        port = int(gw.url.rsplit(":", 1)[1])
        async with connection(port) as (reader, writer):
            writer.write(b"\x16\x03\x01 not http\r\n\r\n")
            bad = await response(reader)
        async with connection(port) as (reader, writer):
            writer.write(
                b"POST /api/v1/tasks/create HTTP/1.1\r\nHost: t\r\nContent-Length: 9999\r\n\r\n"
            )
            big = await response(reader)
        stats = gw.statistics()
    assert (bad[0], json.loads(bad[2])["code"]) == (400, 400)
    assert (big[0], json.loads(big[2])["code"]) == (413, 413)
    assert bad[1]["content-type"] == big[1]["content-type"] == "application/json"
    assert stats.requests["other 400"] == 1
    assert stats.requests["create 413"] == 1
    assert stats.denials["body"] == 1


async def test_without_httptools_the_gateway_serves_on_aiohttp(
    sim: FakeRuxa, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With httptools missing, the gateway falls back to aiohttp's server: same answers,
    and the header deadline still holds."""
    monkeypatch.setitem(sys.modules, "httptools", None)
    monkeypatch.delitem(sys.modules, "ruxa_async.gateway._httpserver", raising=False)
    async with running(config_for(sim, header_timeout=0.3)) as gw, aiohttp.ClientSession() as http:
        assert gw.url is not None
        async with user_client(gw, TOKENS["alice"]) as alice:
            task_id = await alice.create_task(NB, PROMPT)
            info = await alice.get_task(task_id)
        status, envelope, _ = await raw(http, "GET", f"{gw.url}/api/v1/nothing")
        port = int(gw.url.rsplit(":", 1)[1])
        async with connection(port) as (reader, _writer):
            timed_out = await response(reader)
        stats = gw.statistics()
    assert info.task_id == task_id
    assert (status, envelope["code"]) == (404, 404)
    assert timed_out[0] == 408
    assert stats.denials["header_timeout"] == 1
    assert "ruxa_async.gateway._httpserver" not in sys.modules


async def exchanges(http: aiohttp.ClientSession, base: str) -> list[tuple[Any, ...]]:
    """A round of requests at a gateway: what each got (status, content type, envelope code)."""
    alice = {"Authorization": f"Bearer {TOKENS['alice']}"}
    good = json.dumps({"model": NB, "input": PROMPT}).encode()
    calls: list[tuple[str, str, bytes | None, dict[str, str]]] = [
        ("POST", "/api/v1/tasks/create", good, alice),
        ("POST", "/api/v1/tasks/create", b"{not json", alice),
        ("POST", "/api/v1/tasks/create", b"x" * 5000, alice),
        ("POST", "/api/v1/tasks/create", good, {}),
        ("GET", "/api/v1/tasks/query/task_unknown", None, alice),
        ("GET", "/api/v1/tasks/query/..%2Fcreate", None, alice),
        ("PUT", "/api/v1/tasks/create", good, alice),
        ("GET", "/api/v1/elsewhere", None, alice),
        ("GET", "/healthz", None, {}),
        ("HEAD", "/healthz", None, {}),
        ("POST", "/_gateway/callback/not-the-token", b"{}", {}),
        ("GET", "/metrics", None, {}),
    ]
    seen = []
    for method, path, data, headers in calls:
        async with http.request(method, base + path, data=data, headers=headers) as resp:
            body = await resp.read()
            enveloped = body and resp.content_type == "application/json"
            code = json.loads(body).get("code") if enveloped else None
            seen.append((method, path, resp.status, resp.content_type, code, len(body) > 0))
    return seen


async def test_mounted_and_standalone_gateways_answer_alike(sim: FakeRuxa) -> None:
    """The same requests at the standalone server and at routes mounted in an aiohttp app get
    the same statuses, content types and envelopes."""
    config = config_for(sim, max_body=1024)
    async with aiohttp.ClientSession() as http:
        async with running(config) as gw:
            assert gw.url is not None
            alone = await exchanges(http, gw.url)
        app = web.Application()
        Gateway(config).mount(app, prefix="/ruxa")
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            mounted = await exchanges(http, f"http://127.0.0.1:{runner.addresses[0][1]}/ruxa")
        finally:
            await runner.cleanup()
    assert alone == mounted
    assert [status for _, _, status, *_ in alone] == [
        200,
        400,
        413,
        401,
        404,
        404,
        404,
        404,
        200,
        200,
        401,
        200,
    ]


@pytest.mark.parametrize(
    "options",
    [{}, {"sort_keys": True}, {"ensure_ascii": False, "separators": (",", ":")}],
)
def test_the_gateways_json_encoders_write_what_jsonencoder_writes(options: dict[str, Any]) -> None:
    """The encoders built once (envelopes, audit lines) match json.JSONEncoder byte for byte."""
    encode = json_encoder(**options)
    plain = json.JSONEncoder(**options).encode
    for value in [
        {"code": 200, "message": "success", "data": {"taskId": "t1", "é": "ü\n\u2028"}},
        {"z": [1, 2.5, -0.0, 1e300, None, True, False], "a": {"b": (("user:x", "2026"),)}},
        "a string",
        [],
        float("nan"),
    ]:
        assert encode(value) == plain(value)
    with pytest.raises(TypeError):
        encode({"x": object()})


async def test_each_query_asks_the_service_and_an_unchanged_task_reads_the_same() -> None:
    """A task polled again is asked of the service each time; unchanged, its owner reads the
    same envelope, and the gateway's callback address never shows."""
    slow = SimConfig(seed=5, default_behavior=ModelBehavior(median_seconds=3600, sigma=0))
    async with FakeRuxa(slow) as sim, aiohttp.ClientSession() as http:
        async with running(config_for(sim)) as gw, user_client(gw, TOKENS["alice"]) as alice:
            task_id = await alice.create_task(NB, PROMPT)
            url = f"{gw.url}/api/v1/tasks/query/{task_id}"
            before = sim.stats().queries
            answers = [await raw(http, "GET", url, token=TOKENS["alice"]) for _ in range(3)]
            theirs = await raw(http, "GET", url, token=TOKENS["bob"])
        assert sim.stats().queries - before == 3
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert answers[0][1] == answers[1][1] == answers[2][1]
    assert answers[0][1]["data"]["taskId"] == task_id
    assert gw.callback_token not in json.dumps(answers[0][1])
    assert theirs[0] == 404
