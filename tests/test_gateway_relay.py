"""Callback relay: the gateway takes Ruxa's callback, then signs and delivers it to the owner."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import attrs
import pytest
from aiohttp import web

from ruxa_async import CallbackVerificationError
from ruxa_async.gateway import CallbackSettings, Policy, UserEntry, hash_token, verify_webhook
from ruxa_async.testing import CallbackDelivery, FakeRuxa, ModelBehavior, SimConfig
from tests.helpers_gateway import (
    NB,
    PROMPT,
    TOKENS,
    WEBHOOK_SECRET,
    config_for,
    eventually,
    raw,
    running,
    user_client,
)


class Inbox:
    """A user's webhook receiver on loopback; fails the first ``fail_first`` POSTs with 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.arrived = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            return web.Response(status=500)
        self.received.append((dict(request.headers), await request.read()))
        self.arrived.set()
        return web.Response(text="ok")


@asynccontextmanager
async def inbox(fail_first: int = 0) -> AsyncIterator[Inbox]:
    box = Inbox(fail_first)
    app = web.Application()
    app.router.add_post("/hook", box.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    box.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield box
    finally:
        await runner.cleanup()


async def create(gw_url: str, token: str, callback: object) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http:
        status, envelope, _ = await raw(
            http,
            "POST",
            f"{gw_url}/api/v1/tasks/create",
            token=token,
            body={"model": NB, "input": PROMPT, "callBackUrl": callback},
        )
    return status, envelope


async def test_a_callback_is_relayed_once_signed_to_its_owner() -> None:
    """Ruxa's callback (sent twice) plus the owner's polling yield exactly one signed delivery."""
    sim_config = SimConfig(seed=4, callbacks=CallbackDelivery(duplicate=1.0))
    async with FakeRuxa(sim_config) as sim, inbox() as box, running(config_for(sim)) as gw:
        status, envelope = await create(gw.url or "", TOKENS["alice"], box.url)
        assert status == 200
        task_id = envelope["data"]["taskId"]  # type: ignore[index]
        async with user_client(gw, TOKENS["alice"]) as alice:
            assert (await alice.wait(task_id, timeout=20)).succeeded
        await box.arrived.wait()
        await eventually(lambda: sim.stats().callbacks_delivered >= 2)
        await gw.relay.drain()
    assert len(box.received) == 1
    headers, body = box.received[0]
    verify_webhook(WEBHOOK_SECRET, headers, body)
    assert headers["webhook-id"] == f"{task_id}.success"
    payload = json.loads(body)
    assert payload["code"] == 200
    assert payload["data"]["taskId"] == task_id
    assert "remainedCredits" not in payload["data"]
    assert json.loads(payload["data"]["param"])["callBackUrl"] == box.url
    assert gw.callback_token not in body.decode()
    with pytest.raises(CallbackVerificationError):
        verify_webhook("whsec_" + "b3RoZXItc2VjcmV0", headers, body)


async def test_relays_are_retried_until_the_receiver_accepts() -> None:
    """Two 500s from the receiver, then success: delivered once, on the third attempt."""
    async with (
        FakeRuxa(SimConfig(seed=5)) as sim,
        inbox(fail_first=2) as box,
        running(config_for(sim)) as gw,
    ):
        assert (await create(gw.url or "", TOKENS["alice"], box.url))[0] == 200
        await box.arrived.wait()
        await gw.relay.drain()
        records = await gw.store.audit_records()
    delivered = [r for r in records if r["event"] == "relay_delivered"]
    assert box.attempts == 3
    assert len(box.received) == 1
    assert delivered[0]["attempts"] == 3


async def test_each_user_can_have_their_own_signing_secret() -> None:
    """Bob's deliveries are signed with Bob's secret."""
    async with FakeRuxa(SimConfig(seed=6)) as sim, inbox() as box:
        config = config_for(sim)
        bob = UserEntry(
            name="bob",
            token_sha256=hash_token(TOKENS["bob"]),
            policy=Policy(),
            webhook_secret="bobs-own-secret",
        )
        config = attrs.evolve(config, users={**config.users, "bob": bob})
        async with running(config) as gw:
            assert (await create(gw.url or "", TOKENS["bob"], box.url))[0] == 200
            await box.arrived.wait()
    headers, body = box.received[0]
    verify_webhook("bobs-own-secret", headers, body)


async def test_a_lost_upstream_callback_is_still_relayed_after_a_poll() -> None:
    """Ruxa never calls back; the owner's poll sees the end and the relay still happens."""
    silent = SimConfig(seed=7, callbacks=CallbackDelivery(drop=1.0))
    async with FakeRuxa(silent) as sim, inbox() as box, running(config_for(sim)) as gw:
        _status, envelope = await create(gw.url or "", TOKENS["alice"], box.url)
        async with user_client(gw, TOKENS["alice"]) as alice:
            await alice.wait(envelope["data"]["taskId"], timeout=20)  # type: ignore[index]
        await box.arrived.wait()
    assert sim.stats().callbacks_delivered == 0
    assert len(box.received) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook\r\nX-Injected: 1",
        "http://example.com/a b",
        "http://example.com/\x00",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "gopher://example.com/",
        "//example.com/relative",
        "http://user:pass@example.com/",
        "http://127.0.0.1:9/private",
        "http://[::1]/private",
        "http://10.0.0.8/internal",
        "http://localhost/internal",
        "http://example.com:99999/",
        12345,
        "http://example.com/" + "a" * 3000,
    ],
)
async def test_unsafe_callback_urls_are_refused(url: object) -> None:
    """Header injection, other schemes, credentials and private hosts: 422, nothing created."""
    async with FakeRuxa(SimConfig(seed=8)) as sim:
        config = config_for(sim, callbacks=CallbackSettings(allow_private=False))
        async with running(config) as gw:
            status, envelope = await create(gw.url or "", TOKENS["alice"], url)
    assert status == 422
    assert envelope["code"] == 422
    assert "callBackUrl" in str(envelope["message"])
    assert sim.stats().requests == 0


