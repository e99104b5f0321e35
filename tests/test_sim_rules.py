"""The simulator's own acceptance rules, its readings of the reference, and its admin extras."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from ruxa_async.testing import (
    FakeRuxa,
    InputRules,
    ModelBehavior,
    RateLimit,
    RateSeries,
    SimConfig,
    SimStats,
)

NANO, EDIT, PRO = "google/nano-banana", "google/nano-banana-edit", "google/nano-banana-pro"
FAST = ModelBehavior(median_seconds=0.0, sigma=0.0)
URL = "https://e.com/a.png"
Cases = list[tuple[str, dict[str, Any]]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session."""
    async with aiohttp.ClientSession() as session:
        yield session


async def create(
    http: aiohttp.ClientSession, fake: FakeRuxa, model: str, input: dict[str, Any], **extra: Any
) -> tuple[int, str]:
    """POST a create; the envelope code and message."""
    async with http.post(
        fake.url + "/api/v1/tasks/create",
        json={"model": model, "input": input, **extra},
        headers={"Authorization": f"Bearer {fake.api_key}"},
    ) as reply:
        body = await reply.json()
    return body["code"], body["message"]


async def codes(rules: InputRules, cases: Cases, **cfg: Any) -> list[int]:
    """The create code of each (model, input) under ``rules``."""
    config = SimConfig(default_behavior=FAST, input_rules=rules, **cfg)
    async with FakeRuxa(config) as fake, aiohttp.ClientSession() as http:
        return [(await create(http, fake, model, data))[0] for model, data in cases]


async def test_resolution_spelling_and_case_readings() -> None:
    """1k is Ruxa's spelling, 1K kie's; case-insensitive matching accepts both."""
    cases: Cases = [(PRO, {"prompt": "x", "resolution": r}) for r in ("1k", "1K")]
    assert await codes(InputRules(), cases) == [200, 422]
    assert await codes(InputRules(spellings="kie"), cases) == [422, 200]
    assert await codes(InputRules(enum_case="insensitive"), cases) == [200, 200]


async def test_marked_required_fields_reading() -> None:
    """Edit's output_format/image_size and pro's callBackUrl are required only when marked."""
    cases: Cases = [(EDIT, {"prompt": "x", "image_urls": [URL]}), (PRO, {"prompt": "x"})]
    assert await codes(InputRules(), cases) == [200, 200]
    assert await codes(InputRules(marked_required=True), cases) == [422, 422]


async def test_kie_limits_and_presumed_lists_readings() -> None:
    """kie's prompt and image limits and edit's presumed size list can each be switched off."""
    cases: Cases = [
        (NANO, {"prompt": "x" * 5001}),
        (EDIT, {"prompt": "x", "image_urls": [URL] * 11}),
        (PRO, {"prompt": "x", "image_input": [URL] * 9}),
        (EDIT, {"prompt": "x", "image_urls": [URL], "image_size": "7:7"}),
    ]
    assert await codes(InputRules(), cases) == [422, 422, 422, 422]
    assert await codes(InputRules(kie_limits=False), cases) == [200, 200, 200, 422]
    assert await codes(InputRules(presumed_lists=False), cases) == [422, 422, 422, 200]


async def test_undocumented_input_fields_reading() -> None:
    """An undocumented input field is accepted by default and refused when configured."""
    cases: Cases = [(NANO, {"prompt": "x", "negative_prompt": "y"})]
    assert await codes(InputRules(), cases) == [200]
    assert await codes(InputRules(extra_fields="reject"), cases) == [422]


async def test_unknown_models_refused_by_default_and_accepted_when_configured() -> None:
    """Only the documented models by default; accept_models="any" takes others unchecked."""
    cases: Cases = [("gpt-image-1", {"anything": 1}), ("sora-2", {"prompt": "x", "seconds": "25"})]
    assert await codes(InputRules(), cases) == [422, 422]
    assert await codes(InputRules(), cases, accept_models="any") == [200, 422]
    assert SimConfig(accept_models="catalog").accept_models == "documented"


