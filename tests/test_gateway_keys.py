"""The upstream key pool: binding, rotation with drain, 401/402 out of rotation, 429 cool-down."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import attrs
import pytest
from aiohttp import web

from ruxa_async import NotFoundError, RateLimitError, _wire
from ruxa_async._client import send_once
from ruxa_async.gateway import AlertSettings, Gateway, UpstreamKey, load_config
from ruxa_async.gateway._keys import default_client
from ruxa_async.testing import FakeRuxa, ModelBehavior, RateLimit, SimConfig
from tests.helpers_gateway import (
    NB,
    PROMPT,
    TOKENS,
    config_for,
    eventually,
    raw,
    running,
    user_client,
)

QUICK = ModelBehavior(median_seconds=0.2, sigma=0)


@pytest.fixture
async def sims() -> list[FakeRuxa]:
    one = SimConfig(seed=1, api_key="sk-upstream-one", default_behavior=QUICK)
    two = SimConfig(seed=2, api_key="sk-upstream-two", default_behavior=QUICK)
    async with FakeRuxa(one) as a, FakeRuxa(two) as b:
        yield [a, b]


async def test_tasks_are_bound_to_their_creating_key(sims: list[FakeRuxa]) -> None:
    """Creates alternate between keys; each task's queries go to the key that made it."""
    async with running(config_for(sims)) as gw, user_client(gw, TOKENS["alice"]) as alice:
        ids = [await alice.create_task(NB, PROMPT) for _ in range(4)]
        for task_id in ids:
            assert (await alice.get_task(task_id)).task_id == task_id
    assert [s.stats().tasks_created for s in sims] == [2, 2]
    for sim in sims:
        assert all(r.query_count >= 1 for r in sim.tasks())


async def test_a_removed_key_drains_before_it_is_closed(sims: list[FakeRuxa]) -> None:
    """After rotation the old key creates nothing but serves its tasks until they end."""
    config = config_for(sims)
    async with running(config) as gw, user_client(gw, TOKENS["alice"]) as alice:
        old_tasks = [await alice.create_task(NB, PROMPT) for _ in range(4)]
        assert gw.reload(attrs.evolve(config, keys=config.keys[1:]))
        assert {k.name: k.state for k in gw.pool.health()}["key1"] == "draining"
        for _ in range(4):
            await alice.create_task(NB, PROMPT)
        assert [s.stats().tasks_created for s in sims] == [2, 6]
        for task_id in old_tasks:
            assert (await alice.wait(task_id, timeout=20)).succeeded
        assert [k.name for k in gw.pool.health()] == ["key2"]
        events = [r["event"] for r in await gw.store.audit_records() if r.get("key") == "key1"]
    assert events[-2:] == ["key_draining", "key_drained"]


