"""A gateway in front of the simulator, over real loopback sockets, for the gateway tests."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import attrs

from ruxa_async import RetryPolicy, RuxaClient
from ruxa_async.gateway import (
    CallbackSettings,
    Gateway,
    GatewayConfig,
    Policy,
    UpstreamKey,
    UserEntry,
    hash_token,
)
from ruxa_async.testing import FakeRuxa
from tests.conftest import FAST_POLL

NB = "google/nano-banana"
SORA = "sora-2"
SECRET = "gateway-signing-secret-for-tests-0123456789"
WEBHOOK_SECRET = "whsec_" + "dGVzdC13ZWJob29rLXNlY3JldC0wMTIzNDU2Nzg5"
TOKENS = {
    "alice": "rxu_alice-token-aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "bob": "rxu_bob-token-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    "carol": "rxu_carol-token-cccccccccccccccccccccccccccc",
}
PROMPT = {"prompt": "a red fox"}


def users(policy: Policy, **per_user: Policy) -> dict[str, UserEntry]:
    """Entries for alice, bob and carol (digests only), with optional per-user policies."""
    return {
        name: UserEntry(
            name=name, token_sha256=hash_token(token), policy=per_user.get(name, policy)
        )
        for name, token in TOKENS.items()
    }


def config_for(fakes: list[FakeRuxa] | FakeRuxa, **overrides: Any) -> GatewayConfig:
    """A config with one key per simulator, the three users and an open default policy."""
    sims = fakes if isinstance(fakes, list) else [fakes]
    keys = tuple(
        UpstreamKey(name=f"key{i + 1}", key=f.api_key, base_url=f.url) for i, f in enumerate(sims)
    )
    policy = overrides.pop("policy", Policy())
    per_user = overrides.pop("per_user", {})
    base = GatewayConfig(
        keys=keys,
        users=users(policy, **per_user),
        defaults=policy,
        signing_secret=SECRET,
        webhook_secret=WEBHOOK_SECRET,
        callbacks=CallbackSettings(allow_private=True, first_retry=0.05, attempts=4),
        sweep_interval=3600.0,
    )
    return attrs.evolve(base, **overrides)


@asynccontextmanager
async def running(config: GatewayConfig, **options: Any) -> AsyncIterator[Gateway]:
    """A started gateway listening on a free loopback port."""
    async with Gateway(config, **options) as gw:
        await gw.listen("127.0.0.1", 0)
        yield gw


def user_client(gw: Gateway, token: str, **options: Any) -> RuxaClient:
    """A plain RuxaClient that uses a gateway token as its key."""
    assert gw.url is not None
    options.setdefault("poll", FAST_POLL)
    options.setdefault("retry", RetryPolicy(max_attempts=1))
    return RuxaClient(api_key=token, base_url=gw.url, **options)


async def raw(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: Any = None,
    data: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    """One HTTP request: status, decoded JSON envelope, headers."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    async with session.request(method, url, data=data, headers=sent) as resp:
        text = await resp.read()
        try:
            envelope = json.loads(text)
        except ValueError:
            envelope = {"raw": text.decode("utf-8", "replace")}
        return resp.status, envelope, resp.headers


async def eventually(check: Callable[[], Awaitable[bool] | bool], pause: float = 0.02) -> None:
    """Wait until ``check()`` holds, for conditions that offer no event (file watching,
    another server's counters). The per-test timeout bounds the wait."""
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        await asyncio.sleep(pause)


class LogCapture(logging.Handler):
    """Every record of the ``ruxa_async`` loggers, formatted, at DEBUG."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@asynccontextmanager
async def captured_logs() -> AsyncIterator[LogCapture]:
    """Capture ``ruxa_async`` logs at DEBUG for the block."""
    logger = logging.getLogger("ruxa_async")
    handler = LogCapture()
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