async def test_the_callback_inbox_refuses_wrong_addresses_and_forged_signatures() -> None:
    """A wrong secret path is 401; with an upstream HMAC key, an unsigned callback is 401."""
    behavior = ModelBehavior(median_seconds=30, sigma=0)
    async with FakeRuxa(SimConfig(seed=9, default_behavior=behavior)) as sim:
        config = config_for(
            sim, callbacks=CallbackSettings(allow_private=True, upstream_hmac_key="kie-hmac")
        )
        async with running(config) as gw, user_client(gw, TOKENS["alice"]) as alice:
            task_id = await alice.create_task(NB, PROMPT)
            forged = json.dumps({"code": 200, "data": {"taskId": task_id, "state": "success"}})
            async with aiohttp.ClientSession() as http:
                wrong = await raw(
                    http, "POST", f"{gw.url}/_gateway/callback/guess", data=forged.encode()
                )
                unsigned = await raw(
                    http,
                    "POST",
                    f"{gw.url}/_gateway/callback/{gw.callback_token}",
                    data=forged.encode(),
                )
            assert wrong[0] == 401
            assert unsigned[0] == 401
            assert gw.store.in_flight("alice") == 1  # nothing was settled by the forgery


async def test_a_callback_host_resolving_to_a_private_address_is_refused_at_relay() -> None:
    """A name that passes the written-host check but resolves to loopback gets no delivery."""
    host = socket.gethostname()  # /etc/hosts maps it to 127.0.0.1 (or a private address)
    resolved = {info[4][0] for info in socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)}
    assert not any(ipaddress.ip_address(a).is_global for a in resolved), resolved
    async with FakeRuxa(SimConfig(seed=8)) as sim, inbox() as box:
        config = config_for(sim, callbacks=CallbackSettings(allow_private=False))
        async with running(config) as gw:
            port = box.url.rsplit(":", 1)[1]
            status, envelope = await create(
                gw.url or "", TOKENS["alice"], f"http://{host}:{port}/hook"
            )
            assert status == 200
            task_id = envelope["data"]["taskId"]  # type: ignore[index]
            async with user_client(gw, TOKENS["alice"]) as alice:
                assert (await alice.wait(task_id, timeout=20)).succeeded
            await gw.relay.drain()
            records = await gw.store.audit_records()
        refused = [r for r in records if r["event"] == "relay_refused"]
    assert box.attempts == 0
    assert gw.relay.refused == 1
    assert gw.relay.delivered == 0
    assert [(r["task_id"], r["reason"]) for r in refused] == [(task_id, "private_address")]
