"""The benchmark harness runs end to end in its smallest mode (timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("aiometer")
pytest.importorskip("aiolimiter")
pytest.importorskip("stamina")


@pytest.mark.timeout(240)
def test_smoke_run_writes_every_workload_and_contender(tmp_path: Path) -> None:
    """`python -m benchmarks --smoke --out DIR` exits 0 and writes both reports, complete."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    markdown = (tmp_path / "RESULTS.md").read_text(encoding="utf-8")
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))

    from benchmarks import _plan

    plan = _plan.build("smoke")
    assert results["mode"] == "smoke"
    assert results["calibration"]["c_req_us"] > 0
    assert set(results["machine"]) >= {"cpu_model", "cpus", "python", "os", "versions"}
    assert "aiohttp" in results["machine"]["versions"]
    assert set(results["workloads"]) == {w.key for w in plan.workloads}
    for workload in plan.workloads:
        runs = results["workloads"][workload.key]["runs"]
        assert set(runs) == set(workload.contenders), workload.key
        assert f"## {workload.key}:" in markdown
        for figures in runs.values():
            assert figures["jobs"] == workload.n
            assert figures["crashed"] is None
    for key in ("W1", "W5", "W7"):
        assert results["workloads"][key]["runs"]["ruxa_async"]["lost"] == 0
    assert results["goals"]
    assert "## Goals" in markdown
