"""Hostile input at the gateway, and the promise that no secret ever leaves it."""

from __future__ import annotations

import asyncio
import base64
import json
from urllib.parse import quote

import aiohttp
import pytest

from ruxa_async.gateway import AlertSettings, Policy, mint_token
from ruxa_async.testing import FakeRuxa, SimConfig
from tests.helpers_gateway import (
    NB,
    PROMPT,
    SECRET,
    SORA,
    TOKENS,
    WEBHOOK_SECRET,
    captured_logs,
    config_for,
    raw,
    running,
    user_client,
)
from tests.test_gateway_relay import inbox

UPSTREAM_KEY = "sk-upstream-very-secret-0123456789abcdef"


@pytest.fixture
async def sim() -> FakeRuxa:
    async with FakeRuxa(SimConfig(seed=11, api_key=UPSTREAM_KEY)) as fake:
        yield fake


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{not json", 400),
        (b"[1, 2, 3]", 400),
        (b"\xff\xfe\x00garbage", 400),
        (b"[" * 100_000 + b"]" * 100_000, 413),
        (b"[" * 20_000 + b"]" * 20_000, 400),
        (json.dumps({"model": NB, "input": "not an object"}).encode(), 422),
        (json.dumps({"model": 7, "input": {}}).encode(), 422),
        (json.dumps({"model": NB, "input": {"prompt": "x" * 70_000}}).encode(), 413),
    ],
)
async def test_malformed_and_oversized_bodies_get_clear_errors(
    sim: FakeRuxa, data: bytes, code: int
) -> None:
    """Broken or oversized create bodies: the right code, a Ruxa envelope, nothing upstream."""
    async with running(config_for(sim)) as gw, aiohttp.ClientSession() as http:
        status, envelope, _ = await raw(
            http, "POST", f"{gw.url}/api/v1/tasks/create", token=TOKENS["alice"], data=data
        )
        assert status == code
        assert envelope["code"] == code
        assert envelope["message"]
        async with user_client(gw, TOKENS["bob"]) as bob:  # the gateway still serves others
            await bob.create_task(NB, PROMPT)
    assert sim.stats().tasks_created == 1


@pytest.mark.parametrize(
    "task_id",
    [
        "..%2F..%2Fetc%2Fpasswd",
        "..",
        "%2E%2E",
        "task%00id",
        "a" * 5000,
        "%E2%80%AEtask",
        "task_x;drop table tasks",
        "task_x%0d%0aX-Injected:%201",
    ],
)
async def test_path_tricks_in_task_ids_are_plain_404s(sim: FakeRuxa, task_id: str) -> None:
    """Traversal, NUL, huge or odd ids: a 404 envelope, never a crash or another route."""
    async with running(config_for(sim)) as gw, aiohttp.ClientSession() as http:
        async with user_client(gw, TOKENS["alice"]) as alice:
            await alice.create_task(NB, PROMPT)
        url = f"{gw.url}/api/v1/tasks/query/{task_id}"
        status, envelope, headers = await raw(http, "GET", url, token=TOKENS["alice"])
    assert status == 404
    assert envelope["code"] == 404
    assert "X-Injected" not in headers
    assert sim.stats().queries == 0


