"""The admission's remembered pieces agree with what they stand in for."""

from __future__ import annotations

import math
from typing import Any, cast

import attrs
import pytest

from ruxa_async.catalog import DEFAULT_PRICES, estimate_cost
from ruxa_async.gateway import Gateway
from ruxa_async.gateway._admission import Admission
from ruxa_async.gateway._alerts import Alerter
from ruxa_async.gateway._config import AlertSettings, Policy
from ruxa_async.gateway._policy import Reply, envelope_bytes
from ruxa_async.gateway._tokens import Identity
from ruxa_async.testing import FakeRuxa, ModelBehavior, SimConfig
from tests.helpers_gateway import NB, PROMPT, TOKENS, config_for

MIDNIGHT = 1_798_761_600.0  # 2027-01-01 00:00 UTC, a Friday


@pytest.mark.parametrize("window", ["day", "week", "month"])
def test_a_callers_ledgers_are_those_made_afresh(window: Any) -> None:
    """Remembered per caller and UTC day, the ledgers equal fresh ones at every instant,
    across midnights, a new week and a new month, and for a new identity of the same user."""
    admission = Admission(cast(Any, None))
    fresh = Admission(cast(Any, None))
    who = Identity(user="u", policy=Policy(budget=10.0, window=window))
    scoped = Identity(user="u", policy=Policy(window=window), scope="token:1", token_budget=3.0)
    for hour in range(0, 24 * 40, 5):
        now = MIDNIGHT - 3 * 86_400 + hour * 3600 + 0.5
        for caller in (who, who, scoped, who):
            assert admission._scopes(caller, now) == fresh._made_scopes(caller, now)


@pytest.mark.parametrize(
    "prices", [None, {}, {"google/nano-banana": 1.5}, {"custom/model": 2.0}, {"sora-2": 0.0}]
)
@pytest.mark.parametrize("model", ["google/nano-banana", "sora-2", "custom/model", "unknown"])
def test_an_estimate_is_the_merged_price_tables(model: str, prices: Any) -> None:
    """The config's prices override the defaults model by model, as one merged table would."""
    merged = DEFAULT_PRICES if prices is None else {**DEFAULT_PRICES, **prices}
    assert estimate_cost(model, None, prices) == merged.get(model)


async def test_a_task_shown_before_is_still_its_owners_alone() -> None:
    """Ids already shown skip the id check, never the ownership check: the owner reads the
    same reply again, anybody else and any odd id get the same 404."""
    slow = SimConfig(seed=4, default_behavior=ModelBehavior(median_seconds=3600, sigma=0))
    async with FakeRuxa(slow) as sim, Gateway(config_for(sim)) as gw:
        alice, bob = (f"Bearer {TOKENS[name]}" for name in ("alice", "bob"))
        created = await gw.create(alice, {"model": NB, "input": PROMPT})
        assert created.code == 200
        task_id = created.data["taskId"]
        first = await gw.query(alice, task_id)
        assert first.code == 200
        assert (await gw.query(alice, task_id)).body() == first.body()
        assert (await gw.query(bob, task_id)).code == 404
        for odd in (task_id + "/x", task_id + " ", "", "a" * 201, "../" + task_id):
            assert (await gw.query(alice, odd)).code == 404


def test_a_budget_far_from_its_thresholds_is_passed_over_exactly() -> None:
    """Below every threshold with none alerted, the alerter returns at once; checks of the
    same usages (rising, falling, over days) alert and mark exactly what the full check does."""
    day = [MIDNIGHT]
    quick = Alerter(AlertSettings(), clock=lambda: day[0])
    full = Alerter(AlertSettings(), clock=lambda: day[0])
    full._lowest = -math.inf  # never returns early
    usages = [0.0, 10.0, 79.0, 79.99999999999, 80.0, 20.0, 96.0, 50.0, 100.0, 0.0, 85.0]
    for step, used in enumerate(usages * 3):
        day[0] = MIDNIGHT + step * 9_000.0
        for alerter in (quick, full):
            alerter.budget("user:u", "life" if step % 2 else "2027-01-01", used, 100.0)
        assert quick._fired == full._fired
        assert [(a["event"], a.get("threshold")) for a in quick.sent] == [
            (a["event"], a.get("threshold")) for a in full.sent
        ]
    assert quick.marked_budgets > 0


@pytest.mark.parametrize("task_id", ["task_1", 't\u00e9"\\\n', "\u2028x", "a" * 300])
def test_a_created_reply_is_the_reply_made_the_long_way(task_id: str) -> None:
    """Reply.created sets every field attrs would, once each, and its bytes are the envelope's."""
    made = Reply.created(task_id)
    plain = Reply(200, "success", {"taskId": task_id})
    for field in attrs.fields(Reply):
        assert hasattr(made, field.name)
    assert made == plain
    assert repr(made) == repr(plain)
    assert made.body() == plain.body() == envelope_bytes(200, "success", {"taskId": task_id})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        made.code = 500  # type: ignore[misc]
