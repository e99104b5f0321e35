"""The issue's goals judged against the measured figures, and the figures derived for them."""

from __future__ import annotations

from typing import Any

from ._format import BASELINES, REF, X, label, num

__all__ = ["c_req_for", "goals", "with_cpu_ratios"]


def _goal(name: str, target: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {
        "goal": name,
        "target": target,
        "measured": measured,
        "status": "n/a" if met is None else ("met" if met else "missed"),
    }


def goals(results: dict[str, Any], calibration: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, each met or missed as measured."""
    out: list[dict[str, Any]] = []
    w1 = results.get("W1")
    if w1 and REF in w1["runs"]:
        runs = w1["runs"]
        ref = runs[REF]
        ideal = w1.get("ideal_makespan_s")
        ratio = ref["makespan_s"] / ideal if ideal and ref["makespan_s"] else None
        out.append(
            _goal(
                "W1 makespan",
                f"≤ 1.10 {X} ideal",
                num(ratio) + f"{X} ideal",
                None if ratio is None else ratio <= 1.10,
            )
        )
        out.append(
            _goal(
                "W1 requests per task, polling",
                "≤ 2.5",
                num(ref["requests_per_task"]),
                ref["requests_per_task"] <= 2.5,
            )
        )
        if "ruxa_async_callbacks" in runs:
            cb = runs["ruxa_async_callbacks"]["requests_per_task"]
            out.append(_goal("W1 requests per task, callbacks", "≤ 1.1", num(cb), cb <= 1.1))
        out.append(
            _goal(
                "W1 429s per 1,000 tasks",
                "≤ 5",
                num(ref["rate_limited_per_1000"], 1),
                ref["rate_limited_per_1000"] <= 5,
            )
        )
        beaten: list[str] = []
        for name in BASELINES:
            f = runs.get(name)
            if f is None:
                continue
            theirs = f["requests_per_completion"]
            fewer_requests = theirs is None or ref["requests_per_completion"] < theirs
            faster = f["finished"] < ref["finished"] or (
                f["makespan_s"] is not None
                and ref["makespan_s"] is not None
                and ref["makespan_s"] < f["makespan_s"]
            )
            if not (fewer_requests and faster):
                beaten.append(
                    f"{name}: {'requests ' if not fewer_requests else ''}"
                    f"{'makespan' if not faster else ''}".strip()
                )
        out.append(
            _goal(
                "W1 better than every baseline on requests/task and makespan",
                "fewer requests per finished task, and a shorter makespan or more tasks "
                "finished, than each of B0, B1, B2",
                "yes" if not beaten else "not better on " + "; ".join(beaten),
                not beaten,
            )
        )
    w4 = results.get("W4")
    if w4 and REF in w4["runs"] and w4["runs"][REF].get("hold"):
        h = w4["runs"][REF]["hold"]
        out.append(
            _goal(
                "W4 memory per pending task",
                "≤ 1 KB",
                f"{num(h['rss_per_pending_kb'])} KB",
                h["rss_per_pending_kb"] is not None and h["rss_per_pending_kb"] <= 1.0,
            )
        )
        lag = h["loop_lag_p99_ms"]
        out.append(
            _goal("W4 loop lag p99", "≤ 50 ms", f"{num(lag, 1)} ms", lag is not None and lag <= 50)
        )
    w5 = results.get("W5")
    if w5:
        for key in (REF, "ruxa_async_callbacks"):
            f = w5["runs"].get(key)
            if f is None:
                continue
            out.append(
                _goal(
                    f"W5 correctness, {label(key)}",
                    "0 lost, 0 double-resolved",
                    f"{f['lost']} lost, {f['double_resolved']} double-resolved"
                    + (" (did not finish)" if f["did_not_finish"] else ""),
                    f["lost"] == 0 and f["double_resolved"] == 0 and not f["did_not_finish"],
                )
            )
    w7 = results.get("W7")
    if w7 and REF in w7["runs"]:
        f = w7["runs"][REF]
        ratio = f.get("cpu_vs_calibration")
        out.append(
            _goal(
                "W7 CPU per task",
                f"≤ 1.3 {X} (requests/task {X} c_req)",
                f"{num(ratio)}{X} ({num(f['cpu_per_task_us'], 0)} µs/task; "
                f"c_req {c_req_for('W7', calibration):.0f} µs)",
                None if ratio is None else ratio <= 1.3,
            )
        )
    return out


def c_req_for(workload: str, calibration: dict[str, Any]) -> float:
    """The calibration a workload's CPU ratios use: W7 its own, the rest the first one."""
    if workload == "W7" and "before_w7" in calibration:
        value: float = calibration["before_w7"]["c_req_us"]
    else:
        value = calibration["c_req_us"]
    return value


def with_cpu_ratios(results: dict[str, Any], calibration: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``results`` whose runs carry ``cpu_vs_calibration``; ``results`` is untouched.

    ``cpu_vs_calibration`` = CPU per task / (requests per task x c_req), with
    each workload's c_req from :func:`c_req_for` (None when no request was made).
    """
    out: dict[str, Any] = {}
    for key, entry in results.items():
        c_req = c_req_for(key, calibration)
        runs = {}
        for name, f in entry["runs"].items():
            rpt = f["requests_per_task"]
            ratio = f["cpu_per_task_us"] / (rpt * c_req) if rpt else None
            runs[name] = {**f, "cpu_vs_calibration": ratio}
        out[key] = {**entry, "c_req_us": c_req, "runs": runs}
    return out
