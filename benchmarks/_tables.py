"""The per-workload tables of RESULTS.md and the prose summary above each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _plan
from ._format import (
    BASELINES,
    NONE,
    REF,
    X,
    finished,
    integer,
    label,
    num,
    ratio,
    ratio_word,
    table,
)
from ._goals import c_req_for

__all__ = ["SECTIONS", "cpu_table", "main_table", "summary"]


def main_table(entry: dict[str, Any]) -> str:
    runs: dict[str, dict[str, Any]] = entry["runs"]
    ref = runs.get(REF)
    k = entry["parameters"]["time_factor_k"]
    headers = [
        "contender",
        "finished",
        "makespan s" + (f" ({X}k = real-scale)" if k != 1 else ""),
        "÷ ideal",
        "tasks/s",
        "requests/task",
        "creates · queries /task",
        "429s per 1k tasks",
        "retries/task",
        "lag p50 · p99 · max s" + (f" ({X}k)" if k != 1 else ""),
        "CPU µs/task",
        "peak RSS MB",
        "loop lag p99 ms",
    ]
    rows = []
    for key, f in runs.items():

        def r(name: str, f: dict[str, Any] = f) -> str:
            return "" if key == REF or ref is None else ratio(f[name], ref[name])

        makespan = num(f["makespan_s"], 1)
        if k != 1 and f["makespan_s"] is not None:
            makespan += f" ({num(f['makespan_real_s'], 0)})"
        lag = " · ".join(num(f[x], 2) for x in ("lag_p50_s", "lag_p99_s", "lag_max_s"))
        if k != 1 and f["lag_p50_s"] is not None:
            lag += (
                " ("
                + " · ".join(
                    num(f[x], 1) for x in ("lag_p50_real_s", "lag_p99_real_s", "lag_max_real_s")
                )
                + ")"
            )
        rows.append(
            [
                label(key),
                finished(f),
                makespan + r("makespan_s"),
                num(f["makespan_s"] / f["ideal_makespan_s"], 2)
                if f.get("ideal_makespan_s") and f["makespan_s"]
                else NONE,
                num(f["tasks_per_s"], 0),
                num(f["requests_per_task"]) + r("requests_per_task"),
                f"{num(f['creates_per_task'])} · {num(f['queries_per_task'])}",
                num(f["rate_limited_per_1000"], 1),
                num(f["retries_per_task"]),
                lag,
                num(f["cpu_per_task_us"], 0) + r("cpu_per_task_us"),
                num(f["rss_peak_mb"], 0) + r("rss_peak_mb"),
                num(f["loop_lag_p99_ms"], 1),
            ]
        )
    return table(headers, rows)


def _correctness_table(entry: dict[str, Any]) -> str:
    headers = [
        "contender",
        "succeeded",
        "task failed",
        "client gave up",
        "lost",
        "double-resolved",
        "duplicate creates",
        "orphaned tasks",
        "5xx replies",
        "dropped connections",
    ]
    rows = [
        [
            label(key),
            integer(f["succeeded"]),
            integer(f["task_failed"]),
            integer(f["client_errors"]),
            integer(f["lost"]),
            integer(f["double_resolved"]),
            integer(f["duplicate_creates"]),
            integer(f["orphaned_tasks"]),
            integer(f["server_errors_5xx"]),
            integer(f["dropped_connections"]),
        ]
        for key, f in entry["runs"].items()
    ]
    return table(headers, rows)


def _adaptation_table(entry: dict[str, Any]) -> str:
    headers = [
        "contender",
        "429s in the first 10 s after the drop",
        "429s while halved",
        "429s after restore",
        "re-converged after drop (s)",
        "re-converged after restore (s)",
        "create rate while halved ÷ limit",
    ]
    rows = []
    for key, f in entry["runs"].items():
        a = f["adaptation"]
        rows.append(
            [
                label(key),
                integer(a["rate_limited_first_10s_after_drop"]),
                integer(a["rate_limited_while_halved"]),
                integer(a["rate_limited_after_restore"]),
                num(a["reconverge_after_drop_real_s"], 1)
                if a["reconverge_after_drop_real_s"] is not None
                else "never",
                num(a["reconverge_after_restore_real_s"], 1)
                if a["reconverge_after_restore_real_s"] is not None
                else ("n/a (creates done)" if a["creates_finished_before_restore"] else "never"),
                num(a["create_rate_while_halved_vs_limit"]),
            ]
        )
    return table(headers, rows)


def _hold_table(entry: dict[str, Any]) -> str:
    runs = entry["runs"]
    ref = runs.get(REF, {}).get("hold")
    headers = [
        "contender",
        "pending (held)",
        "RSS growth MB",
        "RSS per pending task KB",
        "idle CPU (share of a core)",
        "loop lag p99 · max ms, held",
        "time to create all s",
        "loop lag p99 · max ms, whole run",
        "longest GC pause ms",
    ]
    rows = []
    for key, f in runs.items():
        h = f.get("hold")
        if not h:
            rows.append([label(key)] + [NONE] * 8)
            continue
        vs_ref = (
            ""
            if key == REF or not ref
            else ratio(h["rss_per_pending_kb"], ref["rss_per_pending_kb"])
        )
        rows.append(
            [
                label(key),
                integer(h["pending"]),
                num(h["rss_plateau_mb"] - f["rss_base_mb"], 0),
                num(h["rss_per_pending_kb"], 2) + vs_ref,
                f"{h['idle_cpu_share']:.1%}",
                f"{num(h['loop_lag_p99_ms'], 1)} · {num(h['loop_lag_max_ms'], 1)}",
                num(f.get("create_phase_s"), 1),
                f"{num(f['loop_lag_p99_ms'], 0)} · {num(f['loop_lag_max_ms'], 0)}",
                num(f["gc_longest_pause_ms"], 0),
            ]
        )
    return table(headers, rows)


def cpu_table(entry: dict[str, Any], calibration: dict[str, Any]) -> str:
    headers = [
        "contender",
        "finished",
        "tasks/s",
        "requests/task",
        "CPU µs/task",
        f"CPU ÷ (requests/task {X} c_req)",
    ]
    rows = [
        [
            label(key),
            finished(f),
            num(f["tasks_per_s"], 0),
            num(f["requests_per_task"]),
            num(f["cpu_per_task_us"], 0),
            num(f["cpu_vs_calibration"]),
        ]
        for key, f in entry["runs"].items()
    ]
    c_req = c_req_for("W7", calibration)
    return table(headers, rows) + f"\n\nc_req = {c_req:.1f} µs (bare aiohttp, this run)."


def _per_model_table(entry: dict[str, Any]) -> str:
    headers = [
        "contender",
        "requests per completion",
        "queries per image task",
        "queries per video task",
        f"lag p50 s ({X}k)",
    ]
    rows = []
    for key, f in entry["runs"].items():
        per = f.get("queries_per_model", {})
        rows.append(
            [
                label(key),
                num(f["requests_per_completion"]),
                num(per.get(_plan.IMAGE)),
                num(per.get(_plan.VIDEO)),
                num(f["lag_p50_real_s"], 1),
            ]
        )
    return table(headers, rows)


# ------------------------------------------------------------------ summaries


def _baseline_clause(name: str, f: dict[str, Any], ref: dict[str, Any]) -> str:
    text = f"{label(name)} "
    if f["did_not_finish"]:
        text += f"did not finish within {f['wall_cap_s']:.0f} s ({f['finished']:,} done)"
    elif f["finished"] < f["jobs"]:
        text += f"finished only {f['finished']:,} of {f['jobs']:,} ({f['client_errors']:,} gave up)"
    elif f["makespan_s"] is not None and ref["makespan_s"]:
        text += f"took {ratio_word(f['makespan_s'], ref['makespan_s'])} as long"
    if f["finished"] < f["jobs"] and f["requests_per_completion"] is not None:
        text += (
            f", spending {f['requests_per_completion']:.2f} requests per finished task "
            f"({ratio_word(f['requests_per_completion'], ref['requests_per_completion'])})"
        )
    else:
        text += (
            f", with {f['requests_per_task']:.2f} requests per task "
            f"({ratio_word(f['requests_per_task'], ref['requests_per_task'])})"
        )
    return text + f" and {f['rate_limited_per_1000']:,.0f} 429s per 1,000 tasks"


def _throughput_summary(entry: dict[str, Any]) -> list[str]:
    runs = entry["runs"]
    ref = runs[REF]
    k = entry["parameters"]["time_factor_k"]
    parts = []
    makespan = ref["makespan_s"]
    if makespan is not None:
        text = (
            f"ruxa_async finished {ref['finished']:,} of {ref['jobs']:,} tasks in {makespan:.1f} s"
        )
        if k != 1:
            text += f" ({makespan * k:.0f} s at real scale)"
        if ref.get("ideal_makespan_s"):
            text += f", {makespan / ref['ideal_makespan_s']:.2f}{X} the ideal"
        text += (
            f", with {ref['requests_per_task']:.2f} requests per task and "
            f"{ref['rate_limited_per_1000']:.1f} 429s per 1,000 tasks"
        )
        if ref["lag_p50_real_s"] is not None:
            text += (
                f"; it saw a task's end {ref['lag_p50_real_s']:.1f} s (p50) / "
                f"{ref['lag_p99_real_s']:.1f} s (p99) after it happened (real scale)"
            )
        parts.append(text + ".")
    for key in ("ruxa_async_unknown", "ruxa_async_callbacks"):
        f = runs.get(key)
        if f is None or f["makespan_s"] is None or not makespan:
            continue
        parts.append(
            f"{label(key)}: {ratio_word(f['makespan_s'], makespan)} the time, "
            f"{f['requests_per_task']:.2f} requests per task, "
            f"{f['rate_limited_per_1000']:.1f} 429s per 1,000, lag p50 "
            f"{num(f['lag_p50_real_s'], 2)} s (real scale)."
        )
    clauses = [_baseline_clause(n, f, ref) for n, f in runs.items() if n in BASELINES]
    if clauses:
        parts.append("Against it: " + "; ".join(clauses) + ".")
    return parts


def summary(key: str, entry: dict[str, Any], calibration: dict[str, Any]) -> str:
    runs = entry["runs"]
    ref = runs.get(REF)
    if ref is None:
        return ""
    base = key.split("-")[0]
    parts: list[str] = []
    if base == "W4":
        h, other = ref.get("hold"), runs.get("B2", {}).get("hold")
        if h:
            text = (
                f"Holding {h['pending']:,} pending tasks cost ruxa_async "
                f"{h['rss_per_pending_kb']:.2f} KB of RSS each, {h['idle_cpu_share']:.1%} of a "
                f"core while idle, and an event-loop lag p99 of {num(h['loop_lag_p99_ms'], 1)} ms"
            )
            if other:
                text += (
                    f"; one coroutine per task (B2) cost {other['rss_per_pending_kb']:.2f} KB "
                    f"each ({ratio_word(other['rss_per_pending_kb'], h['rss_per_pending_kb'])}), "
                    f"{other['idle_cpu_share']:.1%} of a core and a loop lag p99 of "
                    f"{num(other['loop_lag_p99_ms'], 1)} ms (max "
                    f"{num(other['loop_lag_max_ms'], 0)} ms)"
                )
            parts.append(text + ".")
            parts.append(
                f"While creating them the loop stalled more: ruxa_async's longest garbage-"
                f"collector pause was {num(ref['gc_longest_pause_ms'], 0)} ms and its loop lag "
                f"p99 over the whole run {num(ref['loop_lag_p99_ms'], 0)} ms"
                + (
                    f" (B2: {num(runs['B2']['gc_longest_pause_ms'], 0)} ms and "
                    f"{num(runs['B2']['loop_lag_p99_ms'], 0)} ms)"
                    if "B2" in runs
                    else ""
                )
                + "."
            )
    elif base == "W7":
        parts += _throughput_summary(entry)
        if ref.get("cpu_vs_calibration") is not None:
            parts.append(
                f"ruxa_async spent {ref['cpu_per_task_us']:.0f} µs of CPU per task, "
                f"{ref['cpu_vs_calibration']:.2f}{X} what a bare aiohttp loop spends on the same "
                f"number of requests (c_req = {c_req_for('W7', calibration):.0f} µs)."
            )
    else:
        parts += _throughput_summary(entry)
    if base == "W2":
        a = ref.get("adaptation", {})
        if a:
            parts.append(
                f"When the limits halved ruxa_async drew {a['rate_limited_first_10s_after_drop']} "
                f"429s in the first 10 s and {a['rate_limited_while_halved']} in the whole "
                f"minute, and sent creates at {a['create_rate_while_halved_vs_limit']:.0%} of "
                "the halved limit."
            )
    if base == "W5":
        for name in (REF, "ruxa_async_callbacks"):
            f = runs.get(name)
            if f is not None:
                parts.append(
                    f"{label(name)} lost {f['lost']} jobs, resolved {f['double_resolved']} "
                    f"twice, and caused {f['duplicate_creates']} duplicate creates (ambiguous "
                    'creates retried by the default `RetryPolicy(ambiguous_creates="retry")`).'
                )
    if base == "W6":
        per = ref.get("queries_per_model", {})
        parts.append(
            f"Per completed task ruxa_async spent {num(ref['requests_per_completion'])} "
            f"requests ({num(per.get(_plan.VIDEO))} queries per video, "
            f"{num(per.get(_plan.IMAGE))} per image)."
        )
    elif ref["lost"] or ref["double_resolved"]:
        parts.append(
            f"Warning: {ref['lost']} lost and {ref['double_resolved']} double-resolved jobs."
        )
    return " ".join(parts)


SECTIONS: dict[str, list[tuple[str, Callable[..., str]]]] = {
    "W2": [("Adaptation", _adaptation_table)],
    "W4": [("Holding", _hold_table)],
    "W5": [("Correctness", _correctness_table)],
    "W6": [("Where the requests went", _per_model_table)],
}
