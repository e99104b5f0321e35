"""Rate discovery drawn and tabled: send rate over time against the server's limit.

For every sampled workload (W2, W9) each contender's run is kept while the
harness goes; at the end :func:`write` draws one PNG per contender into
``figures/`` beside the results (``--out``, ``benchmarks/`` by default;
creates on top, queries below; the limit in force as a step line; 429s as
red marks) and writes ``results-rate.md`` beside ``RESULTS.md`` with the
discovery figures (known against unknown limits, time paused, what the
client learned) and links to the pictures. Times and rates are real scale
(compressed seconds times ``k``, rates divided by ``k``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._plan import CONTENDERS, Workload

__all__ = ["keep", "write"]

FIGURES = "figures"  # the folder of pictures, beside the results that link to them
_SOURCES = ("configured", "headers", "429s", "slow start")  # as coded by benchmarks._ruxa
_KEPT: dict[str, dict[str, dict[str, Any]]] = {}
_SMOOTH_S = 1.0  # real-scale seconds each plotted rate averages over


def keep(
    workload: Workload, contender: str, result: dict[str, Any], figures: dict[str, Any]
) -> None:
    """Remember one run's samples and figures for :func:`write`."""
    k = workload.k
    t0 = result["raw"]["t_start"]
    rows = [((s[0] - t0) * k, *s[1:]) for s in result.get("samples", [])]
    created = sorted((t["created_at"] - t0) * k for t in result["tasks"])
    _KEPT.setdefault(workload.key, {})[contender] = {
        "workload": workload,
        "rows": rows,
        "created": created,
        "figures": figures,
        "counters": dict(result["raw"].get("counters", {})),
    }


def _limit_steps(
    workload: Workload, end: float, per_second: float | None
) -> list[tuple[float, float]]:
    if per_second is None:
        return []
    if workload.drop is None:
        return [(0.0, per_second), (end, per_second)]
    start, length = workload.drop
    half = per_second / 2
    return [
        (0.0, per_second),
        (start, per_second),
        (start, half),
        (start + length, half),
        (start + length, per_second),
        (end, per_second),
    ]


def _rates(times: list[float], values: list[float], k: float) -> tuple[list[float], list[float]]:
    """A smoothed per-second rate (real scale) of a cumulative counter."""
    xs: list[float] = []
    ys: list[float] = []
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - _SMOOTH_S:
            j += 1
        if i > j and t > times[j]:
            xs.append(t)
            ys.append((values[i] - values[j]) / (t - times[j]))
    return xs, ys


