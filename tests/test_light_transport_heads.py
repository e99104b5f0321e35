"""The light transport's request heads, made once per path and key: the same bytes as made anew.

A raw loopback server keeps every request's bytes; the transport's key can change
between requests (a rotated key must be sent from the next request on).
"""

from __future__ import annotations

import asyncio

import pytest

from ruxa_async import APIConnectionError, Timeouts
from ruxa_async._light_conn import _whole_reply
from ruxa_async._light_transport import LightTransport

from .test_light_transport import OK, RawServer, reply

QUERY = "/api/v1/tasks/query/t1"
CREATE = "/api/v1/tasks/create"


class Keeper:
    """A raw server's handler: keeps each request's bytes and answers 200."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def __call__(self, conn: object) -> None:
        reader: asyncio.StreamReader = conn.reader  # type: ignore[attr-defined]
        writer: asyncio.StreamWriter = conn.writer  # type: ignore[attr-defined]
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            self.seen.append(head + await reader.readexactly(length))
            writer.write(reply(200, OK))
            await writer.drain()


def expected(method: str, path: str, key: str, body: bytes | None, netloc: str) -> bytes:
    """The request's bytes as the transport is documented to send them."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {netloc}\r\nUser-Agent: ruxa-async/test\r\n"
        f"Accept: application/json\r\nAuthorization: Bearer {key}\r\n"
    )
    if body is None:
        return (head + "\r\n").encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def test_heads_made_once_are_the_bytes_made_anew_and_follow_a_new_key() -> None:
    """Repeated and new paths, bodies of new lengths, a rotated key: each request as made anew."""
    keeper = Keeper()
    keys = ["sk-one"]
    async with RawServer(keeper) as server:
        netloc = server.url.removeprefix("http://")
        lt = LightTransport(
            base_url=server.url,
            key=lambda: keys[0],
            timeouts=Timeouts(connect=5.0, read=10.0, total=30.0),
            max_connections=1,
            user_agent="ruxa-async/test",
        )
        lt.open()
        sent: list[tuple[str, str, str, bytes | None]] = []
        try:
            for method, path, body in [
                ("GET", QUERY, None),
                ("GET", QUERY, None),
                ("POST", CREATE, b'{"a": 1}'),
                ("POST", CREATE, b'{"a": 12}'),
                ("GET", "/api/v1/tasks/query/t2", None),
                ("ROTATE", "", None),
                ("GET", QUERY, None),
                ("POST", CREATE, b'{"a": 1}'),
            ]:
                if method == "ROTATE":
                    keys[0] = "sk-two"
                    continue
                assert (await lt.request(method, path, body)).status == 200
                sent.append((method, path, keys[0], body))
        finally:
            await lt.aclose()
    assert keeper.seen == [expected(m, p, k, b, netloc) for m, p, k, b in sent]


@pytest.mark.parametrize("path", ["/api/v1/tasks/query/a b", "/api/v1/tasks/query/\u00e9"])
async def test_an_invalid_path_is_refused_unsent_every_time(path: str) -> None:
    """A path the request line cannot carry fails each time (nothing remembered for it)."""
    keeper = Keeper()
    async with RawServer(keeper) as server:
        lt = LightTransport(
            base_url=server.url,
            key=lambda: "sk-test",
            timeouts=Timeouts(connect=5.0, read=10.0, total=30.0),
            max_connections=1,
            user_agent="ruxa-async/test",
        )
        lt.open()
        try:
            for _ in range(2):
                with pytest.raises(APIConnectionError, match="invalid URL") as failed:
                    await lt.request("GET", path)
                assert failed.value.request_sent is False
        finally:
            await lt.aclose()
    assert keeper.seen == []


def replies() -> list[bytes]:
    """Replies whole and not, with heads of one length and of others, blank lines in bodies."""
    body = b'{"code":200,"msg":"success","data":{"taskId":"t1"}}'
    plain = reply(200, body)
    return [
        plain,
        reply(404, body),  # the same head length, another head
        reply(200, body + b"\r\n\r\n"),
        reply(200, b"\r\n\r\n" + body),
        reply(200, b"x\r\n\r\n" * 20),
        reply(200, body, "X-Long-Header: " + "v" * 40),
        plain[:-3],  # cut short
        plain + b"HTTP/1.1",  # more than one reply
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" + plain,
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        b"\r\n\r\n",
        b"",
    ]


def test_a_guessed_head_length_reads_as_the_search_does() -> None:
    """``_whole_reply`` with any guess of the head's length gives what it gives with none."""
    cases = replies()
    for data in cases:  # remember every head first: a guess can only find remembered ones
        _whole_reply(data)
    for data in cases:
        expected = _whole_reply(data)
        for size in range(len(data) + 4):
            assert _whole_reply(data, size) == expected, (data, size)
