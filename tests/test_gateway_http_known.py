"""The HTTP server's remembered request heads: taken without the parser, with the same result.

A head the parser read whole (with its body and nothing more, from a message
boundary) is remembered by its bytes; the same bytes later skip the parser.
Each scenario here is fed twice to a server that remembers and to one that
never does (always the parser): the requests the application sees and the
bytes written back must be the same, byte for byte but for ``Date``.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from ruxa_async.gateway import _httpheads
from ruxa_async.gateway._exchange import Request, Response
from ruxa_async.gateway._httpserver import HttpServer, _Connection

CREATE_BODY = b'{"model":"google/nano-banana","input":{"prompt":"a red fox"}}'
CREATE = (
    b"POST /api/v1/tasks/create HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer rxu_t\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(CREATE_BODY)
) + CREATE_BODY
QUERY = b"GET /api/v1/tasks/query/task_1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t\r\n\r\n"


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: t", *extra, f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# Each scenario: the reads the connection gets, in order.
SCENARIOS: dict[str, list[bytes]] = {
    "create": [CREATE],
    "query": [QUERY],
    "query string and escapes": [b"GET /a%20b/%C3%A9?x=1&y=%41 HTTP/1.1\r\nHost: t\r\n\r\n"],
    "HEAD": [b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n"],
    "HTTP/1.0 keep-alive": [b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"],
    "HTTP/1.0 closing": [b"GET /a HTTP/1.0\r\n\r\n"],
    "Connection: close": [b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"],
    "repeated header, odd case, spaces": [
        b"GET /r HTTP/1.1\r\nHOST: t\r\nX-A:  1 \r\nx-a: 2\r\nX-Empty:\r\n\r\n"
    ],
    "latin-1 and invalid UTF-8 values": [b"GET /v HTTP/1.1\r\nHost: t\r\nX-B: \xe9\xff\r\n\r\n"],
    "leading CRLF": [b"\r\nGET /lead HTTP/1.1\r\nHost: t\r\n\r\n"],
    "body holding a blank line": [post("/p", b"a\r\n\r\nb")],
    "empty body": [post("/p", b"")],
    "Content-Length with zeros": [b"POST /z HTTP/1.1\r\nHost: t\r\nContent-Length: 003\r\n\r\nabc"],
    "Expect: 100-continue": [post("/e", b"xyz", "Expect: 100-continue")],
    "chunked": [
        b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ],
    "absolute form": [b"GET http://example.com/abs?q=1 HTTP/1.1\r\nHost: t\r\n\r\n"],
    "pipelined": [CREATE + QUERY + CREATE],
    "pipelined with a partial third": [CREATE + CREATE + CREATE[:40], CREATE[40:]],
    "head split across reads": [CREATE[:30], CREATE[30:]],
    "body split across reads": [CREATE[:-5], CREATE[-5:]],
    "head then body": [CREATE[: -len(CREATE_BODY)], CREATE_BODY],
    "garbage after a request": [CREATE + b"NOT HTTP AT ALL\r\n\r\n"],
    "more than the body": [CREATE + b"x"],
    "oversized body": [post("/big", b"x" * 1001)],
    "upgrade": [b"GET /u HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"],
    "smuggling": [
        b"POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"
    ],
    "bare LF": [b"GET /lf HTTP/1.1\nHost: t\n\n"],
}


class App:
    """Echoes every field of a request, so that any difference shows in the reply."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    async def __call__(self, request: Request) -> Response:
        fields = (request.method, request.path, request.query, dict(request.headers))
        self.seen.append((*fields, request.body, request.peer))
        return Response(200, (("X-Seen", "1"),), repr((*fields, request.body)).encode())

    def refused(self, request: Request | None, status: int, message: str) -> Response:
        return Response(status, (), message.encode())


class Transport:
    """What a connection writes to: keeps every write, and whether it was closed."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.written.append(b"<EOF>")

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Forgetful(dict[bytes, Any]):
    """A memo that never keeps anything: every request goes through the parser."""

    def __setitem__(self, key: bytes, value: Any) -> None:
        pass


class CountingParser:
    """The connection's parser, counting the reads fed to it."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.fed = 0

    def feed_data(self, data: bytes) -> None:
        self.fed += 1
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


def server(remember: bool) -> tuple[HttpServer, App]:
    app = App()
    http = HttpServer(app, max_body=1000, body_timeout=5, header_timeout=5, keepalive_timeout=5)
    if not remember:
        http.known_heads = Forgetful()
    return http, app


def connect(http: HttpServer) -> tuple[_Connection, Transport, CountingParser]:
    conn, transport = _Connection(http), Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    parser = conn._parser = CountingParser(conn._parser)  # type: ignore[assignment]
    return conn, transport, parser


async def settle(conn: _Connection) -> None:
    """Let the connection's task answer everything it has read (loop turns, no clock)."""
    for _ in range(1000):
        await asyncio.sleep(0)
        if not conn._busy:
            return
    raise AssertionError("the connection is still answering")


