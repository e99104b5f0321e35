"""The benchmark harness runs end to end in its smallest mode (timings are never asserted).

One smoke run (``python -m benchmarks --smoke --out DIR``) is shared by every test here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import _plan

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

pytest.importorskip("aiometer")
pytest.importorskip("aiolimiter")
pytest.importorskip("stamina")

pytestmark = pytest.mark.timeout(240)


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folder`` (bytecode caches aside): its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


class Smoke:
    """What one smoke run left: its exit, its reports, and the source tree before and after."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.before = _listing(BENCHMARKS)
        self.done = subprocess.run(
            [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=230,
            check=False,
        )
        self.after = _listing(BENCHMARKS)

    def results(self) -> dict[str, Any]:
        assert self.done.returncode == 0, self.done.stderr[-3000:]
        data: dict[str, Any] = json.loads((self.out / "results.json").read_text("utf-8"))
        return data

    def markdown(self, name: str = "RESULTS.md") -> str:
        assert self.done.returncode == 0, self.done.stderr[-3000:]
        return (self.out / name).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    return Smoke(tmp_path_factory.mktemp("smoke-out"))


def test_the_smoke_plan_runs_every_contender_somewhere() -> None:
    """Each contender runs on some smoke workload, and ruxa_async wherever a goal reads it."""
    plan = _plan.build("smoke")
    ran = {c for w in plan.workloads for c in w.contenders}
    assert ran == set(_plan.CONTENDERS)
    by_key = {w.key: w for w in plan.workloads}
    assert {"W1", "W2", "W4", "W5", "W6", "W7", "W9"} <= set(by_key)
    for key in ("W1", "W4", "W5", "W7"):
        assert _plan.REFERENCE in by_key[key].contenders, key


def test_smoke_run_writes_every_workload_and_contender(smoke: Smoke) -> None:
    """The run exits 0 and both reports hold every planned workload and contender, complete."""
    results = smoke.results()
    markdown = smoke.markdown()
    plan = _plan.build("smoke")
    assert results["mode"] == "smoke"
    assert results["calibration"]["c_req_us"] > 0
    assert results["calibration"]["before_w7"]["c_req_us"] > 0
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
    assert results["workloads"]["W2"]["runs"]["ruxa_async_unknown"]["adaptation"]
    assert results["workloads"]["W4"]["runs"]["ruxa_async"]["hold"]
    assert results["goals"]
    assert "## Goals" in markdown


def test_rate_figures_go_beside_the_results(smoke: Smoke) -> None:
    """Each sampled run's picture is written under ``--out``/figures and linked from there."""
    rate = smoke.markdown("results-rate.md")
    sampled = [w for w in _plan.build("smoke").workloads if w.sample or w.drop]
    assert sampled
    for workload in sampled:
        for contender in workload.contenders:
            name = f"figures/{workload.key}-{contender}.png"
            assert (smoke.out / name).stat().st_size > 0, name
            assert f"]({name})" in rate


def test_the_smoke_run_leaves_the_source_tree_untouched(smoke: Smoke) -> None:
    """Nothing under benchmarks/ is added, removed or rewritten by a run with --out elsewhere."""
    assert smoke.done.returncode == 0, smoke.done.stderr[-3000:]
    assert smoke.before, "the listing of benchmarks/ is empty: the check would prove nothing"
    assert smoke.after == smoke.before