def _draw(key: str, contender: str, run: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workload: Workload = run["workload"]
    k = workload.k
    rows = run["rows"]
    if not rows:
        return
    times = [r[0] for r in rows]
    end = times[-1]
    fig, axes = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    for axis, (name, sent_i, refused_i, limit) in zip(
        axes,
        (
            ("creates", 1, 3, workload.create_rate),
            ("queries", 2, 4, workload.query_rate),
        ),
        strict=True,
    ):
        sent = [float(r[sent_i]) for r in rows]
        refused = [float(r[refused_i]) for r in rows]
        accepted = [s - f for s, f in zip(sent, refused, strict=True)]
        xs, ys = _rates(times, sent, k)
        axis.plot(xs, ys, color="tab:blue", linewidth=1.0, label="sent / s")
        xs, ys = _rates(times, accepted, k)
        axis.plot(xs, ys, color="tab:green", linewidth=1.0, alpha=0.8, label="admitted / s")
        steps = _limit_steps(workload, end, limit)
        if steps:
            axis.plot(
                [s[0] for s in steps],
                [s[1] for s in steps],
                color="black",
                linestyle="--",
                linewidth=1.0,
                label="server limit",
            )
        marks = [
            (times[i], refused[i] - refused[i - 1])
            for i in range(1, len(rows))
            if refused[i] > refused[i - 1]
        ]
        if marks:
            top = max(ys, default=limit or 1.0)
            axis.scatter(
                [m[0] for m in marks],
                [top * 1.05] * len(marks),
                s=[min(80.0, 12.0 * m[1]) for m in marks],
                color="red",
                marker="v",
                label=f"429s ({int(refused[-1])})",
            )
        axis.set_ylabel(f"{name} per s")
        axis.legend(loc="lower right", fontsize=7)
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("seconds since start (real scale)")
    label = CONTENDERS[contender].label if contender in CONTENDERS else contender
    fig.suptitle(f"{key}: {label}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _paused(seconds: float | None, makespan: float | None, k: float) -> str:
    """Paused seconds (real scale) and their share of the makespan."""
    if seconds is None or not makespan:
        return "-"
    return f"{seconds * k:.1f} ({seconds / makespan:.0%})"


def _table(key: str, runs: dict[str, dict[str, Any]]) -> list[str]:
    known = runs.get("ruxa_async", {}).get("figures", {}).get("makespan_s")
    lines = [
        "| contender | makespan s (real) | ÷ known limits | 429s per 1k | episodes | "
        "paused s (share) | paused create · query (share) | "
        "learned create · query limit (source) | probes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for contender, run in runs.items():
        figures, counters = run["figures"], run["counters"]
        workload: Workload = run["workload"]
        makespan = figures.get("makespan_s")
        ratio = makespan / known if makespan and known else None
        paused = counters.get("paused_s")
        share = paused / makespan if paused is not None and makespan else None
        learned = []
        for kind in ("create", "query"):
            estimate = counters.get(f"{kind}_limit_estimate")
            code = counters.get(f"{kind}_limit_source")
            source = _SOURCES[int(code)] if code is not None else "?"
            learned.append(
                f"{estimate / workload.k:.1f}" if estimate else "-",
            )
            learned[-1] += f" ({source})"
        per_class = " · ".join(
            _paused(counters.get(f"{kind}_paused_s"), makespan, workload.k)
            for kind in ("create", "query")
        )
        probes = int(counters.get("create_probes", 0) + counters.get("query_probes", 0))
        label = CONTENDERS[contender].label if contender in CONTENDERS else contender
        lines.append(
            f"| {label} | {_num(figures.get('makespan_real_s'), 1)} | {_num(ratio)} | "
            f"{_num(figures.get('rate_limited_per_1000'), 1)} | "
            f"{_num(counters.get('rate_episodes'), 0)} | "
            f"{_num(None if paused is None else paused * workload.k, 1)} "
            f"({'-' if share is None else f'{share:.0%}'}) | {per_class} | "
            f"{' · '.join(learned)} | {probes} |"
        )
    adaptation = [
        (contender, run["figures"].get("adaptation"))
        for contender, run in runs.items()
        if run["figures"].get("adaptation")
    ]
    if adaptation:
        lines += [
            "",
            "| contender | re-converged after drop (s) | after restore (s) | "
            "create rate while halved ÷ limit | 429s while halved |",
            "|---|---|---|---|---|",
        ]
        for contender, a in adaptation:
            label = CONTENDERS[contender].label if contender in CONTENDERS else contender
            lines.append(
                f"| {label} | {_num(a['reconverge_after_drop_real_s'], 1)} | "
                f"{_num(a['reconverge_after_restore_real_s'], 1)} | "
                f"{_num(a['create_rate_while_halved_vs_limit'])} | "
                f"{a['rate_limited_while_halved']} |"
            )
    return lines


def write(results: dict[str, Any], out: Path) -> None:
    """Draw the kept runs under ``out/figures/`` and write ``out/results-rate.md`` linking them."""
    if not _KEPT:
        return
    lines = [
        "# Rate discovery",
        "",
        "Known against unknown limits, side by side in one run. Rates and times are real "
        "scale. *Paused* is the time any of the client's 429 gates was closed (the union of "
        "its pauses); with a gate per endpoint class (the default) a closed create gate "
        "leaves queries flowing, so *paused create · query* gives each class's own share. "
        "*Learned* is the client's own estimate of the server's limit at the end, "
        "and where it came from. In each figure the dashed line is the server's limit, blue "
        "what the client sent, green what the server admitted, red marks the 429s.",
        "",
    ]
    for key, runs in _KEPT.items():
        workload: Workload = next(iter(runs.values()))["workload"]
        lines += [f"## {key}: {workload.title}", "", *_table(key, runs), ""]
        for contender, run in runs.items():
            name = f"{key}-{contender}.png"
            _draw(key, contender, run, out / FIGURES / name)
            lines.append(f"![{key} {contender}]({FIGURES}/{name})")
        lines.append("")
    (out / "results-rate.md").write_text("\n".join(lines), encoding="utf-8")
