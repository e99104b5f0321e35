"""The benchmark's scale scenario, scaled down: many users, budgets, cross-user reads."""

from __future__ import annotations

import pytest

from benchmarks.gateway import scale_run


async def test_many_users_never_overrun_never_cross_and_every_count_agrees() -> None:
    """100 users try 5 tasks on a budget of 4: 0 overruns, 0 cross reads, counters agree."""
    result = await scale_run(100, 4, concurrency=50)
    assert result["overruns"] == 0
    assert result["cross_user_reads"] == 0
    assert result["codes"] == {200: 400, 402: 100}
    assert (
        result["sim_tasks_created"]
        == result["gateway_created"]
        == result["audit_created"]
        == result["metric_created"]
        == result["gateway_settled"]
        == result["audit_settled"]
        == 400
    )
    assert result["audit_denied_budget"] == 100
    assert result["sim_credits_spent"] == pytest.approx(result["gateway_spend"])
    assert result["metric_spend"] == pytest.approx(result["gateway_spend"])
