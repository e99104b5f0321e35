"""Config hot-reload of the settings each upstream key's client is built from."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ruxa_async.gateway import Gateway, hash_token, load_config
from ruxa_async.testing import FakeRuxa, ModelBehavior, SimConfig
from tests.helpers_gateway import NB, PROMPT, TOKENS, eventually, user_client


@pytest.fixture
async def sim() -> AsyncIterator[FakeRuxa]:
    slow = ModelBehavior(median_seconds=30, sigma=0)
    async with FakeRuxa(SimConfig(seed=3, default_behavior=slow)) as fake:
        yield fake


def write(path: Path, sim: FakeRuxa, *settings: str) -> None:
    """A gateway TOML with alice, one key named k, and ``settings`` at the top."""
    lines = ['signing_secret = "s3cret-for-reload"', "reload_interval = 0.05", *settings]
    lines += ["[upstream]", "[[upstream.keys]]", 'name = "k"']
    lines += [f'key = "{sim.api_key}"', f'base_url = "{sim.url}"']
    lines += ["[users.alice]", f'token_sha256 = "{hash_token(TOKENS["alice"])}"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


async def test_upstream_pacing_keys_apply_when_the_file_changes(
    sim: FakeRuxa, tmp_path: Path
) -> None:
    """upstream_*_per_second, upstream_discover_rate and [alerts] change without a restart;
    a task made before is still answered, and the old client closes after its grace."""
    path = tmp_path / "gateway.toml"
    write(path, sim, "upstream_timeout = 0.5")
    async with Gateway(load_config(path)) as gw:
        await gw.listen("127.0.0.1", 0)
        slot = gw.pool.get("k")
        assert slot is not None
        before = slot.client
        assert (await slot.ready()).statistics().rate.create_rate is None
        async with user_client(gw, TOKENS["alice"]) as alice:
            task_id = await alice.create_task(NB, PROMPT)
            write(
                path,
                sim,
                "upstream_create_per_second = 5",
                "upstream_query_per_second = 7",
                "[alerts]",
                "thresholds = [0.5]",
            )
            await eventually(lambda: slot.client is not before)
            rate = (await slot.ready()).statistics().rate
            assert (rate.create_rate, rate.query_rate) == (5.0, 7.0)
            assert gw.alerter.settings.thresholds == (0.5,)
            assert (await alice.get_task(task_id)).task_id == task_id  # through the new client
            await eventually(lambda: before.state == "closed")  # 0.5 s + 1 s of grace
            paced = slot.client
            write(path, sim, "upstream_discover_rate = true")
            await eventually(lambda: slot.client is not paced)
            discovering = (await slot.ready()).statistics().rate
            assert discovering.classes["create"].phase == "ramp"
            assert await alice.create_task(NB, PROMPT)
        events = [r["event"] for r in await gw.store.audit_records()]
    assert events.count("keys_rebuilt") == 2
    assert sim.stats().tasks_created == 2


async def test_a_reload_that_keeps_the_upstream_settings_keeps_the_clients(
    sim: FakeRuxa, tmp_path: Path
) -> None:
    """Reloading users or prices alone leaves each key's client (and its learned pace) alone."""
    path = tmp_path / "gateway.toml"
    write(path, sim, "upstream_create_per_second = 5")
    async with Gateway(load_config(path)) as gw:
        slot = gw.pool.get("k")
        assert slot is not None
        before = slot.client
        write(path, sim, "upstream_create_per_second = 5", "[prices]", f'"{NB}" = 3.0')
        await eventually(lambda: gw.config.prices.get(NB) == 3.0)
        assert slot.client is before