async def run(http: HttpServer, reads: list[bytes], times: int) -> tuple[Any, ...]:
    """Feed ``reads`` to one connection ``times`` over; what it wrote, and its state."""
    conn, transport, parser = connect(http)
    for _ in range(times):
        for data in reads:
            conn.data_received(data)
            await settle(conn)
    written = re.sub(rb"Date: [^\r]*\r\n", b"Date: -\r\n", b"".join(transport.written))
    conn.close()
    return written, transport.closed, conn._stage, conn._done_reading, parser.fed


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_a_remembered_head_gives_what_the_parser_gives(name: str) -> None:
    """Fed twice over, a scenario gets the same requests and replies with and without the memo."""
    reads = SCENARIOS[name]
    remembering, seen_remembering = server(True)
    forgetting, seen_forgetting = server(False)
    got = await run(remembering, reads, 2)
    expected = await run(forgetting, reads, 2)
    assert got[:4] == expected[:4]
    assert seen_remembering.seen == seen_forgetting.seen
    assert expected[0].startswith(b"HTTP/1.1 ")  # every scenario gets an answer


@pytest.mark.parametrize("request_bytes", [CREATE, QUERY, b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n"])
async def test_a_repeated_request_skips_the_parser(request_bytes: bytes) -> None:
    """The second and later copies of a whole request in one read are not fed to the parser."""
    http, app = server(True)
    _, _, _, _, fed = await run(http, [request_bytes], 3)
    assert fed == 1
    assert len(app.seen) == 3
    assert app.seen[0] == app.seen[1] == app.seen[2]
    head = request_bytes[: request_bytes.index(b"\r\n\r\n") + 4]
    assert list(http.known_heads) == [head]


@pytest.mark.parametrize(
    "name",
    [
        "HTTP/1.0 closing",
        "Connection: close",
        "Expect: 100-continue",
        "chunked",
        "upgrade",
        "head split across reads",
        "body split across reads",
        "pipelined",
        "garbage after a request",
        "more than the body",
        "Content-Length with zeros",
        "bare LF",
    ],
)
async def test_heads_framed_beyond_their_length_or_not_read_whole_are_not_remembered(
    name: str,
) -> None:
    """Only a whole single request whose framing is its Content-Length is remembered."""
    http, _ = server(True)
    conn, _, _ = connect(http)
    for data in SCENARIOS[name]:
        conn.data_received(data)
        await settle(conn)
    assert http.known_heads == {}


async def test_a_remembered_head_with_its_body_not_all_there_goes_to_the_parser() -> None:
    """The same head with half its body: the parser reads it (and the next whole one skips it)."""
    http, app = server(True)
    _, _, _, _, fed = await run(http, [CREATE, CREATE[:-5], CREATE[-5:], CREATE], 1)
    assert fed == 3
    assert len(app.seen) == 3
    assert app.seen[0] == app.seen[1] == app.seen[2]


async def test_the_memo_is_bounded_and_skips_long_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most ``_MAX_KNOWN`` heads are kept, none longer than ``_MAX_KNOWN_HEAD``."""
    monkeypatch.setattr(_httpheads, "_MAX_KNOWN", 8)
    http, app = server(True)
    conn, _, _ = connect(http)
    for n in range(20):
        conn.data_received(f"GET /n{n} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        await settle(conn)
        assert 0 < len(http.known_heads) <= 8
    http.known_heads.clear()
    long = f"GET /long HTTP/1.1\r\nHost: t\r\nX-Pad: {'p' * _httpheads._MAX_KNOWN_HEAD}\r\n\r\n"
    conn.data_received(long.encode())
    await settle(conn)
    assert http.known_heads == {}
    assert len(app.seen) == 21


GUESSED = {
    "a remembered create": CREATE,
    "a remembered query": QUERY,
    "pipelined remembered heads": CREATE + QUERY + CREATE + QUERY,
    "an unknown head as long as a remembered one": QUERY.replace(b"task_1", b"task_2"),
    "a remembered head, its body ending in a blank line": post("/p", b"ab\r\n\r\n"),
    "a remembered head, a body of blank lines": post("/p", b"\r\n\r\n" * 2),
    "a remembered head then garbage": QUERY + b"NOT HTTP\r\n\r\n",
    "a remembered head, half its body": CREATE[:-7],
}
TAUGHT = [CREATE, QUERY, post("/p", b"ab\r\n\r\n"), post("/p", b"\r\n\r\n" * 2)]


@pytest.mark.parametrize("name", list(GUESSED))
async def test_any_guess_of_the_head_length_reads_as_the_parser_does(name: str) -> None:
    """Whatever the connection's guess of the next head's length, the requests and replies
    are the parser's."""
    data = GUESSED[name]
    forgetting, seen_forgetting = server(False)
    expected = await run(forgetting, [data], 1)
    for guess in range(len(data) + 5):
        remembering, seen_remembering = server(True)
        teacher, _, _ = connect(remembering)
        for taught in TAUGHT:
            teacher.data_received(taught)
            await settle(teacher)
        assert len(remembering.known_heads) == len(TAUGHT)
        conn, transport, _ = connect(remembering)
        conn._head_size = guess
        conn.data_received(data)
        await settle(conn)
        written = re.sub(rb"Date: [^\r]*\r\n", b"Date: -\r\n", b"".join(transport.written))
        assert (written, conn._stage, conn._done_reading) == expected[0:1] + expected[2:4]
        assert seen_remembering.seen[len(TAUGHT) :] == seen_forgetting.seen, guess
