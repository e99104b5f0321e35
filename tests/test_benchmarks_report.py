"""RESULTS.md assembly on a small synthetic results dict (no benchmark is run)."""

from __future__ import annotations

import copy
from typing import Any

from benchmarks import _plan, _report

CALIBRATION: dict[str, Any] = {
    "c_req_us": 100.0,
    "req_per_s": 9000.0,
    "gather_requests": 1000,
    "gather_c_req_us": 80.0,
    "gather_req_per_s": 12000.0,
    "server_cpu_share": 0.5,
    "shape": "synthetic",
}
MACHINE: dict[str, Any] = {
    "cpu_model": "test CPU",
    "cpus": 2,
    "memory_gib": 4,
    "os": "Linux",
    "implementation": "CPython",
    "python": "3.11",
    "versions": {"aiohttp": "3.9"},
}


def figures(requests_per_task: float, cpu_us: float) -> dict[str, Any]:
    """One contender's figures for a finished 100-task run."""
    return {
        "jobs": 100,
        "finished": 100,
        "succeeded": 100,
        "did_not_finish": False,
        "wall_cap_s": 60.0,
        "makespan_s": 10.0,
        "makespan_real_s": 10.0,
        "ideal_makespan_s": 9.0,
        "tasks_per_s": 10.0,
        "requests_per_task": requests_per_task,
        "requests_per_completion": requests_per_task,
        "creates_per_task": 1.0,
        "queries_per_task": requests_per_task - 1.0,
        "rate_limited_per_1000": 0.0,
        "retries_per_task": 0.0,
        **{f"lag_{p}_s": 0.5 for p in ("p50", "p99", "max")},
        **{f"lag_{p}_real_s": 0.5 for p in ("p50", "p99", "max")},
        "cpu_per_task_us": cpu_us,
        "rss_peak_mb": 50.0,
        "loop_lag_p99_ms": 1.0,
        "loop_lag_max_ms": 2.0,
        "task_failed": 0,
        "client_errors": 0,
        "lost": 0,
        "double_resolved": 0,
        "duplicate_creates": 0,
        "orphaned_tasks": 0,
        "server_errors_5xx": 0,
        "dropped_connections": 0,
        "server_cpu_share": 0.3,
        "gc_longest_pause_ms": 1.0,
    }


def test_assemble_reports_cpu_ratios_and_goals_without_changing_its_input() -> None:
    """assemble() derives cpu_vs_calibration and the W7 goal, and leaves results as given."""
    plan = _plan.build("smoke")
    w7 = next(w for w in plan.workloads if w.key == "W7")
    results = {
        "W7": {
            "workload": w7,
            "parameters": w7.parameters(),
            "ideal_makespan_s": 9.0,
            "runs": {_plan.REFERENCE: figures(2.0, 260.0), "B0": figures(3.0, 600.0)},
        }
    }
    before = copy.deepcopy(results)
    document = _report.assemble(
        mode="smoke",
        plan=plan,
        machine=MACHINE,
        cpus={"client": 0, "server": 1},
        calibration=CALIBRATION,
        results=results,
        started=1_766_304_530.0,
        duration=60.0,
        command="python -m benchmarks --smoke",
    )
    assert results == before
    runs = document["json"]["workloads"]["W7"]["runs"]
    assert runs[_plan.REFERENCE]["cpu_vs_calibration"] == 1.3
    assert runs["B0"]["cpu_vs_calibration"] == 2.0
    (goal,) = [g for g in document["json"]["goals"] if g["goal"] == "W7 CPU per task"]
    assert goal["status"] == "met"
    markdown = document["markdown"]
    assert "## W7:" in markdown
    assert "### CPU against the calibration" in markdown
    assert "| W7 CPU per task |" in markdown
