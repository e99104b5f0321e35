"""The relay's short path (``_direct``, ``_wire``): an unchanged query reply is not decoded
again, replies in any JSON encoding still are, a key's client is opened once.

A raw loopback server answers each request with the next of a list of bodies;
the client is the gateway's kind (light transport, ``send_directly``).
"""

from __future__ import annotations

import json

import pytest

from ruxa_async import (
    ClientClosedError,
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    RuxaClient,
)
from ruxa_async import _direct as direct_module
from ruxa_async._client import send_directly, send_once, use_transport
from ruxa_async._light_transport import LightTransport
from ruxa_async._transport import Transport
from ruxa_async._wire import parse_reply
from ruxa_async.gateway._config import UpstreamKey
from ruxa_async.gateway._keys import KeySlot

from .test_light_transport import Conn, RawServer, reply


def task(state: str, task_id: str = "t1") -> bytes:
    data = {"taskId": task_id, "state": state, "param": "{}", "resultJson": ""}
    return json.dumps({"code": 200, "msg": "success", "data": data}).encode()


def answering(*replies: bytes) -> RawServer:
    """A server answering the n-th request with ``replies[n]`` (all on kept connections)."""
    queue = list(replies)

    async def handler(conn: Conn) -> None:
        while queue and await conn.request() is not None:
            await conn.send(queue.pop(0))

    return RawServer(handler)


def relay_client(url: str, transport: type[Transport] = LightTransport) -> RuxaClient:
    """A key client as the gateway builds it (light transport, the short path), not opened."""
    client = RuxaClient(api_key="sk-test", base_url=url)
    use_transport(client, transport)
    send_directly(client, max_pause=5.0)
    return client


async def test_the_same_bytes_give_the_same_data_and_new_bytes_new_data() -> None:
    waiting, running = task("waiting"), task("running")
    async with (
        answering(
            reply(body=waiting), reply(body=waiting), reply(body=running), reply(body=waiting)
        ) as server,
        relay_client(server.url) as client,
    ):
        first = await send_once(client, "query", "/api/v1/tasks/query/t1")
        again = await send_once(client, "query", "/api/v1/tasks/query/t1")
        changed = await send_once(client, "query", "/api/v1/tasks/query/t1")
        back = await send_once(client, "query", "/api/v1/tasks/query/t1")
    assert again is first
    assert changed["state"] == "running"
    assert back == first
    assert back is not first  # remembered is the last reply only
    assert len(server.requests) == 4  # every query still went to the service


async def test_errors_are_raised_every_time_and_do_not_replace_the_last_reply() -> None:
    waiting = task("waiting")
    missing = json.dumps({"code": 404, "msg": "task not found", "data": None}).encode()
    async with (
        answering(
            reply(body=waiting), reply(404, missing), reply(404, missing), reply(body=waiting)
        ) as server,
        relay_client(server.url) as client,
    ):
        first = await send_once(client, "query", "/api/v1/tasks/query/t1")
        for _ in range(2):
            with pytest.raises(NotFoundError):
                await send_once(client, "query", "/api/v1/tasks/query/t1")
        last = await send_once(client, "query", "/api/v1/tasks/query/t1")
    assert last is first


async def test_paths_do_not_share_replies_and_the_memo_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(direct_module, "_MEMO", 2)
    same = task("waiting")
    server = answering(*(reply(body=same) for _ in range(5)))
    async with server, relay_client(server.url) as client:
        a = await send_once(client, "query", "/api/v1/tasks/query/a")
        b = await send_once(client, "query", "/api/v1/tasks/query/b")
        c = await send_once(client, "query", "/api/v1/tasks/query/c")  # forgets a
        assert client._core.direct is not None
        assert len(client._core.direct._memo) == 2
        a2 = await send_once(client, "query", "/api/v1/tasks/query/a")
        c2 = await send_once(client, "query", "/api/v1/tasks/query/c")
    assert a == b == c
    assert a is not b
    assert b is not c
    assert a2 is not a  # forgotten: decoded again
    assert c2 is c


async def test_creates_are_never_answered_from_the_memo() -> None:
    created = json.dumps({"code": 200, "msg": "success", "data": {"taskId": "t9"}}).encode()
    body = b'{"model": "m", "input": {}}'
    server = answering(reply(body=created), reply(body=created))
    async with server, relay_client(server.url) as client:
        one = await send_once(client, "create", "/api/v1/tasks/create", body)
        two = await send_once(client, "create", "/api/v1/tasks/create", body)
    assert one == two == {"taskId": "t9"}
    assert one is not two


@pytest.mark.parametrize("transport", [Transport, LightTransport])
async def test_the_short_path_reads_the_same_over_either_transport(
    transport: type[Transport],
) -> None:
    """aiohttp's transport (a reply object) and the light one (a tuple) give the same results."""
    created = json.dumps({"code": 200, "msg": "success", "data": {"taskId": "t9"}}).encode()
    limited = json.dumps({"code": 429, "msg": "slow down", "data": None}).encode()
    waiting = task("waiting")
    server = answering(
        reply(body=created),
        reply(body=waiting),
        reply(body=waiting),
        reply(429, limited, "Retry-After: 7"),
    )
    async with server, relay_client(server.url, transport) as client:
        one = await send_once(client, "create", "/api/v1/tasks/create", b"{}")
        first = await send_once(client, "query", "/api/v1/tasks/query/t1")
        again = await send_once(client, "query", "/api/v1/tasks/query/t1")
        with pytest.raises(RateLimitError) as limit:
            await send_once(client, "query", "/api/v1/tasks/query/t1")
        assert client._core.direct is not None
        paused = client._core.direct.paused_for("query")
    assert one == {"taskId": "t9"}
    assert again is first
    assert first["state"] == "waiting"
    assert limit.value.retry_after == 7.0
    assert 0 < paused <= 5.0  # at most max_pause
    assert server.requests == [
        "POST /api/v1/tasks/create",
        *["GET /api/v1/tasks/query/t1"] * 3,
    ]


async def test_a_key_client_opened_once_still_refuses_after_closing() -> None:
    """The key slot opens its client once; a closed client still fails its next send."""
    waiting = task("waiting")
    server = answering(reply(body=waiting))
    async with server:
        slot = KeySlot(
            UpstreamKey(name="k", key="sk-test", base_url=server.url), relay_client(server.url)
        )
        client = await slot.ready()
        assert await slot.ready() is client
        assert (await send_once(client, "query", "/api/v1/tasks/query/t1"))["state"] == "waiting"
        await client.aclose()
        with pytest.raises(ClientClosedError):
            await send_once(await slot.ready(), "query", "/api/v1/tasks/query/t1")
    assert len(server.requests) == 1


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32-be"])
def test_replies_in_every_json_encoding_are_read(encoding: str) -> None:
    """UTF-8 takes the short way; the other encodings JSON allows still decode."""
    body = json.dumps({"code": 200, "msg": "success", "data": {"state": "é"}}).encode(encoding)
    assert parse_reply(200, body) == {"state": "é"}


def test_a_reply_that_is_not_json_is_malformed() -> None:
    for body in (b"{not json", b"\xff\xfe\x00", b"[" * 100_000):
        with pytest.raises(MalformedResponseError):
            parse_reply(200, body)
