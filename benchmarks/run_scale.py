"""Scale of a batch run: ``ruxa-async run`` on a million-line jobs file, killed and resumed.

``python -m benchmarks.run_scale`` (a few minutes; not part of CI) writes
``benchmarks/results-scale.md``. Against a standalone simulator with a fast
model and no rate limit, with ``--no-download``:

1. a fresh run, SIGKILLed after ``--run-seconds``: time until the first
   create reaches the simulator, tasks created, peak RSS;
2. the same command again (a resume): time until its first create, peak RSS;
   after ``--run-seconds`` a SIGINT makes it write ``results.jsonl`` and
   ``index.html`` for every line, which is timed too;
3. ``--dry-run`` on the journal left behind: time, peak RSS and what it says;
4. the same command with ``--max-credits 0``: it plans every line of the file
   (sending none) and writes the results: time and peak RSS of a whole pass.

Peak RSS is the kernel's ``ru_maxrss`` of the run process, measured by GNU
``time``. Goals (issue 10): peak RSS <= 400 MB, resume sends within 30 s.
``--lines 2000 --run-seconds 3`` is a quick smoke of the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._procs import ROOT, Simulator, child_env

RESULTS = ROOT / "benchmarks" / "results-scale.md"
GOAL_RSS_MB = 400.0
GOAL_RESUME_S = 30.0
FAST_CLI = ["--first-check", "0.1", "--poll-min", "0.1", "--poll-max", "0.5"]


def write_jobs(path: Path, lines: int) -> None:
    """``lines`` distinct google/nano-banana jobs."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(lines):
            job = {"id": f"job-{i}", "model": "google/nano-banana", "input": {"prompt": f"fox {i}"}}
            f.write(json.dumps(job) + "\n")


class TimedRun:
    """``ruxa-async ARGS`` under GNU ``time`` (for its peak RSS); signals go to the run itself."""

    def __init__(self, args: list[str], work: Path, name: str, key: str) -> None:
        self.rss_file = work / f"{name}.rss"
        self.log = (work / f"{name}.log").open("wb")
        env = {**child_env(), "RUXA_API_KEY": key}
        argv = [shutil.which("time") or "/usr/bin/time", "-f", "%M", "-o", str(self.rss_file)]
        argv += [sys.executable, "-m", "ruxa_async", *args]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, cwd=ROOT, env=env)

    def run_pid(self) -> int:
        """The pid of ``python -m ruxa_async`` (GNU time's only child)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
                return int(text.split()[0])
            time.sleep(0.01)
        raise RuntimeError("the run process did not start")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.run_pid(), sig)

    def wait(self, timeout: float = 900) -> tuple[int, float]:
        """Exit status (negative: killed by that signal) and peak RSS in MB."""
        self.proc.wait(timeout)
        self.log.close()
        text = self.rss_file.read_text().strip().splitlines()
        status = self.proc.returncode
        for line in text:
            if line.startswith("Command terminated by signal"):
                status = -int(line.split()[-1])
            elif line.startswith("Command exited with non-zero status"):
                status = int(line.split()[-1])
        return status, int(text[-1]) / 1024


def wait_creates(sim: Simulator, above: int, run: TimedRun, limit: float = 300) -> float:
    """Seconds from the run's start until the simulator has seen more than ``above`` creates."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if sim.admin("/_sim/stats")["creates"] > above:
            return time.monotonic() - run.started
        if run.proc.poll() is not None:
            raise RuntimeError(f"the run ended before sending: see {run.log.name}")
        time.sleep(0.05)
    raise RuntimeError("the run sent nothing in time")


