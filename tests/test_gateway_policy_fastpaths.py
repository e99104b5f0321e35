"""The admission's remembered pieces agree with what they stand in for."""

from __future__ import annotations

from typing import Any, cast

import pytest

from ruxa_async.catalog import DEFAULT_PRICES, estimate_cost
from ruxa_async.gateway._admission import Admission
from ruxa_async.gateway._config import Policy
from ruxa_async.gateway._tokens import Identity

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