async def test_a_slow_client_times_out_while_others_are_served(sim: FakeRuxa) -> None:
    """A client trickling its body gets 408 after body_timeout; meanwhile others are served."""
    async with running(config_for(sim, body_timeout=0.5)) as gw:
        assert gw.url is not None
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (
            "POST /api/v1/tasks/create HTTP/1.1\r\n"
            f"Host: {host}\r\nAuthorization: Bearer {TOKENS['alice']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        writer.write(head.encode())
        await writer.drain()
        _slow_loris, idle_writer = await asyncio.open_connection(host, int(port))
        idle_writer.write(b"GET /api/v1/tasks/query/x HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        async with user_client(gw, TOKENS["bob"]) as bob:
            for _ in range(5):
                await bob.create_task(NB, PROMPT)
        reply = await reader.read(4096)
        writer.close()
        idle_writer.close()
    assert reply.startswith(b"HTTP/1.1 408")
    assert b'"code":408' in reply
    assert sim.stats().tasks_created == 5


async def read_to_end(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Everything the peer sent until it closed, and whether it closed with a reset."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionResetError:
        return data, True
    return data, False


async def test_a_client_trickling_its_headers_is_cut_off_while_others_are_served(
    sim: FakeRuxa,
) -> None:
    """Headers sent byte by byte (or never) get 408 after header_timeout; others are served."""
    async with running(config_for(sim, header_timeout=0.5)) as gw:
        assert gw.url is not None
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        silent_reader, silent_writer = await asyncio.open_connection(host, int(port))
        head = f"GET /api/v1/tasks/query/x HTTP/1.1\r\nHost: {host}\r\nX-Slow: " + "a" * 10_000
        sent = 0

        async def trickle() -> None:
            nonlocal sent
            for byte in head.encode():
                if writer.is_closing() or reader.at_eof():
                    return
                writer.write(bytes([byte]))
                sent += 1
                await asyncio.sleep(0.02)  # the slow client's own pace

        trickling = asyncio.create_task(trickle())
        async with user_client(gw, TOKENS["bob"]) as bob:
            for _ in range(3):
                await bob.create_task(NB, PROMPT)
        try:
            reply, reset = await read_to_end(reader)  # until the gateway closes the connection
            silent, _ = await read_to_end(silent_reader)
        finally:
            trickling.cancel()
            await asyncio.gather(trickling, return_exceptions=True)
            writer.close()
            silent_writer.close()
        stats = gw.statistics()
    # Closing a socket whose peer is still trickling bytes in may send a reset, which can
    # overtake the 408 on the way; the gateway's own count below says it answered 408.
    assert reset or (reply.startswith(b"HTTP/1.1 408") and b'"code":408' in reply)
    assert silent.startswith(b"HTTP/1.1 408")
    assert 0 < sent < len(head)
    assert stats.denials["header_timeout"] == 2
    assert sim.stats().tasks_created == 3


def forms(secret: str) -> list[str]:
    """The secret raw, URL-encoded, base64 and hex, as a leak would show it."""
    raw_bytes = secret.encode()
    return [
        secret,
        quote(secret, safe=""),
        base64.b64encode(raw_bytes).decode(),
        base64.urlsafe_b64encode(raw_bytes).decode().rstrip("="),
        raw_bytes.hex(),
    ]


async def test_no_secret_appears_in_responses_headers_logs_audit_metrics_or_relays(
    sim: FakeRuxa,
) -> None:
    """The upstream key, raw user tokens and the signing secrets are never emitted anywhere."""
    scoped = mint_token(SECRET, "dana", ttl=300, models=[NB], budget=8.0)
    seen: list[str] = []
    async with inbox() as box, inbox() as alerts, captured_logs() as logs:
        config = config_for(
            sim,
            policy=Policy(budget=12.0, requests_per_second=50, burst=50),
            alerts=AlertSettings(webhook_url=alerts.url),
        )
        async with running(config) as gw, aiohttp.ClientSession() as http:
            base = f"{gw.url}/api/v1/tasks"
            calls = [
                (
                    "POST",
                    "/create",
                    TOKENS["alice"],
                    {"model": NB, "input": PROMPT, "callBackUrl": box.url},
                ),
                ("POST", "/create", TOKENS["alice"], {"model": NB, "input": PROMPT}),
                ("POST", "/create", TOKENS["alice"], {"model": NB, "input": PROMPT}),
                ("POST", "/create", TOKENS["alice"], {"model": NB, "input": PROMPT}),  # 402
                ("POST", "/create", TOKENS["bob"], {"model": SORA, "input": {"prompt": 1}}),
                ("POST", "/create", scoped, {"model": NB, "input": PROMPT}),
                ("POST", "/create", scoped, {"model": SORA, "input": PROMPT}),
                ("POST", "/create", "rxu_wrong", {"model": NB, "input": PROMPT}),
                ("POST", "/create", UPSTREAM_KEY, {"model": NB, "input": PROMPT}),
            ]
            ids = []
            for method, path, token, body in calls:
                status, envelope, headers = await raw(
                    http, method, base + path, token=token, body=body
                )
                seen += [json.dumps(envelope), json.dumps(dict(headers))]
                if status == 200:
                    ids.append((token, envelope["data"]["taskId"]))
            for token, task_id in ids:
                for who in (token, TOKENS["bob"]):
                    _, envelope, headers = await raw(
                        http, "GET", f"{base}/query/{task_id}", token=who
                    )
                    seen += [json.dumps(envelope), json.dumps(dict(headers))]
            sim.reconfigure(api_key="sk-rotated")  # the key gets refused: an alert goes out
            status, envelope, headers = await raw(
                http,
                "POST",
                f"{base}/create",
                token=TOKENS["carol"],
                body={"model": NB, "input": PROMPT},
            )
            seen += [json.dumps(envelope), json.dumps(dict(headers))]
            await box.arrived.wait()
            await alerts.arrived.wait()
            await gw.relay.drain()
            async with http.get(f"{gw.url}/metrics") as resp:
                metrics = await resp.text()
            seen += [metrics, json.dumps(await gw.store.audit_records())]
            seen += [repr(gw), repr(gw.config), repr(gw.statistics())]
    assert "ruxa_gateway_requests" in metrics
    assert 'user="alice"' in metrics
    seen += ["\n".join(logs.lines), json.dumps(list(gw.alerter.sent))]
    for headers, body in box.received + alerts.received:
        seen += [json.dumps(headers), body.decode()]
    text = "\n".join(seen)
    assert "key_disabled" in text
    assert "ownership_refused" in text
    for secret in [UPSTREAM_KEY, *TOKENS.values(), scoped, SECRET, WEBHOOK_SECRET]:
        for form in forms(secret):
            assert form not in text, f"a secret leaked ({secret[:6]}...)"