def measure(lines: int, run_seconds: float, work: Path) -> dict[str, Any]:
    jobs = work / "jobs.jsonl"
    t0 = time.monotonic()
    write_jobs(jobs, lines)
    figures: dict[str, Any] = {"lines": lines, "file_mb": jobs.stat().st_size / 1e6}
    figures["write_s"] = time.monotonic() - t0
    config = {"default_behavior": {"median_seconds": 0.05, "sigma": 0.1}, "file_size": 64}
    with Simulator(config, work, None, "scale") as sim:
        sim.wait_ready()
        out = work / "out"
        args = ["run", str(jobs), "--out", str(out), "--base-url", sim.url, "--no-download"]
        args += ["--progress", "none", *FAST_CLI]

        first = TimedRun(args, work, "fresh", sim.api_key)
        figures["fresh_first_send_s"] = wait_creates(sim, 0, first)
        time.sleep(run_seconds)
        first.signal(signal.SIGKILL)
        figures["fresh_status"], figures["fresh_rss_mb"] = first.wait()
        stats = sim.admin("/_sim/stats")
        figures["fresh_created"] = stats["tasks_created"]

        second = TimedRun(args, work, "resume", sim.api_key)
        figures["resume_first_send_s"] = wait_creates(sim, stats["creates"], second)
        time.sleep(run_seconds)
        stopped = time.monotonic()
        second.signal(signal.SIGINT)
        figures["resume_status"], figures["resume_rss_mb"] = second.wait()
        figures["resume_report_s"] = time.monotonic() - stopped
        stats = sim.admin("/_sim/stats")
        figures["resume_created"] = stats["tasks_created"] - figures["fresh_created"]
        figures["duplicates"] = stats["duplicate_creates"]
        with (out / "results.jsonl").open("rb") as f:
            figures["results_lines"] = sum(1 for _ in f)

        dry = TimedRun([*args, "--dry-run"], work, "dry", sim.api_key)
        figures["dry_status"], figures["dry_rss_mb"] = dry.wait()
        figures["dry_s"] = time.monotonic() - dry.started
        figures["dry_text"] = (work / "dry.log").read_text(encoding="utf-8", errors="replace")

        whole = TimedRun([*args, "--max-credits", "0"], work, "whole", sim.api_key)
        figures["whole_status"], figures["whole_rss_mb"] = whole.wait()
        figures["whole_s"] = time.monotonic() - whole.started
    figures["load"] = os.getloadavg()
    return figures


def report(f: dict[str, Any]) -> str:
    peak = max(f["fresh_rss_mb"], f["resume_rss_mb"], f["dry_rss_mb"], f["whole_rss_mb"])
    load = ", ".join(f"{x:.1f}" for x in f["load"])
    whole = f"{f['whole_s']:.1f} s / {f['whole_rss_mb']:.0f} MB"
    rss_ok = "met" if peak <= GOAL_RSS_MB else "missed"
    resume_ok = "met" if f["resume_first_send_s"] <= GOAL_RESUME_S else "missed"
    return f"""# Scale of a batch run

`python -m benchmarks.run_scale --lines {f["lines"]}` on {platform.machine()}, Python
{platform.python_version()}, {os.cpu_count()} cores shared with other work (load average at the
end: {load}; timings are noisy, memory is not).
A {f["lines"]:,}-line jobs file ({f["file_mb"]:.0f} MB) against a standalone simulator (median
task 0.05 s, no rate limit), `--no-download`.

| step | figure |
|---|---|
| fresh run: first create reaches the simulator after | {f["fresh_first_send_s"]:.1f} s |
| fresh run: tasks created before SIGKILL | {f["fresh_created"]:,} |
| fresh run: peak RSS | {f["fresh_rss_mb"]:.0f} MB |
| resume: first create after | **{f["resume_first_send_s"]:.1f} s** |
| resume: tasks created before SIGINT | {f["resume_created"]:,} |
| resume: SIGINT to exit (results and gallery for every line) | {f["resume_report_s"]:.1f} s |
| resume: exit status / results lines | {f["resume_status"]} / {f["results_lines"]:,} |
| resume: peak RSS | {f["resume_rss_mb"]:.0f} MB |
| `--dry-run` on the journal: time / peak RSS | {f["dry_s"]:.1f} s / {f["dry_rss_mb"]:.0f} MB |
| `--max-credits 0` (plans every line, sends none): time / peak RSS | {whole} |
| duplicate creates | {f["duplicates"]} |

Goals (issue 10): peak RSS <= {GOAL_RSS_MB:.0f} MB: **{rss_ok}** ({peak:.0f} MB);
resume starts sending within {GOAL_RESUME_S:.0f} s: **{resume_ok}**.

Before sending, the fresh run reads the whole file once (syntax, unique ids, catalogue checks,
each journaled job compared with its line), keeping an 8-byte digest per id and a 16-byte
digest per distinct job: that full check is the fresh run's time to first create. It records
the file's SHA-256 in the journal; the resume finds the same bytes and settings, so it hashes
the file (instead of parsing it) and counts what is left from the journal. Any edit to the file
means a full check again. Plan, journal look-ups and results are streamed a few hundred lines
at a time.

`--dry-run` after the resume said:

```
{f["dry_text"].strip()}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--run-seconds", type=float, default=20.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ruxa-scale-") as folder:
        figures = measure(args.lines, args.run_seconds, Path(folder))
    text = report(figures)
    args.output.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
