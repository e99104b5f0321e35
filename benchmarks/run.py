"""``python -m benchmarks``: every workload on the simulator; RESULTS.md and results.json.

Each contender runs alone, in a fresh client process pinned to one CPU,
against a fresh simulator process pinned to the other (a restart is the
reset). Modes: ``--smoke`` (seconds, for CI), ``--quick`` (about a minute)
and the default full mode (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # ``python benchmarks/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks import _metrics, _plan, _plots, _report
from benchmarks._procs import ClientProcess, Simulator, cpu_seconds, pin

DEFAULT_OUT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Cpus:
    """Which CPU runs the client under test and which the simulator (None: no pinning)."""

    client: int | None
    server: int | None

    @classmethod
    def pick(cls) -> Cpus:
        if not hasattr(os, "sched_getaffinity"):
            return cls(None, None)
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None)
        return cls(cpus[0], cpus[1])


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def source_state() -> dict[str, Any]:
    """The git commit of the code measured, and whether ruxa_async/ or benchmarks/ differ from it.

    Read-only git commands; ``None`` values when git or the repository is unavailable.
    """
    import subprocess

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args],
                cwd=DEFAULT_OUT.parent,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "ruxa_async", "benchmarks")
    sdk = git("status", "--porcelain", "--", "ruxa_async")
    digest = None
    with contextlib.suppress(OSError):
        import hashlib

        h = hashlib.sha256()
        for path in sorted((DEFAULT_OUT.parent / "ruxa_async").rglob("*.py")):
            h.update(path.read_bytes())
        digest = h.hexdigest()[:16]
    return {
        "commit": git("rev-parse", "HEAD"),
        "uncommitted_changes": None if changed is None else changed.splitlines(),
        "sdk_uncommitted": None if sdk is None else bool(sdk),
        "sdk_source_sha256": digest,
    }


def machine() -> dict[str, Any]:
    """CPU model, cores, OS, Python and library versions."""
    import aiohttp

    model = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {"aiohttp": aiohttp.__version__}
    for name in ("aiometer", "aiolimiter", "stamina", "ruxa_async"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[name] = version(name if name != "ruxa_async" else "ruxa-async")
    memory = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo", encoding="ascii") as f:
        memory = round(int(f.readline().split()[1]) / 2**20, 1)
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_gib": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "versions": versions,
    }


class Harness:
    """Runs contenders one after another and keeps their raw figures."""

    def __init__(self, work: Path, cpus: Cpus) -> None:
        self.work = work
        self.cpus = cpus

    def client_spec(
        self, workload: _plan.Workload, contender: _plan.Contender, sim: Simulator, n: int
    ) -> dict[str, Any]:
        k = workload.k
        return {
            "contender": contender.key,
            "module": contender.module,
            "options": contender.options,
            "base_url": sim.url,
            "api_key": sim.api_key,
            "n": n,
            "models": [m.name for m in workload.models],
            "prompt_prefix": workload.key,
            "k": workload.client_scale,
            "create_rate": None if workload.create_rate is None else workload.create_rate * k,
            "create_burst": workload.create_burst,
            "query_rate": None if workload.query_rate is None else workload.query_rate * k,
            "query_burst": workload.query_burst,
            "max_pending": workload.pending_bound,
            "wall_cap": workload.cap_for(contender.key),
            "hold": workload.hold_s is not None,
            "cpu": self.cpus.client,
        }

    def run(self, workload: _plan.Workload, contender: _plan.Contender) -> dict[str, Any]:
        """One contender on one workload: raw client figures, simulator counters and records."""
        name = f"{workload.key}-{contender.key}"
        config = workload.sim_config()
        config.update(contender.options.get("sim", {}))
        sim = Simulator(config, self.work, self.cpus.server, name)
        spec = self.client_spec(workload, contender, sim, workload.n)
        with sim, ClientProcess(spec, self.work, name) as client:
            sim.wait_ready()
            t0 = client.wait_started()
            cpu0, wall0 = cpu_seconds(sim.pid), time.monotonic()
            samples: list[tuple[float, ...]] = []
            timeline = self._supervise(workload, sim, client, t0, samples)
            server_cpu = cpu_seconds(sim.pid) - cpu0
            wall = time.monotonic() - wall0
            code = client.proc.wait() if client.proc is not None else None
            if code not in (0, None):
                _log(f"  {name}: client exited with {code}\n{client.log_tail()}")
            raw = client.result()
            stats = sim.admin("/_sim/stats")
            tasks = sim.admin("/_sim/tasks")
            sim.kill()
        return {
            "raw": raw,
            "stats": stats,
            "tasks": tasks,
            "timeline": timeline,
            "samples": samples,
            "server": {"cpu_s": server_cpu, "cpu_share": server_cpu / max(wall, 1e-9)},
        }

    def _supervise(
        self,
        workload: _plan.Workload,
        sim: Simulator,
        client: ClientProcess,
        t0: float,
        samples: list[tuple[float, ...]],
    ) -> list[tuple[float, int]]:
        """Wait for the client; meanwhile apply W2's limit changes and W4's hold."""
        k = workload.k
        deadline = t0 + max(workload.wall_cap, *workload.caps.values(), 0.0) + 120.0
        actions: list[tuple[float, dict[str, Any]]] = []
        if workload.drop is not None:
            assert workload.create_rate is not None
            assert workload.query_rate is not None
            start, length = (x / k for x in workload.drop)
            full = (workload.create_rate * k, workload.query_rate * k)
            actions = [
                (t0 + start, _limits(full[0] / 2, full[1] / 2)),
                (t0 + start + length, _limits(*full)),
            ]
        timeline: list[tuple[float, int]] = []
        sampled = workload.drop is not None or workload.sample
        sample_every = 0.25 / k if sampled else None
        next_sample = t0
        hold_from: float | None = None
        last_created, last_progress = -1, time.monotonic()
        next_check = t0
        while client.poll() is None:
            now = time.monotonic()
            while actions and now >= actions[0][0]:
                sim.admin("/_sim/config", actions.pop(0)[1])
            if sample_every is not None and now >= next_sample:
                stats = sim.admin("/_sim/stats")
                timeline.append((now, stats["rate_limited_create"] + stats["rate_limited_query"]))
                samples.append(
                    (
                        now,
                        stats["creates"],
                        stats["queries"],
                        stats["rate_limited_create"],
                        stats["rate_limited_query"],
                    )
                )
                next_sample = now + sample_every
            if workload.hold_s is not None and now >= next_check:
                next_check = now + 0.5
                if hold_from is None:
                    created = sim.admin("/_sim/stats")["tasks_created"]
                    if created != last_created:
                        last_created, last_progress = created, now
                    if created >= workload.n or now - last_progress > 20.0:
                        hold_from = now
                        _log(f"    holding {created} pending tasks for {workload.hold_s} s")
                elif now >= hold_from + workload.hold_s:
                    client.send(f"stop {hold_from!r}")
                    hold_from = float("inf")
            if now > deadline:
                _log("    the client overran its deadline; stopping it")
                client.stop()
                break
            time.sleep(0.01 if sample_every is not None else 0.05)
        return timeline

    def calibrate(self, requests: int) -> dict[str, Any]:
        """The bare aiohttp loop: client CPU per keep-alive request."""
        workload = _plan.Workload(
            "calibration",
            "calibration",
            "c_req",
            n=requests,
            k=1.0,
            models=(_plan.Model(_plan.IMAGE, 0.0, 0.0),),
            contenders=(),
            wall_cap=300.0,
            create_rate=None,
            query_rate=None,
        )
        contender = _plan.Contender("calibration", "bare aiohttp", "benchmarks._calibrate", "")
        result = self.run(workload, contender)
        counters = result["raw"]["counters"]
        n, gathered = counters["requests"], counters["gathered"]
        return {
            "requests": n,
            "c_req_us": counters["workers_cpu_s"] / n * 1e6,
            "req_per_s": n / counters["workers_wall_s"],
            "gather_requests": gathered,
            "gather_c_req_us": counters["gather_cpu_s"] / gathered * 1e6,
            "gather_req_per_s": gathered / counters["gather_wall_s"],
            "server_cpu_share": result["server"]["cpu_share"],
            "shape": f"one ClientSession (default connector, keep-alive), {n:,} GETs of one "
            "task, 64 in flight at a time (ruxa_async's default max_in_flight), body read, "
            "no parsing",
        }


def _limits(create: float, query: float) -> dict[str, Any]:
    return {"create_limit": {"per_second": create}, "query_limit": {"per_second": query}}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small counts, about a minute")
    mode.add_argument("--smoke", action="store_true", help="tiny counts, for CI")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write results")
    parser.add_argument(
        "--real-scale-headline",
        action="store_true",
        help="also run W1 for ruxa_async without time compression (adds ~4 min in full mode)",
    )
    parser.add_argument(
        "--time-factor", type=float, help="override W1's and W2's time compression factor k"
    )
    parser.add_argument("--only", help="comma-separated workload keys to run (e.g. W1,W7)")
    parser.add_argument("--contenders", help="comma-separated contender keys to run")
    parser.add_argument("--keep-logs", type=Path, help="keep the child processes' logs here")
    return parser.parse_args(argv)


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the plan; return the exit status."""
    args = _parse(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    plan = _plan.build(mode, real_scale_headline=args.real_scale_headline, k=args.time_factor)
    only = {w.strip() for w in args.only.split(",")} if args.only else None
    workloads = [w for w in plan.workloads if only is None or w.key in only]
    chosen = {c.strip() for c in args.contenders.split(",")} if args.contenders else None
    signal.signal(signal.SIGTERM, _sigterm)
    cpus = Cpus.pick()
    pin(0, cpus.server)  # the harness mostly sleeps; keep it off the client's CPU
    started = time.time()
    t_begin = time.monotonic()
    source_before = source_state()
    results: dict[str, Any] = {}
    failures: list[str] = []
    with contextlib.ExitStack() as stack:
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            work = args.keep_logs
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ruxa-bench-")))
        harness = Harness(work, cpus)
        _log(f"benchmarks ({mode}): calibrating with {plan.calibration_requests:,} requests")
        calibration = harness.calibrate(plan.calibration_requests)
        _log(f"  c_req = {calibration['c_req_us']:.1f} us per request")
        for workload in workloads:
            if workload.key == "W7":
                _log("calibrating again right before W7 (its CPU ratios use this one)")
                calibration["before_w7"] = harness.calibrate(plan.calibration_requests)
                _log(f"  c_req = {calibration['before_w7']['c_req_us']:.1f} us per request")
            runs: dict[str, Any] = {}
            extras: dict[str, Any] = {}
            for key in workload.contenders:
                if chosen is not None and key not in chosen:
                    continue
                contender = _plan.CONTENDERS[key]
                _log(f"{workload.key} / {contender.label}: {workload.n:,} tasks, k={workload.k:g}")
                try:
                    result = harness.run(workload, contender)
                except (RuntimeError, OSError, ValueError, KeyError) as exc:
                    _log(f"  FAILED: {exc}")
                    failures.append(f"{workload.key} / {contender.label}: {exc}")
                    continue
                figures = _metrics.run_figures(
                    workload, result["raw"], result["stats"], result["tasks"], result["server"]
                )
                if workload.drop is not None:
                    figures["adaptation"] = _metrics.adaptation(
                        workload, result["raw"], result["tasks"], result["timeline"]
                    )
                figures["ideal_makespan_s"] = _metrics.ideal_makespan(workload, result["tasks"])
                if key == _plan.REFERENCE:
                    extras["ideal_makespan_s"] = figures["ideal_makespan_s"]
                runs[key] = figures
                _log("  " + _report.one_line(figures))
                if workload.drop is not None or workload.sample:
                    _plots.keep(workload, key, result, figures)
            results[workload.key] = {
                "workload": workload,
                "parameters": workload.parameters(),
                "runs": runs,
                **extras,
            }
    source_after = source_state()
    source = {
        "at_start": source_before,
        "at_end": source_after,
        "sdk_changed_during_run": source_before["sdk_source_sha256"]
        != source_after["sdk_source_sha256"],
    }
    if source["sdk_changed_during_run"]:
        _log("WARNING: ruxa_async's source changed during the run; see the Validity section")
    document = _report.assemble(
        mode=mode,
        plan=plan,
        machine=machine(),
        cpus={"client": cpus.client, "server": cpus.server},
        calibration=calibration,
        results=results,
        started=started,
        duration=time.monotonic() - t_begin,
        command=_command(args, mode),
        failures=failures,
        source=source,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(document["json"], indent=1, default=str) + "\n", encoding="utf-8"
    )
    (args.out / "RESULTS.md").write_text(document["markdown"], encoding="utf-8")
    _plots.write(results, args.out)
    _log(f"wrote {args.out / 'RESULTS.md'} and results.json in {time.monotonic() - t_begin:.0f} s")
    if failures:
        _log(f"{len(failures)} run(s) failed; see the Validity section")
        return 1
    return 0


def _command(args: argparse.Namespace, mode: str) -> str:
    parts = ["python -m benchmarks"]
    if mode != "full":
        parts.append(f"--{mode}")
    if args.real_scale_headline:
        parts.append("--real-scale-headline")
    if args.time_factor:
        parts.append(f"--time-factor {args.time_factor:g}")
    if args.only:
        parts.append(f"--only {args.only}")
    if args.contenders:
        parts.append(f"--contenders {args.contenders}")
    return " ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
