"""From raw figures (client process, simulator counters and task records) to the reported ones.

Definitions (N = jobs in the workload, every per-task figure divides by N):

* makespan: first submit to last job resolved, client clock; tasks/s = tasks
  finished (succeeded or failed on the service) / makespan.
* ideal makespan: creates at exactly the limit (the burst at once, then one
  per 1/R_c, following the limit's schedule in W2) plus each task's drawn
  duration, using the durations the simulator drew in creation order (the
  same for every contender: one seed).
* requests: counted by the simulator (creates + queries); 429s, 5xx replies
  and dropped connections likewise; retries are counted by each client.
* resolution lag: the client's resolve time minus the task's completion time
  on the simulator (both ``time.monotonic()``, one clock on Linux).
* client CPU: ``time.process_time()`` of the client process over the run.
* RSS: growth = the kernel's high-water mark minus RSS before the run; per
  pending task = growth / the most tasks pending at once (W4: the plateau).
* lost: jobs never resolved although the client returned; double-resolved:
  jobs resolved more than once; duplicate creates: tasks the simulator
  created twice for the same input; orphans: tasks created that the client
  never reported (paid for, result unknown to the caller).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

from ._client import ERROR, FAILED, NOT_SUBMITTED, SUCCEEDED
from ._plan import Workload


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of ``values``, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


def slot_times(n: int, burst: int, schedule: Sequence[tuple[float, float]]) -> list[float]:
    """When a perfect client could send creates 1..n through a token bucket.

    ``schedule`` lists (from time, rate) pieces in order; the bucket starts full.
    """
    times: list[float] = []
    tokens = float(burst)
    t = 0.0
    piece = 0
    for _ in range(n):
        while tokens < 1.0:
            rate = schedule[piece][1]
            end = schedule[piece + 1][0] if piece + 1 < len(schedule) else math.inf
            need = (1.0 - tokens) / rate
            if t + need <= end:
                t += need
                tokens = 1.0
            else:
                tokens += (end - t) * rate
                t = end
                piece += 1
        tokens -= 1.0
        times.append(t)
    return times


def ideal_makespan(workload: Workload, tasks: list[dict[str, Any]]) -> float | None:
    """Creates at the limit plus the drawn durations; None without a create limit or tasks."""
    if workload.create_rate is None or workload.hold_s is not None or len(tasks) < workload.n:
        return None
    ordered = sorted(tasks, key=lambda t: t["created_at"])[: workload.n]
    rate = workload.create_rate * workload.k
    schedule = [(0.0, rate)]
    if workload.drop is not None:
        start, length = (x / workload.k for x in workload.drop)
        schedule = [(0.0, rate), (start, rate / 2), (start + length, rate)]
    slots = slot_times(workload.n, workload.create_burst, schedule)
    return float(
        max(
            slot + (t["completes_at"] - t["created_at"])
            for slot, t in zip(slots, ordered, strict=True)
        )
    )


def run_figures(
    workload: Workload,
    raw: dict[str, Any],
    stats: dict[str, Any],
    tasks: list[dict[str, Any]],
    server: dict[str, float],
) -> dict[str, Any]:
    """Every reported figure of one contender's run (CPU ratios are added later)."""
    n = workload.n
    k = workload.k
    status: list[int] = raw["status"]
    resolved_at: list[float] = raw["resolved_at"]
    task_ids: list[str | None] = raw["task_ids"]
    t0: float = raw["t_start"]
    succeeded = status.count(SUCCEEDED)
    failed = status.count(FAILED)
    errors = status.count(ERROR)
    not_submitted = status.count(NOT_SUBMITTED)
    unresolved = status.count(0)
    finished = succeeded + failed
    ended = raw["capped"] or raw["stopped"]
    times = [resolved_at[i] for i, s in enumerate(status) if s]
    makespan = max(times) - t0 if times and not raw["stopped"] else None

    by_id = {t["task_id"]: t for t in tasks}
    lags: list[float] = []
    for i, s in enumerate(status):
        tid = task_ids[i]
        if s in (SUCCEEDED, FAILED) and tid is not None and tid in by_id:
            lags.append(resolved_at[i] - by_id[tid]["completes_at"])
    by_status = stats.get("by_status", {})
    faults = stats.get("faults", {})
    creates, queries = stats["creates"], stats["queries"]
    requests = creates + queries
    rate_limited = stats["rate_limited_create"] + stats["rate_limited_query"]
    samples = raw["samples"]
    max_pending = max((s[3] for s in samples), default=0)
    loop_lags = [lag for _, lag in raw["lags"]]
    growth = raw["rss_peak"] - raw["rss_base"]
    known_ids = {tid for tid in task_ids if tid}
    figures: dict[str, Any] = {
        "jobs": n,
        "finished": finished,
        "succeeded": succeeded,
        "task_failed": failed,
        "client_errors": errors,
        "not_submitted": not_submitted,
        "unresolved": unresolved,
        "did_not_finish": bool(raw["capped"]),
        "wall_cap_s": workload.cap_for(raw["contender"]),
        "crashed": raw.get("error"),
        "makespan_s": makespan,
        "makespan_real_s": None if makespan is None else makespan * k,
        "tasks_per_s": finished / makespan if makespan else None,
        "requests": requests,
        "creates": creates,
        "queries": queries,
        "rate_limited": rate_limited,
        "rate_limited_create": stats["rate_limited_create"],
        "rate_limited_query": stats["rate_limited_query"],
        "server_errors_5xx": sum(v for c, v in by_status.items() if str(c).startswith("5")),
        "dropped_connections": faults.get("drop_before", 0) + faults.get("drop_after_create", 0),
        "client_retries": raw["counters"].get("retries"),
        "requests_per_task": requests / n,
        "creates_per_task": creates / n,
        "queries_per_task": queries / n,
        "rate_limited_per_task": rate_limited / n,
        "retries_per_task": None
        if raw["counters"].get("retries") is None
        else raw["counters"]["retries"] / n,
        "rate_limited_per_1000": rate_limited * 1000 / n,
        "requests_per_completion": requests / finished if finished else None,
        "lag_p50_s": percentile(lags, 0.5),
        "lag_p99_s": percentile(lags, 0.99),
        "lag_max_s": max(lags, default=None),
        "cpu_s": raw["cpu_s"],
        "cpu_per_task_us": raw["cpu_s"] / n * 1e6,
        "rss_base_mb": raw["rss_base"] / 2**20,
        "rss_peak_mb": raw["rss_peak"] / 2**20,
        "rss_growth_mb": growth / 2**20,
        "max_pending": max_pending,
        "rss_per_pending_kb": growth / max_pending / 1024 if max_pending else None,
        "loop_lag_p99_ms": _ms(percentile(loop_lags, 0.99)),
        "loop_lag_max_ms": _ms(max(loop_lags, default=None)),
        "gc_longest_pause_ms": _ms(raw["gc"]["longest_pause_s"]),
        "gc_pause_total_s": raw["gc"]["pause_total_s"],
        "lost": 0 if ended else unresolved,
        "double_resolved": raw["double_resolved"],
        "duplicate_creates": stats.get("duplicate_creates", 0),
        "ambiguous_created": stats.get("ambiguous_created", 0),
        "tasks_created": stats.get("tasks_created", 0),
        "orphaned_tasks": max(0, stats.get("tasks_created", 0) - len(known_ids)),
        "callbacks_delivered": stats.get("callbacks_delivered", 0),
        "server_cpu_share": server["cpu_share"],
        "client_counters": raw["counters"],
    }
    for key in ("lag_p50_s", "lag_p99_s", "lag_max_s"):
        value = figures[key]
        figures[key[:-2] + "_real_s"] = None if value is None else value * k
    if tasks:
        figures["create_phase_s"] = max(t["created_at"] for t in tasks) - t0
        queries_by_model: dict[str, list[int]] = {}
        for t in tasks:
            queries_by_model.setdefault(t["model"], []).append(t["query_count"])
        figures["queries_per_model"] = {
            model: sum(q) / len(q) for model, q in sorted(queries_by_model.items())
        }
    hold = raw.get("hold") or {}
    if hold:
        pending = hold["pending"]
        figures["hold"] = {
            "pending": pending,
            "rss_plateau_mb": hold["rss_plateau"] / 2**20,
            "rss_per_pending_kb": (hold["rss_plateau"] - raw["rss_base"]) / pending / 1024
            if pending
            else None,
            "idle_cpu_share": hold["cpu_share"],
            "loop_lag_p99_ms": _ms(hold["loop_lag_p99"]),
            "loop_lag_max_ms": _ms(hold["loop_lag_max"]),
            "window_s": hold["end"] - hold["start"],
        }
    return figures


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def adaptation(
    workload: Workload,
    raw: dict[str, Any],
    tasks: list[dict[str, Any]],
    timeline: list[tuple[float, int]],
) -> dict[str, Any]:
    """W2: the 429 burst after the drop and the time to re-converge after each change.

    Converged = over a 5 s (real-scale) window the accepted create rate is at
    least 90 % of the limit in force and 429s are at most 5 % of the accepted
    creates. Times are real-scale seconds after the change.
    """
    assert workload.drop is not None
    assert workload.create_rate is not None
    k = workload.k
    t0 = raw["t_start"]
    drop_at = t0 + workload.drop[0] / k
    back_at = drop_at + workload.drop[1] / k
    created = sorted(t["created_at"] for t in tasks)
    stamps = [t for t, _ in timeline]
    counts = [c for _, c in timeline]

    def cumulative(at: float) -> int:
        i = bisect.bisect_right(stamps, at) - 1
        return counts[i] if i >= 0 else 0

    def between(a: float, b: float) -> int:
        return cumulative(b) - cumulative(a)

    def accepted(a: float, b: float) -> int:
        return bisect.bisect_left(created, b) - bisect.bisect_left(created, a)

    window = 5.0 / k
    step = 0.25 / k
    last_create = created[-1] if created else t0

    def converge(start: float, limit: float, horizon: float) -> float | None:
        t = start
        while t + window <= horizon:
            got = accepted(t, t + window)
            if got >= 0.9 * limit * window and between(t, t + window) <= 0.05 * got:
                return (t - start) * k
            t += step
        return None

    rate = workload.create_rate * k
    low = accepted(drop_at, back_at) / max(back_at - drop_at, 1e-9)
    return {
        "limits_halved_at_real_s": workload.drop[0],
        "limits_restored_at_real_s": workload.drop[0] + workload.drop[1],
        "rate_limited_first_10s_after_drop": between(drop_at, drop_at + 10.0 / k),
        "rate_limited_while_halved": between(drop_at, back_at),
        "rate_limited_after_restore": between(back_at, last_create + 1.0 / k),
        "reconverge_after_drop_real_s": converge(drop_at, rate / 2, back_at),
        "reconverge_after_restore_real_s": converge(back_at, rate, last_create),
        "create_rate_while_halved_vs_limit": low / (rate / 2),
        "creates_finished_before_restore": last_create < back_at,
    }
