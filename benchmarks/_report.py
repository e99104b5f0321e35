"""RESULTS.md and results.json, written from the measured figures only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from . import _plan

X = "\u00d7"  # multiplication sign
NONE = "\u2013"  # en dash: no value

REF = _plan.REFERENCE
BASELINES = ("B0", "B1", "B2")


# ------------------------------------------------------------------ formatting


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return NONE
    if value != 0 and abs(value) >= 1000:
        return f"{value:,.0f}"
    if value != 0 and abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def _int(value: float | None) -> str:
    return NONE if value is None else f"{value:,.0f}"


def _ratio(value: float | None, ref: float | None) -> str:
    if value is None or ref is None or ref == 0:
        return ""
    return f" ({X}{value / ref:.2f})"


def _label(key: str) -> str:
    return _plan.CONTENDERS[key].label if key in _plan.CONTENDERS else key


def one_line(f: dict[str, Any]) -> str:
    """A progress line for the console."""
    return (
        f"finished {f['finished']}/{f['jobs']}"
        f"{' (did not finish)' if f['did_not_finish'] else ''}, "
        f"makespan {_num(f['makespan_s'])} s, {_num(f['requests_per_task'])} req/task, "
        f"{_num(f['rate_limited_per_1000'], 1)} 429s/1k, lag p50 {_num(f['lag_p50_s'])} s, "
        f"CPU {_num(f['cpu_per_task_us'], 0)} us/task, peak RSS {_num(f['rss_peak_mb'], 0)} MB, "
        f"server CPU {f['server_cpu_share']:.0%}"
    )


# ------------------------------------------------------------------ tables


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _finished(f: dict[str, Any]) -> str:
    text = f"{f['finished']:,}/{f['jobs']:,}"
    if f["did_not_finish"]:
        text += f" **did not finish within {f['wall_cap_s']:.0f} s**"
    return text


def _main_table(entry: dict[str, Any]) -> str:
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
            return "" if key == REF or ref is None else _ratio(f[name], ref[name])

        makespan = _num(f["makespan_s"], 1)
        if k != 1 and f["makespan_s"] is not None:
            makespan += f" ({_num(f['makespan_real_s'], 0)})"
        lag = " · ".join(_num(f[x], 2) for x in ("lag_p50_s", "lag_p99_s", "lag_max_s"))
        if k != 1 and f["lag_p50_s"] is not None:
            lag += (
                " ("
                + " · ".join(
                    _num(f[x], 1) for x in ("lag_p50_real_s", "lag_p99_real_s", "lag_max_real_s")
                )
                + ")"
            )
        rows.append(
            [
                _label(key),
                _finished(f),
                makespan + r("makespan_s"),
                _num(f["makespan_s"] / f["ideal_makespan_s"], 2)
                if f.get("ideal_makespan_s") and f["makespan_s"]
                else NONE,
                _num(f["tasks_per_s"], 0),
                _num(f["requests_per_task"]) + r("requests_per_task"),
                f"{_num(f['creates_per_task'])} · {_num(f['queries_per_task'])}",
                _num(f["rate_limited_per_1000"], 1),
                _num(f["retries_per_task"]),
                lag,
                _num(f["cpu_per_task_us"], 0) + r("cpu_per_task_us"),
                _num(f["rss_peak_mb"], 0) + r("rss_peak_mb"),
                _num(f["loop_lag_p99_ms"], 1),
            ]
        )
    return _table(headers, rows)


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
            _label(key),
            _int(f["succeeded"]),
            _int(f["task_failed"]),
            _int(f["client_errors"]),
            _int(f["lost"]),
            _int(f["double_resolved"]),
            _int(f["duplicate_creates"]),
            _int(f["orphaned_tasks"]),
            _int(f["server_errors_5xx"]),
            _int(f["dropped_connections"]),
        ]
        for key, f in entry["runs"].items()
    ]
    return _table(headers, rows)


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
                _label(key),
                _int(a["rate_limited_first_10s_after_drop"]),
                _int(a["rate_limited_while_halved"]),
                _int(a["rate_limited_after_restore"]),
                _num(a["reconverge_after_drop_real_s"], 1)
                if a["reconverge_after_drop_real_s"] is not None
                else "never",
                _num(a["reconverge_after_restore_real_s"], 1)
                if a["reconverge_after_restore_real_s"] is not None
                else ("n/a (creates done)" if a["creates_finished_before_restore"] else "never"),
                _num(a["create_rate_while_halved_vs_limit"]),
            ]
        )
    return _table(headers, rows)


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
            rows.append([_label(key)] + [NONE] * 8)
            continue
        ratio = (
            ""
            if key == REF or not ref
            else _ratio(h["rss_per_pending_kb"], ref["rss_per_pending_kb"])
        )
        rows.append(
            [
                _label(key),
                _int(h["pending"]),
                _num(h["rss_plateau_mb"] - f["rss_base_mb"], 0),
                _num(h["rss_per_pending_kb"], 2) + ratio,
                f"{h['idle_cpu_share']:.1%}",
                f"{_num(h['loop_lag_p99_ms'], 1)} · {_num(h['loop_lag_max_ms'], 1)}",
                _num(f.get("create_phase_s"), 1),
                f"{_num(f['loop_lag_p99_ms'], 0)} · {_num(f['loop_lag_max_ms'], 0)}",
                _num(f["gc_longest_pause_ms"], 0),
            ]
        )
    return _table(headers, rows)


def _cpu_table(entry: dict[str, Any], calibration: dict[str, Any]) -> str:
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
            _label(key),
            _finished(f),
            _num(f["tasks_per_s"], 0),
            _num(f["requests_per_task"]),
            _num(f["cpu_per_task_us"], 0),
            _num(f["cpu_vs_calibration"]),
        ]
        for key, f in entry["runs"].items()
    ]
    c_req = c_req_for("W7", calibration)
    return _table(headers, rows) + f"\n\nc_req = {c_req:.1f} µs (bare aiohttp, this run)."


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
                _label(key),
                _num(f["requests_per_completion"]),
                _num(per.get(_plan.IMAGE)),
                _num(per.get(_plan.VIDEO)),
                _num(f["lag_p50_real_s"], 1),
            ]
        )
    return _table(headers, rows)


# ------------------------------------------------------------------ summaries


def _ratio_word(value: float, ref: float) -> str:
    return f"{value / ref:.2f}{X}" if ref else "n/a"


def _baseline_clause(name: str, f: dict[str, Any], ref: dict[str, Any]) -> str:
    text = f"{_label(name)} "
    if f["did_not_finish"]:
        text += f"did not finish within {f['wall_cap_s']:.0f} s ({f['finished']:,} done)"
    elif f["finished"] < f["jobs"]:
        text += f"finished only {f['finished']:,} of {f['jobs']:,} ({f['client_errors']:,} gave up)"
    elif f["makespan_s"] is not None and ref["makespan_s"]:
        text += f"took {_ratio_word(f['makespan_s'], ref['makespan_s'])} as long"
    if f["finished"] < f["jobs"] and f["requests_per_completion"] is not None:
        text += (
            f", spending {f['requests_per_completion']:.2f} requests per finished task "
            f"({_ratio_word(f['requests_per_completion'], ref['requests_per_completion'])})"
        )
    else:
        text += (
            f", with {f['requests_per_task']:.2f} requests per task "
            f"({_ratio_word(f['requests_per_task'], ref['requests_per_task'])})"
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
            f"{_label(key)}: {_ratio_word(f['makespan_s'], makespan)} the time, "
            f"{f['requests_per_task']:.2f} requests per task, "
            f"{f['rate_limited_per_1000']:.1f} 429s per 1,000, lag p50 "
            f"{_num(f['lag_p50_real_s'], 2)} s (real scale)."
        )
    clauses = [_baseline_clause(n, f, ref) for n, f in runs.items() if n in BASELINES]
    if clauses:
        parts.append("Against it: " + "; ".join(clauses) + ".")
    return parts


def _summary(key: str, entry: dict[str, Any], calibration: dict[str, Any]) -> str:
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
                f"core while idle, and an event-loop lag p99 of {_num(h['loop_lag_p99_ms'], 1)} ms"
            )
            if other:
                text += (
                    f"; one coroutine per task (B2) cost {other['rss_per_pending_kb']:.2f} KB "
                    f"each ({_ratio_word(other['rss_per_pending_kb'], h['rss_per_pending_kb'])}), "
                    f"{other['idle_cpu_share']:.1%} of a core and a loop lag p99 of "
                    f"{_num(other['loop_lag_p99_ms'], 1)} ms (max "
                    f"{_num(other['loop_lag_max_ms'], 0)} ms)"
                )
            parts.append(text + ".")
            parts.append(
                f"While creating them the loop stalled more: ruxa_async's longest garbage-"
                f"collector pause was {_num(ref['gc_longest_pause_ms'], 0)} ms and its loop lag "
                f"p99 over the whole run {_num(ref['loop_lag_p99_ms'], 0)} ms"
                + (
                    f" (B2: {_num(runs['B2']['gc_longest_pause_ms'], 0)} ms and "
                    f"{_num(runs['B2']['loop_lag_p99_ms'], 0)} ms)"
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
                    f"{_label(name)} lost {f['lost']} jobs, resolved {f['double_resolved']} "
                    f"twice, and caused {f['duplicate_creates']} duplicate creates (ambiguous "
                    'creates retried by the default `RetryPolicy(ambiguous_creates="retry")`).'
                )
    if base == "W6":
        per = ref.get("queries_per_model", {})
        parts.append(
            f"Per completed task ruxa_async spent {_num(ref['requests_per_completion'])} "
            f"requests ({_num(per.get(_plan.VIDEO))} queries per video, "
            f"{_num(per.get(_plan.IMAGE))} per image)."
        )
    elif ref["lost"] or ref["double_resolved"]:
        parts.append(
            f"Warning: {ref['lost']} lost and {ref['double_resolved']} double-resolved jobs."
        )
    return " ".join(parts)


# ------------------------------------------------------------------ goals


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
                _num(ratio) + f"{X} ideal",
                None if ratio is None else ratio <= 1.10,
            )
        )
        out.append(
            _goal(
                "W1 requests per task, polling",
                "≤ 2.5",
                _num(ref["requests_per_task"]),
                ref["requests_per_task"] <= 2.5,
            )
        )
        if "ruxa_async_callbacks" in runs:
            cb = runs["ruxa_async_callbacks"]["requests_per_task"]
            out.append(_goal("W1 requests per task, callbacks", "≤ 1.1", _num(cb), cb <= 1.1))
        out.append(
            _goal(
                "W1 429s per 1,000 tasks",
                "≤ 5",
                _num(ref["rate_limited_per_1000"], 1),
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
                f"{_num(h['rss_per_pending_kb'])} KB",
                h["rss_per_pending_kb"] is not None and h["rss_per_pending_kb"] <= 1.0,
            )
        )
        lag = h["loop_lag_p99_ms"]
        out.append(
            _goal("W4 loop lag p99", "≤ 50 ms", f"{_num(lag, 1)} ms", lag is not None and lag <= 50)
        )
    w5 = results.get("W5")
    if w5:
        for key in (REF, "ruxa_async_callbacks"):
            f = w5["runs"].get(key)
            if f is None:
                continue
            out.append(
                _goal(
                    f"W5 correctness, {_label(key)}",
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
                f"{_num(ratio)}{X} ({_num(f['cpu_per_task_us'], 0)} µs/task; "
                f"c_req {c_req_for('W7', calibration):.0f} µs)",
                None if ratio is None else ratio <= 1.3,
            )
        )
    return out


# ------------------------------------------------------------------ assembly


SECTIONS: dict[str, list[tuple[str, Callable[..., str]]]] = {
    "W2": [("Adaptation", _adaptation_table)],
    "W4": [("Holding", _hold_table)],
    "W5": [("Correctness", _correctness_table)],
    "W6": [("Where the requests went", _per_model_table)],
}


def assemble(
    *,
    mode: str,
    plan: _plan.Plan,
    machine: dict[str, Any],
    cpus: dict[str, int | None],
    calibration: dict[str, Any],
    results: dict[str, Any],
    started: float,
    duration: float,
    command: str,
    failures: list[str] | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Both documents: ``{"markdown": str, "json": dict}``."""
    failures = failures or []
    for key, entry in results.items():
        c_req = c_req_for(key, calibration)
        entry["c_req_us"] = c_req
        for f in entry["runs"].values():
            rpt = f["requests_per_task"]
            f["cpu_vs_calibration"] = f["cpu_per_task_us"] / (rpt * c_req) if rpt else None
    goal_list = goals(results, calibration)
    when = dt.datetime.fromtimestamp(started, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md: list[str] = []
    md.append("# ruxa_async benchmarks\n")
    md.append(
        f"Generated by `{command}` ({mode} mode) on {when} in {duration / 60:.1f} min. "
        "Every number below was measured in that one run, against the same simulator build "
        "(`ruxa_async.testing`), so ratios between contenders hold on any machine; the "
        "absolute figures are this machine's.\n"
    )
    if mode != "full":
        md.append(
            f"**This is a {mode} run**: task counts are scaled down; the goals below are "
            "indicative only. Run `python -m benchmarks` for the real figures.\n"
        )
    md.append("## Machine\n")
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    md.append(
        f"{machine['cpu_model']}, {machine['cpus']} CPUs, {machine['memory_gib']} GiB, "
        f"{machine['os']}, {machine['implementation']} {machine['python']}; {versions}. "
        f"Client process pinned to CPU {cpus['client']}, simulator to CPU {cpus['server']}.\n"
    )
    md.append("## How it was run\n")
    md.append(
        "Each contender ran alone, in a fresh client process, against a freshly started "
        "simulator (same seed, so every contender meets the same task durations in creation "
        "order). Requests, 429s, 5xx replies, dropped connections and duplicate creates are "
        "counted by the simulator; resolve times, CPU (`time.process_time()`), RSS and "
        "event-loop lag (a probe sleeping 100 ms) by the client process. Resolution lag = "
        "the client's resolve time minus the task's completion time on the simulator "
        "(CLOCK_MONOTONIC is shared on Linux). Jobs alternate between models where a workload "
        "has two; every input is unique, so the simulator can spot duplicate creates. "
        f"In the tables, ({X}r) is the ratio to ruxa_async (polling) in the same workload. "
        "ruxa_async's `as_completed` gets `max_pending` = the batch size, since the "
        "baselines have no bound either (with the default 1,000 a development run of W1 "
        f"stalled its intake: pending ≈ R_c {X} (duration + lag) ≈ 50 {X} 20 s ≈ 1,000). A "
        "baseline that cannot finish is stopped at its wall cap and reported as "
        '"did not finish" with its partial figures.\n'
    )
    md.append(
        "**Time compression.** Running W1 at real scale for six contenders would take "
        "about 25 minutes, so most workloads run *k* times faster than real: the simulator's "
        "rate limits are multiplied by *k*, task durations divided by *k*, and every client "
        "time setting (poll intervals, backoff, pauses, CUBIC recovery) divided by *k*. The "
        "simulator's `Retry-After` is a whole number of seconds (always 1 here), so every "
        "client reads it as `Retry-After / k` (the baselines divide it; ruxa_async gets "
        "`RateLimits(max_pause=1/k)`). Counts and ratios (requests per task, 429s per 1,000 "
        "tasks, makespan ÷ ideal) are invariant under this scaling; times are shown as "
        "measured and, in parentheses, multiplied by *k* (the real-scale equivalent). What "
        "does not scale: loopback latency and CPU time per request are *k* times larger "
        "relative to the compressed clock, so compressed runs slightly favour a client that "
        "is cheap per request. The catalogue's duration priors are real-scale seconds, so the "
        "workloads use model names outside the catalogue (`bench/image`, `bench/video`) and "
        "ruxa_async starts from `PollPolicy.default_duration / k` and learns. "
        "`python -m benchmarks --real-scale-headline` adds a W1 run of ruxa_async at k = 1 "
        "(about four more minutes) to check the compressed figures against real time.\n"
    )
    md.append(f"## Calibration\n\n{_calibration_text(calibration)}\n")
    md.append("## Goals\n")
    md.append(
        _table(
            ["goal", "target", "measured", "status"],
            [[g["goal"], g["target"], g["measured"], f"**{g['status']}**"] for g in goal_list],
        )
        + "\n"
    )
    md.append("## Contenders\n")
    for contender in _plan.CONTENDERS.values():
        md.append(f"- **{contender.label}** (`{contender.module}`): {contender.description}.")
    md.append("")
    for key, entry in results.items():
        workload: _plan.Workload = entry["workload"]
        md.append(f"## {key}: {workload.title}\n")
        md.append(f"*Isolates:* {workload.isolates}.")
        if workload.note:
            md.append(f" *Note:* {workload.note}.")
        md.append("\n")
        md.append(_summary(key, entry, calibration) + "\n")
        md.append(_main_table(entry) + "\n")
        if key == "W7":
            md.append("### CPU against the calibration\n\n" + _cpu_table(entry, calibration) + "\n")
        for title, section in SECTIONS.get(key.split("-")[0], []):
            if key == "W1-real":
                break
            md.append(f"### {title}\n\n{section(entry)}\n")
        ideal = entry.get("ideal_makespan_s")
        md.append(
            f"Parameters: {_parameters(entry['parameters'])}."
            + (f" Ideal makespan (ruxa_async's run): {ideal:.1f} s." if ideal else "")
            + "\n"
        )
    md.append(_notes(results, failures, source or {}))
    json_doc = {
        "mode": mode,
        "command": command,
        "started_utc": when,
        "duration_s": duration,
        "machine": machine,
        "pinning": cpus,
        "source": source,
        "calibration": calibration,
        "goals": goal_list,
        "failed_runs": failures,
        "contenders": {
            c.key: {"label": c.label, "module": c.module, "description": c.description}
            for c in _plan.CONTENDERS.values()
        },
        "workloads": {
            key: {
                "title": entry["workload"].title,
                "parameters": entry["parameters"],
                "ideal_makespan_s": entry.get("ideal_makespan_s"),
                "runs": entry["runs"],
            }
            for key, entry in results.items()
        },
    }
    return {"markdown": "\n".join(md), "json": json_doc}


def c_req_for(workload: str, calibration: dict[str, Any]) -> float:
    """The calibration a workload's CPU ratios use: W7 its own, the rest the first one."""
    if workload == "W7" and "before_w7" in calibration:
        value: float = calibration["before_w7"]["c_req_us"]
    else:
        value = calibration["c_req_us"]
    return value


def _calibration_text(c: dict[str, Any]) -> str:
    again = c.get("before_w7")
    noise = ""
    if again is not None:
        noise = (
            f" Measured again right before W7: **{again['c_req_us']:.1f} µs** "
            f"({again['req_per_s']:,.0f} requests/s); W7's ratios use that one, the other "
            "workloads the first. The difference between the two is this machine's noise "
            "(a shared VM): read CPU ratios as ±20 % at least."
        )
    return (
        f"A bare aiohttp loop ({c['shape']}) spent **c_req = {c['c_req_us']:.1f} µs** of client "
        f"CPU per request ({c['req_per_s']:,.0f} requests/s). Started all at once with "
        f"asyncio.gather ({c['gather_requests']:,} GETs, one coroutine each, most of them "
        f"queued in aiohttp's connector) it spent {c['gather_c_req_us']:.1f} µs per request "
        f"({c['gather_req_per_s']:,.0f} requests/s); that shape is not used as the "
        "reference because it would flatter every contender. Simulator CPU during calibration: "
        f"{c['server_cpu_share']:.0%} of its core. A contender's CPU per task is compared with "
        f"(its requests per task {X} c_req)." + noise
    )


def _parameters(params: dict[str, Any]) -> str:
    """The workload's parameters as one readable line (real-scale values)."""
    words = []
    for key, value in params.items():
        if key == "models":
            value = "; ".join(
                f"{m['name']} (lognormal median {m['median_s']:g} s, sigma {m['sigma']:g}"
                + (f", {m['fail_rate']:.0%} fail" if m["fail_rate"] else "")
                + ")"
                for m in value
            )
        elif key == "wall_cap_s_for":
            value = ", ".join(f"{name} {cap:g} s" for name, cap in value.items())
        elif key == "faults":
            value = ", ".join(f"{name} {p:.1%}" for name, p in value.items())
        elif isinstance(value, float):
            value = f"{value:g}"
        words.append(f"{key.replace('_', ' ')}: {value}")
    return "; ".join(words)


def _notes(results: dict[str, Any], failures: list[str], source: dict[str, Any]) -> str:
    busy = [
        f"{key} / {_label(c)} ({f['server_cpu_share']:.0%})"
        for key, entry in results.items()
        for c, f in entry["runs"].items()
        if f["server_cpu_share"] > 0.9
    ]
    lines = ["## Validity\n"]
    start = source.get("at_start") or {}
    if start.get("commit"):
        state = "with uncommitted changes to ruxa_async " if start.get("sdk_uncommitted") else ""
        lines.append(
            f"Measured code: commit `{start['commit'][:12]}` {state}(ruxa_async source "
            f"digest `{start.get('sdk_source_sha256')}`)."
            + (
                " **ruxa_async's source changed while the run was in progress**: the "
                "workloads did not all measure the same SDK."
                if source.get("sdk_changed_during_run")
                else " The SDK source did not change during the run."
            )
            + "\n"
        )
    if busy:
        lines.append(
            "The simulator used more than 90 % of its core in: " + ", ".join(busy) + "; there "
            "the simulator, not the client, may have set the pace."
        )
    else:
        lines.append("The simulator never used more than 90 % of its core.")
    if failures:
        lines.append("\nRuns that failed (left out of the tables above):\n")
        lines += [f"- {failure}" for failure in failures]
    return "\n".join(lines) + "\n"