async def alert_inbox() -> tuple[web.AppRunner, str, list[dict[str, object]]]:
    received: list[dict[str, object]] = []

    async def take(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/alerts", take)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/alerts", received


@pytest.mark.parametrize("failure", ["revoked", "no_credits"])
async def test_a_refused_key_leaves_rotation_and_alerts(sims: list[FakeRuxa], failure: str) -> None:
    """401 or 402 on a key disables it, alerts the webhook, and the create succeeds on the next."""
    runner, url, received = await alert_inbox()
    try:
        config = config_for(sims, alerts=AlertSettings(webhook_url=url))
        if failure == "revoked":
            sims[0].reconfigure(api_key="sk-rotated-elsewhere")
        else:
            sims[0].set_credits(0)
        async with running(config) as gw, user_client(gw, TOKENS["alice"]) as alice:
            for _ in range(3):
                await alice.create_task(NB, PROMPT)
            assert {k.name: k.state for k in gw.pool.health()} == {
                "key1": "disabled",
                "key2": "active",
            }
            await eventually(lambda: bool(received))
    finally:
        await runner.cleanup()
    assert [s.stats().tasks_created for s in sims] == [0, 3]
    assert received[0]["event"] == "key_disabled"
    assert received[0]["key"] == "key1"
    assert received[0]["code"] == (401 if failure == "revoked" else 402)


async def test_a_rate_limited_key_cools_down_for_retry_after(sims: list[FakeRuxa]) -> None:
    """A 429 cools the key for its Retry-After; creates go to the other key meanwhile."""
    sims[0].reconfigure(create_limit=RateLimit(per_second=0.01, burst=1))
    async with running(config_for(sims)) as gw, user_client(gw, TOKENS["alice"]) as alice:
        for _ in range(5):
            await alice.create_task(NB, PROMPT)
        assert {k.name: k.state for k in gw.pool.health()}["key1"] == "cooling"
    assert sims[0].stats().tasks_created == 1
    assert sims[1].stats().tasks_created == 4
    assert sims[0].stats().rate_limited_create == 1


async def test_with_every_key_cooling_users_get_429_with_retry_after(
    sims: list[FakeRuxa],
) -> None:
    """One key, rate limited upstream: the user sees 429 and the key's Retry-After."""
    sims[0].reconfigure(create_limit=RateLimit(per_second=0.2, burst=1))
    async with running(config_for(sims[:1])) as gw, user_client(gw, TOKENS["alice"]) as alice:
        await alice.create_task(NB, PROMPT)
        with pytest.raises(RateLimitError) as first:
            await alice.create_task(NB, PROMPT)
        assert first.value.retry_after is not None
        assert first.value.retry_after >= 1
    assert gw.store.in_flight("alice") == 1  # the refused create's reservation was released


async def test_a_rate_limited_key_pauses_its_tasks_queries_without_asking_again(
    sims: list[FakeRuxa],
) -> None:
    """After a 429 on a query, that key's queries answer 429 + Retry-After at once, unsent."""
    sims[0].reconfigure(
        query_limit=RateLimit(per_second=0.01, burst=1),
        default_behavior=ModelBehavior(median_seconds=3600, sigma=0),
    )
    async with running(config_for(sims[:1])) as gw, aiohttp.ClientSession() as http:
        assert gw.url is not None
        body = {"model": NB, "input": PROMPT}
        create = gw.url + "/api/v1/tasks/create"
        _, made, _ = await raw(http, "POST", create, token=TOKENS["alice"], body=body)
        query = f"{gw.url}/api/v1/tasks/query/{made['data']['taskId']}"
        statuses = []
        for _ in range(4):  # the bucket's one query, the service's 429, then the pause's
            status, envelope, headers = await raw(http, "GET", query, token=TOKENS["alice"])
            statuses.append(status)
            if status == 429:
                assert envelope["code"] == 429
                assert float(headers["Retry-After"]) >= 1
    assert statuses == [200, 429, 429, 429]
    assert sims[0].stats().rate_limited_query == 1  # asked once; the pause answered the rest


async def test_a_keys_pause_after_a_429_ends_with_its_retry_after(sims: list[FakeRuxa]) -> None:
    """The short path's pause lasts Retry-After (capped at the timeout), then it asks again."""
    sim = sims[0]
    sim.reconfigure(query_limit=RateLimit(per_second=0.01, burst=1))
    key = UpstreamKey(name="k", key=sim.api_key, base_url=sim.url)
    now = [0.0]
    path = _wire.query_path("task-nobody-made")
    async with default_client(key, timeout=5.0, max_in_flight=4) as client:
        assert client._core.direct is not None
        client._core.direct._clock = lambda: now[0]
        with pytest.raises(NotFoundError):
            await send_once(client, "query", path)
        for _ in range(2):  # the service's 429, then the pause's own
            with pytest.raises(RateLimitError):
                await send_once(client, "query", path)
        assert sim.stats().rate_limited_query == 1
        now[0] += 4.9
        with pytest.raises(RateLimitError) as paused:
            await send_once(client, "query", path)
        assert paused.value.retry_after == pytest.approx(0.1)
        now[0] += 0.2  # past the pause (the sim's Retry-After of ~100 s, capped at 5)
        with pytest.raises(RateLimitError):
            await send_once(client, "query", path)
        assert sim.stats().rate_limited_query == 2
        await send_once(client, "create", _wire.CREATE_PATH, _wire.build_create_body(NB, PROMPT))


async def test_the_config_file_is_reloaded_when_it_changes(
    sims: list[FakeRuxa], tmp_path: Path
) -> None:
    """Editing the TOML file adds a user and rotates keys without a restart."""
    path = tmp_path / "gateway.toml"

    def write(users: list[str], key: FakeRuxa) -> None:
        lines = [
            'signing_secret = "s3cret-for-reload-test"',
            "reload_interval = 0.05",
            f'[upstream]\nbase_url = "{key.url}"',
            f'[[upstream.keys]]\nname = "k-{key.api_key}"\nkey = "{key.api_key}"',
        ]
        from ruxa_async.gateway import hash_token

        for name in users:
            lines.append(f'[users.{name}]\ntoken_sha256 = "{hash_token(TOKENS[name])}"')
        path.write_text("\n".join(lines) + "\n")

    write(["alice"], sims[0])
    async with Gateway(load_config(path)) as gw:
        await gw.listen("127.0.0.1", 0)
        async with user_client(gw, TOKENS["alice"]) as alice:
            await alice.create_task(NB, PROMPT)
        write(["alice", "bob"], sims[1])
        await eventually(lambda: "bob" in gw.config.users)
        async with user_client(gw, TOKENS["bob"]) as bob:
            await bob.create_task(NB, PROMPT)
        path.write_text("this is = = not toml")

        async def rejected() -> bool:
            return any(r["event"] == "config_rejected" for r in await gw.store.audit_records())

        await eventually(rejected)
        assert "bob" in gw.config.users  # a broken file keeps the old config
    assert [s.stats().tasks_created for s in sims] == [1, 1]


@pytest.mark.parametrize(
    ("keys", "phase", "rate"),
    [
        ({}, "fixed", None),  # relay: no pacing of its own, a 429 cools the key
        ({"upstream_create_per_second": 5}, "fixed", 5.0),
        ({"upstream_discover_rate": True}, "ramp", None),
    ],
)
async def test_upstream_pacing_follows_the_config(
    sims: list[FakeRuxa], tmp_path: Path, keys: dict[str, object], phase: str, rate: float | None
) -> None:
    """The TOML's upstream pacing keys reach each key's client: none, fixed, or discovered."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    lines += ["[upstream]", "[[upstream.keys]]", 'name = "k"']
    lines += [f'key = "{sims[0].api_key}"', f'base_url = "{sims[0].url}"']
    text = "\n".join(lines)
    path = tmp_path / "gateway.toml"
    path.write_text(text + "\n", encoding="utf-8")
    config = load_config(path)
    async with running(config) as gw:
        slot = gw.pool.get("k")
        assert slot is not None
        stats = (await slot.ready()).statistics().rate
    assert stats.classes["create"].phase == phase
    assert stats.create_rate == rate