async def test_input_rules_are_patched_over_http(http: aiohttp.ClientSession) -> None:
    """POST /_sim/config patches input_rules field by field."""
    async with FakeRuxa(SimConfig(default_behavior=FAST)) as fake:
        async with http.post(
            fake.url + "/_sim/config", json={"input_rules": {"enum_case": "insensitive"}}
        ) as reply:
            assert reply.status == 200
            assert (await reply.json())["input_rules"]["enum_case"] == "insensitive"
        assert fake.config.input_rules == InputRules(enum_case="insensitive")
        assert (await create(http, fake, NANO, {"prompt": "x", "output_format": "PNG"}))[0] == 200


async def test_reset_forgets_tasks_and_counters(http: aiohttp.ClientSession) -> None:
    """POST /_sim/reset empties tasks and counters, restores balance and buckets; config stays."""
    limit = RateLimit(per_second=0.001, burst=1)
    config = SimConfig(default_behavior=FAST, credits=10.0, seed=3, create_limit=limit)
    async with FakeRuxa(config) as fake:
        assert (await create(http, fake, NANO, {"prompt": "x"}))[0] == 200
        assert (await create(http, fake, NANO, {"prompt": "y"}))[0] == 429
        first = fake.tasks()[0].task_id
        async with http.post(fake.url + "/_sim/reset") as reply:
            assert (await reply.json())["tasks_created"] == 0
        stats = fake.stats()
        assert (stats.requests, stats.credits_balance, fake.tasks()) == (0, 10.0, [])
        assert fake.config == config
        assert (await create(http, fake, NANO, {"prompt": "x"}))[0] == 200
        assert fake.stats().duplicate_creates == 0
        assert fake.tasks()[0].task_id.rsplit("_", 1)[1] == first.rsplit("_", 1)[1]


async def test_tasks_paging_and_summary(http: aiohttp.ClientSession) -> None:
    """/_sim/tasks pages with offset/limit (total in a header) and summarises with summary=1."""
    async with FakeRuxa(SimConfig(default_behavior=FAST)) as fake:
        for i in range(5):
            await create(http, fake, NANO, {"prompt": f"p{i}"})
        ids = [record.task_id for record in fake.tasks()]
        async with http.get(fake.url + "/_sim/tasks?offset=1&limit=2") as reply:
            page = await reply.json()
            assert reply.headers["X-Total-Count"] == "5"
        assert [row["task_id"] for row in page] == ids[1:3]
        async with http.get(fake.url + "/_sim/tasks?summary=1") as reply:
            summary = await reply.json()
        assert summary["count"] == 5
        assert summary["by_model"] == {NANO: 5}
        assert summary["by_state"] == {"success": 5}
        async with http.get(fake.url + "/_sim/tasks?limit=x") as reply:
            assert reply.status == 400


async def test_rate_series_counts_accepted_and_429_per_class(
    http: aiohttp.ClientSession,
) -> None:
    """stats().series counts creates let through and refused with 429, per 100 ms bucket."""
    config = SimConfig(default_behavior=FAST, create_limit=RateLimit(per_second=0.001, burst=2))
    async with FakeRuxa(config) as fake:
        results = [(await create(http, fake, NANO, {"prompt": f"p{i}"}))[0] for i in range(5)]
        async with http.get(
            fake.url + "/api/v1/tasks/query/task_x",
            headers={"Authorization": f"Bearer {fake.api_key}"},
        ):
            pass
        stats = fake.stats()
        async with http.get(fake.url + "/_sim/stats?series=1") as reply:
            remote = SimStats.from_dict(await reply.json())
        async with http.get(fake.url + "/_sim/stats") as reply:
            assert "series" not in await reply.json()
    assert results == [200, 200, 429, 429, 429]
    series = stats.series
    assert (sum(series.create_ok), sum(series.create_429)) == (2, 3)
    assert (sum(series.query_ok), sum(series.query_429)) == (1, 0)
    assert series.start is not None
    assert series.bucket_seconds == 0.1
    assert remote.series == series
    rows = series.resample(3600.0)
    assert [row[1:] for row in rows] == [(2, 3, 1, 0)]
    assert RateSeries().resample() == []
