"""The gateway's light upstream HTTP client: the transport contract, edge by edge.

Against the simulator over loopback, and against small raw asyncio servers
written here to force each edge (a kept connection closed by the server, a
reply cut short, a reply that never comes, chunked bodies, 429 headers). Each
raw server counts the connections it accepted and every request it read, so
the tests can say that nothing was sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from ruxa_async import (
    APIConnectionError,
    APITimeoutError,
    ConfigurationError,
    RuxaClient,
    Timeouts,
)
from ruxa_async._client import use_transport
from ruxa_async._light_transport import LightTransport, light_transport_class
from ruxa_async._transport import Transport
from ruxa_async.gateway import Gateway, GatewayConfig, UpstreamKey, parse_config
from ruxa_async.gateway._keys import default_client
from ruxa_async.testing import FakeRuxa

OK = b'{"code":200,"msg":"success","data":{"taskId":"t1"}}'
CREATE = "/api/v1/tasks/create"
QUERY = "/api/v1/tasks/query/t1"


def reply(status: int = 200, body: bytes = OK, *headers: str) -> bytes:
    """A framed HTTP/1.1 reply (Content-Length) with extra header lines."""
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Conn:
    """One accepted connection, as a raw server's handler sees it."""

    def __init__(
        self, server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server, self.reader, self.writer = server, reader, writer
        self.index = len(server.connections)  # 0 for the first connection accepted

    async def request(self) -> tuple[str, bytes] | None:
        """Read one request (``"METHOD /path"``, body) and count it; None at end of stream."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        what = " ".join(lines[0].split(" ")[:2])
        self.server.requests.append(what)
        async with self.server.received:
            self.server.received.notify_all()
        return what, body

    async def send(self, data: bytes) -> None:
        """Write ``data`` and wait until it is handed to the kernel."""
        self.writer.write(data)
        await self.writer.drain()

    async def hang_up(self) -> None:
        """Close the connection from the server's side."""
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


Handler = Callable[[Conn], Awaitable[None]]


class RawServer:
    """An asyncio server on loopback running ``handler`` for each connection."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections: list[Conn] = []
        self.requests: list[str] = []
        self.received = asyncio.Condition()
        self.closed = asyncio.Event()  # set whenever a handler's connection ends
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(self, reader, writer)
        self.connections.append(conn)
        try:
            await self.handler(conn)
        finally:
            writer.close()
            self.closed.set()

    async def wait_requests(self, count: int) -> None:
        """Wait until ``count`` requests have been read."""
        async with self.received:
            await self.received.wait_for(lambda: len(self.requests) >= count)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://localhost:{port}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.connections:
            conn.writer.close()
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def light(
    url: str, *, read: float = 10.0, total: float = 30.0, max_connections: int = 8
) -> AsyncIterator[LightTransport]:
    """An open light transport for ``url``."""
    transport = LightTransport(
        base_url=url,
        key=lambda: "sk-test",
        timeouts=Timeouts(connect=5.0, read=read, total=total),
        max_connections=max_connections,
        user_agent="ruxa-async/test",
    )
    transport.open()
    try:
        yield transport
    finally:
        await transport.aclose()


async def until_closed(lt: LightTransport) -> None:
    """Let the loop run until the kept connection has seen the server hang up.

    A protocol's state has no event to await; the tests' 60 s timeout bounds the loop.
    """
    while lt._idle[0].alive:  # noqa: ASYNC110
        await asyncio.sleep(0)


def silent_until(release: asyncio.Event) -> Handler:
    """A handler that reads one request and answers nothing until ``release`` is set."""

    async def silent(conn: Conn) -> None:
        await conn.request()
        await release.wait()

    return silent


async def serve_forever(conn: Conn) -> None:
    """Answer every request on the connection with 200, keeping it alive."""
    while await conn.request() is not None:
        await conn.send(reply())


# -- against the simulator -----------------------------------------------------------------


async def test_a_client_on_the_light_transport_creates_and_queries_on_the_simulator() -> None:
    """RuxaClient with the light transport: create, query, 404 and 401 as with aiohttp."""
    async with FakeRuxa() as sim:
        client = RuxaClient(api_key=sim.api_key, base_url=sim.url)
        use_transport(client, LightTransport)
        async with client:
            assert isinstance(client._core.transport, LightTransport)
            task_id = await client.create_task("google/nano-banana", {"prompt": "a fox"})
            infos = await asyncio.gather(*(client.get_task(task_id) for _ in range(20)))
            assert {i.task_id for i in infos} == {task_id}
            transport = client._core.transport
            unknown = await transport.request("GET", "/api/v1/tasks/query/nope")
        async with light(sim.url) as lt:
            refused = await lt.request("GET", "/api/v1/tasks/query/nope")  # wrong key
        assert sim.stats().tasks_created == 1
    assert unknown.status == 404
    assert b"not found" in unknown.body
    assert refused.status == 401


async def test_replies_match_the_aiohttp_transport_byte_for_byte() -> None:
    """The same requests through both transports give the same status and body."""
    async with FakeRuxa() as sim:
        kwargs = {
            "base_url": sim.url,
            "key": lambda: sim.api_key,
            "timeouts": Timeouts(),
            "max_connections": 4,
            "user_agent": "ruxa-async/test",
        }
        replies = []
        for cls in (Transport, LightTransport):
            transport = cls(**kwargs)  # type: ignore[arg-type]
            transport.open()
            try:
                replies.append(
                    [
                        await transport.request("GET", "/api/v1/tasks/query/nope"),
                        await transport.request("POST", CREATE, b'{"model": "x", "input": {}}'),
                        await transport.request("POST", CREATE, b"{not json"),
                    ]
                )
            finally:
                await transport.aclose()
    aio, lt = replies
    assert [(r.status, r.body) for r in lt] == [(r.status, r.body) for r in aio]


# -- keep-alive and closing -------------------------------------------------------------------


async def test_requests_share_one_kept_connection() -> None:
    """Sequential requests reuse one keep-alive connection."""
    async with RawServer(serve_forever) as server, light(server.url) as lt:
        for _ in range(5):
            assert (await lt.request("GET", QUERY)).status == 200
    assert len(server.connections) == 1
    assert len(server.requests) == 5


async def test_a_connection_closed_while_idle_is_not_written_to() -> None:
    """The server closes an idle kept connection: the next create goes on a new one, once."""

    async def once_then_close(conn: Conn) -> None:
        if await conn.request() is not None:
            await conn.send(reply())
            if conn.index == 0:
                await conn.hang_up()
                return
            await serve_forever(conn)

    async with RawServer(once_then_close) as server, light(server.url) as lt:
        await lt.request("GET", QUERY)
        await server.closed.wait()
        await until_closed(lt)
        got = await lt.request("POST", CREATE, b"{}")
    assert got.status == 200
    assert server.requests == ["GET " + QUERY, "POST " + CREATE]
    assert len(server.connections) == 2


def _drop_second_request(conn: Conn) -> Awaitable[None]:
    """Connection 0 answers its first request, then reads the second and hangs up."""

    async def handler() -> None:
        if conn.index > 0:
            await serve_forever(conn)
            return
        await conn.request()
        await conn.send(reply())
        await conn.request()
        await conn.hang_up()

    return handler()


async def test_a_create_dropped_by_a_kept_connection_is_not_sent_again() -> None:
    """Kept connection closed after the create was written: request_sent, sent exactly once."""
    async with RawServer(_drop_second_request) as server, light(server.url) as lt:
        await lt.request("GET", QUERY)
        with pytest.raises(APIConnectionError) as caught:
            await lt.request("POST", CREATE, b"{}")
    assert caught.value.request_sent is True
    assert not isinstance(caught.value, APITimeoutError)
    assert server.requests.count("POST " + CREATE) == 1
    assert len(server.connections) == 1


async def test_a_query_dropped_by_a_kept_connection_is_sent_again_on_a_new_one() -> None:
    """The same drop for a GET: sent once more on a fresh connection, and answered."""
    async with RawServer(_drop_second_request) as server, light(server.url) as lt:
        await lt.request("GET", QUERY)
        got = await lt.request("GET", QUERY)
        assert lt.reused_retries == 1
    assert got.status == 200
    assert server.requests.count("GET " + QUERY) == 3
    assert len(server.connections) == 2


async def test_a_drop_on_a_new_connection_is_never_sent_again() -> None:
    """A fresh connection closed without a reply: not retried, even for a GET."""

    async def read_and_hang_up(conn: Conn) -> None:
        await conn.request()
        await conn.hang_up()

    async with RawServer(read_and_hang_up) as server, light(server.url) as lt:
        with pytest.raises(APIConnectionError) as caught:
            await lt.request("GET", QUERY)
    assert caught.value.request_sent is True
    assert server.requests == ["GET " + QUERY]


async def test_a_reply_cut_short_is_a_connection_error_after_sending() -> None:
    """Headers and half the body, then the server hangs up: request_sent, no retry."""

    async def half(conn: Conn) -> None:
        await conn.request()
        await conn.send(reply()[:-10])
        await conn.hang_up()

    async with RawServer(half) as server, light(server.url) as lt:
        with pytest.raises(APIConnectionError) as caught:
            await lt.request("POST", CREATE, b"{}")
    assert caught.value.request_sent is True
    assert server.requests == ["POST " + CREATE]


async def test_connection_close_retires_the_connection() -> None:
    """A reply with Connection: close: the next request opens a new connection."""

    async def close_each(conn: Conn) -> None:
        await conn.request()
        await conn.send(reply(200, OK, "Connection: close"))
        await conn.hang_up()

    async with RawServer(close_each) as server, light(server.url) as lt:
        first = await lt.request("GET", QUERY)
        second = await lt.request("POST", CREATE, b"{}")
    assert (first.status, second.status) == (200, 200)
    assert len(server.connections) == 2
    assert len(server.requests) == 2


async def test_a_short_announced_keep_alive_is_not_outlived() -> None:
    """Keep-Alive: timeout=1 retires the connection before the server would (60 keeps it)."""

    def announcing(timeout: str) -> Handler:
        async def handler(conn: Conn) -> None:
            while await conn.request() is not None:
                await conn.send(reply(200, OK, f"Keep-Alive: timeout={timeout}"))

        return handler

    for timeout, connections in (("1", 2), ("60", 1), ("soon", 1)):
        async with RawServer(announcing(timeout)) as server, light(server.url) as lt:
            await lt.request("GET", QUERY)
            await lt.request("POST", CREATE, b"{}")
        assert len(server.connections) == connections, timeout
        assert len(server.requests) == 2


async def test_a_reply_ended_by_closing_the_connection_is_complete() -> None:
    """No Content-Length and no chunking: the body runs to the end of the connection."""

    async def unframed(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK)
        await conn.hang_up()

    async with RawServer(unframed) as server, light(server.url) as lt:
        got = await lt.request("GET", QUERY)
    assert (got.status, got.body) == (200, OK)
    assert len(server.requests) == 1


async def test_a_chunked_body_arrives_whole_and_the_connection_is_kept() -> None:
    """Transfer-Encoding: chunked, in several writes: joined, then the connection reused."""
    pieces = [OK[:7], OK[7:20], OK[20:]]

    async def chunked(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in pieces:
                await conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await conn.send(b"0\r\n\r\n")

    async with RawServer(chunked) as server, light(server.url) as lt:
        first = await lt.request("GET", QUERY)
        second = await lt.request("GET", QUERY)
    assert first.body == second.body == OK
    assert len(server.connections) == 1


async def test_a_429_carries_retry_after_and_the_rate_headers() -> None:
    """Retry-After and the rate-limit headers reach the Reply (names lower-cased)."""

    async def limited(conn: Conn) -> None:
        await conn.request()
        body = b'{"code":429,"msg":"slow down","data":null}'
        await conn.send(
            reply(
                429,
                body,
                "Retry-After: 3",
                "X-RateLimit-Limit: 20",
                "X-RateLimit-Remaining: 0",
                "RateLimit-Policy: 20;w=1",
                "X-Other: ignored",
            )
        )
        await serve_forever(conn)

    async with RawServer(limited) as server, light(server.url) as lt:
        got = await lt.request("POST", CREATE, b"{}")
    assert got.status == 429
    assert got.retry_after == "3"
    assert dict(got.rate_headers) == {
        "x-ratelimit-limit": "20",
        "x-ratelimit-remaining": "0",
        "ratelimit-policy": "20;w=1",
    }
    assert server.requests == ["POST " + CREATE]


RICH = reply(
    503,
    b'{"code":503,"msg":"busy"}',
    "retry-after:   7 ",
    "X-RATELIMIT-REMAINING: 0",
    "X-Ratelimit-Remaining: 1",
    "Keep-Alive: timeout=30",
    "Connection: Close",
)


@pytest.mark.parametrize("pieces", [1, 2], ids=["whole", "split"])
async def test_a_reply_in_one_piece_reads_as_one_in_two(pieces: int) -> None:
    """A whole reply (read without httptools' callbacks) and a split one give the same Reply."""

    async def answer(conn: Conn) -> None:
        await conn.request()
        if pieces == 1:
            await conn.send(RICH)
            return
        await conn.send(RICH[:40])
        while not any(c._received for c in lt._busy):  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0)
        await conn.send(RICH[40:])

    async with RawServer(answer) as server, light(server.url) as lt:
        got = await lt.request("GET", QUERY)
        kept = len(lt._idle)
    assert (got.status, got.body, got.retry_after) == (503, b'{"code":503,"msg":"busy"}', "7")
    assert dict(got.rate_headers) == {"x-ratelimit-remaining": "1"}  # the last one counts
    assert kept == 0  # Connection: close


async def test_a_head_seen_again_reads_the_same_each_time() -> None:
    """The same head bytes on three replies (read once, remembered): each Reply has the
    status, Retry-After and rate headers, in a dict of its own."""
    body = b'{"code":429,"msg":"slow down","data":null}'
    same = reply(429, body, "Retry-After: 2", "X-RateLimit-Remaining: 0")

    async def answer(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(same)

    async with RawServer(answer) as server, light(server.url) as lt:
        got = [await lt.request("POST", CREATE, b"{}") for _ in range(3)]
    assert [(r.status, r.body, r.retry_after) for r in got] == [(429, body, "2")] * 3
    assert [dict(r.rate_headers) for r in got] == [{"x-ratelimit-remaining": "0"}] * 3
    assert len({id(r.rate_headers) for r in got}) == 3
    assert len(server.connections) == 1


async def test_a_remembered_head_over_a_body_in_two_pieces_waits_for_the_rest() -> None:
    """A head read before, whose body now arrives in two writes: the body is joined whole."""
    body = b'{"code":200,"msg":"success","data":{"taskId":"t1"}}'
    whole = reply(200, body)
    cut = len(whole) - 5

    async def answer(conn: Conn) -> None:
        await conn.request()
        await conn.send(whole)
        await conn.request()
        await conn.send(whole[:cut])
        while not any(c._received for c in lt._busy):  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0)
        await conn.send(whole[cut:])
        await serve_forever(conn)

    async with RawServer(answer) as server, light(server.url) as lt:
        first = await lt.request("GET", QUERY)
        second = await lt.request("GET", QUERY)
    assert first.body == second.body == body
    assert len(server.connections) == 1


def self_signed(where: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for ``localhost`` with a fresh self-signed certificate (openssl)."""
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-keyout", str(key), "-out", str(cert), "-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    return server_tls, cert


async def test_https_with_a_verified_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An https upstream: TLS verified against the trusted CA, the connection kept."""
    server_tls, cert = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client's default context trusts it
    async with RawServer(serve_forever, server_tls) as server, light(server.url) as lt:
        first = await lt.request("GET", QUERY)
        second = await lt.request("POST", CREATE, b"{}")
    assert (first.body, second.status) == (OK, 200)
    assert len(server.connections) == 1


async def test_https_refuses_an_untrusted_certificate(tmp_path: Path) -> None:
    """A certificate nobody trusts: a connection error, nothing sent."""
    server_tls, _ = self_signed(tmp_path)
    async with RawServer(serve_forever, server_tls) as server, light(server.url) as lt:
        with pytest.raises(APIConnectionError) as caught:
            await lt.request("POST", CREATE, b"{}")
    assert caught.value.request_sent is False
    assert server.requests == []


# -- timeouts and failures -------------------------------------------------------------------


async def test_a_reply_that_never_comes_times_out_as_sent() -> None:
    """The server reads the request and says nothing: APITimeoutError, request_sent."""
    release = asyncio.Event()
    silent = silent_until(release)

    async with RawServer(silent) as server, light(server.url, read=0.2) as lt:
        with pytest.raises(APITimeoutError) as caught:
            await lt.request("POST", CREATE, b"{}")
        release.set()
    assert caught.value.request_sent is True
    assert server.requests == ["POST " + CREATE]


async def test_slow_headers_time_out_between_bytes() -> None:
    """A status line, then silence longer than the read timeout: APITimeoutError."""
    release = asyncio.Event()

    async def trickle(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\n")
        await release.wait()

    async with RawServer(trickle) as server, light(server.url, read=0.2) as lt:
        with pytest.raises(APITimeoutError):
            await lt.request("GET", QUERY)
        release.set()
    assert len(server.requests) == 1


async def test_requests_in_flight_time_out_one_after_another() -> None:
    """Two unanswered requests, the second sent later: each times out (one timer serves both)."""
    release = asyncio.Event()
    silent = silent_until(release)

    async with RawServer(silent) as server, light(server.url, read=0.2) as lt:
        first = asyncio.create_task(lt.request("GET", QUERY))
        await server.wait_requests(1)
        lt._timeouts = Timeouts(read=0.5, total=5.0)  # still waiting when the first times out
        second = asyncio.create_task(lt.request("POST", CREATE, b"{}"))
        results = await asyncio.gather(first, second, return_exceptions=True)
        release.set()
    assert [type(r) for r in results] == [APITimeoutError, APITimeoutError]
    assert len(server.requests) == 2


async def test_a_shorter_timeout_is_not_held_up_by_a_longer_one_in_flight() -> None:
    """A request with a short read timeout times out while one with a long one still waits."""
    release = asyncio.Event()
    silent = silent_until(release)

    async with RawServer(silent) as server, light(server.url, read=120.0, total=120.0) as lt:
        patient = asyncio.create_task(lt.request("GET", QUERY))
        await server.wait_requests(1)
        lt._timeouts = Timeouts(read=0.2, total=5.0)  # the next request's timeouts
        with pytest.raises(APITimeoutError):
            await lt.request("GET", QUERY)
        assert not patient.done()
        release.set()
        patient.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await patient


async def test_a_refused_connection_was_not_sent() -> None:
    """Nothing listening: APIConnectionError with request_sent False."""
    async with RawServer(serve_forever) as server:
        url = server.url
    async with light(url) as lt:
        with pytest.raises(APIConnectionError) as caught:
            await lt.request("POST", CREATE, b"{}")
    assert caught.value.request_sent is False
    assert "cannot connect" in str(caught.value)


async def test_a_malformed_reply_is_a_connection_error_after_sending() -> None:
    """Garbage instead of HTTP: APIConnectionError, request_sent, the connection dropped."""

    async def garbage(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"SPDY/9 what\r\n\r\n")
        await conn.reader.read()

    async with RawServer(garbage) as server, light(server.url) as lt:
        with pytest.raises(APIConnectionError) as caught:
            await lt.request("GET", QUERY)
        assert lt._count == 0
    assert caught.value.request_sent is True


async def test_an_extra_reply_is_not_mixed_into_the_first_and_retires_the_connection() -> None:
    """Two replies to one request in one write: the first is returned whole, the connection
    is not used again."""

    async def twice(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(reply() + reply(500, b"extra"))

    async with RawServer(twice) as server, light(server.url) as lt:
        first = await lt.request("GET", QUERY)
        second = await lt.request("GET", QUERY)
    assert (first.status, first.body) == (second.status, second.body) == (200, OK)
    assert len(server.connections) == 2


async def test_a_cancelled_request_does_not_leave_its_connection_in_the_pool() -> None:
    """Cancelled while waiting for the reply: that connection is closed, the next is new."""
    first_read = asyncio.Event()

    async def slow_first(conn: Conn) -> None:
        if conn.index == 0:
            await conn.request()
            first_read.set()
            await conn.reader.read()  # until the client hangs up
            return
        await serve_forever(conn)

    async with RawServer(slow_first) as server, light(server.url) as lt:
        task = asyncio.create_task(lt.request("GET", QUERY))
        await first_read.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        got = await lt.request("GET", QUERY)
    assert got.status == 200
    assert len(server.connections) == 2


async def test_the_pool_never_opens_more_than_its_bound() -> None:
    """Six requests at once, two connections allowed: two opened, all six answered."""
    go = asyncio.Event()

    async def held(conn: Conn) -> None:
        while await conn.request() is not None:
            await go.wait()
            await conn.send(reply())

    async with RawServer(held) as server, light(server.url, max_connections=2) as lt:
        tasks = [asyncio.create_task(lt.request("GET", QUERY)) for _ in range(6)]
        await server.wait_requests(2)
        assert len(server.connections) == 2
        go.set()
        got = await asyncio.gather(*tasks)
    assert [r.status for r in got] == [200] * 6
    assert len(server.connections) == 2
    assert len(server.requests) == 6


async def test_waiting_for_a_free_connection_times_out_unsent() -> None:
    """One connection, held: the second request gives up unsent when its total time runs out."""
    release = asyncio.Event()
    silent = silent_until(release)

    async with RawServer(silent) as server, light(server.url, max_connections=1) as lt:
        first = asyncio.create_task(lt.request("POST", CREATE, b"{}"))
        await server.wait_requests(1)
        lt._timeouts = Timeouts(total=0.3)  # only the second request's time runs out
        with pytest.raises(APITimeoutError) as second:
            await lt.request("POST", CREATE, b"{}")
        release.set()
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
    assert second.value.request_sent is False
    assert server.requests == ["POST " + CREATE]


async def test_closing_the_transport_closes_its_connections() -> None:
    """aclose() hangs up every kept connection (the server sees the end of stream)."""
    async with RawServer(serve_forever) as server:
        async with light(server.url) as lt:
            await lt.request("GET", QUERY)
        await server.closed.wait()
    assert len(server.connections) == 1


# -- choosing the transport -------------------------------------------------------------------


def test_the_light_client_is_chosen_only_where_it_can_serve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """http(s) without a proxy: light; a proxy in the environment or another scheme: aiohttp."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert light_transport_class("http://127.0.0.1:8080") is LightTransport
    assert light_transport_class("https://api.ruxa.ai") is LightTransport
    assert light_transport_class("ftp://api.ruxa.ai") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert light_transport_class("https://api.ruxa.ai") is None


async def test_the_gateway_key_client_uses_the_light_client_unless_told_not_to() -> None:
    """default_client: light by default for a loopback URL; aiohttp with http="aiohttp"."""
    key = UpstreamKey(name="k", key="sk-x", base_url="http://127.0.0.1:9")
    auto = default_client(key, timeout=5.0, max_in_flight=4)
    aio = default_client(key, timeout=5.0, max_in_flight=4, http="aiohttp")
    assert type(auto._core.transport) is LightTransport
    assert type(aio._core.transport) is Transport
    assert auto._core.requester.transport is auto._core.transport


def test_upstream_http_is_read_from_the_config() -> None:
    """``upstream_http`` accepts "auto" and "aiohttp" and refuses anything else."""
    assert parse_config({}).upstream_http == "auto"
    assert parse_config({"upstream_http": "aiohttp"}).upstream_http == "aiohttp"
    with pytest.raises(ConfigurationError, match="upstream_http"):
        parse_config({"upstream_http": "curl"})


UVLOOP_CASES = [
    test_a_client_on_the_light_transport_creates_and_queries_on_the_simulator,
    test_requests_share_one_kept_connection,
    test_a_connection_closed_while_idle_is_not_written_to,
    test_a_create_dropped_by_a_kept_connection_is_not_sent_again,
    test_a_query_dropped_by_a_kept_connection_is_sent_again_on_a_new_one,
    test_a_reply_cut_short_is_a_connection_error_after_sending,
    test_a_reply_ended_by_closing_the_connection_is_complete,
    test_a_chunked_body_arrives_whole_and_the_connection_is_kept,
    test_a_reply_that_never_comes_times_out_as_sent,
    test_a_shorter_timeout_is_not_held_up_by_a_longer_one_in_flight,
    test_a_cancelled_request_does_not_leave_its_connection_in_the_pool,
    test_the_pool_never_opens_more_than_its_bound,
]


@pytest.mark.parametrize("case", UVLOOP_CASES, ids=lambda case: case.__name__[5:])
def test_the_edges_hold_on_uvloop(case: Callable[[], Awaitable[None]]) -> None:
    """The same edges on uvloop, the standalone gateway's loop."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(case())  # type: ignore[arg-type]


async def test_the_gateway_builds_its_key_clients_as_upstream_http_says() -> None:
    """A gateway's key clients: light by default, aiohttp's with upstream_http = "aiohttp"."""
    key = UpstreamKey(name="k", key="sk-x", base_url="http://127.0.0.1:9")
    kinds = []
    for http in ("auto", "aiohttp"):
        async with Gateway(GatewayConfig(keys=(key,), upstream_http=http)) as gw:
            slot = gw.pool.get("k")
            assert slot is not None
            kinds.append(type(slot.client._core.transport))
    assert kinds == [LightTransport, Transport]
