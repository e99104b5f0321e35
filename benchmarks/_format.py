"""Formatting of benchmark figures: numbers, ratios, labels, markdown tables, console lines."""

from __future__ import annotations

from typing import Any

from . import _plan

__all__ = [
    "BASELINES",
    "NONE",
    "REF",
    "X",
    "finished",
    "integer",
    "label",
    "num",
    "one_line",
    "ratio",
    "ratio_word",
    "table",
]

X = "\u00d7"  # multiplication sign
NONE = "\u2013"  # en dash: no value

REF = _plan.REFERENCE
BASELINES = ("B0", "B1", "B2")


def num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return NONE
    if value != 0 and abs(value) >= 1000:
        return f"{value:,.0f}"
    if value != 0 and abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def integer(value: float | None) -> str:
    return NONE if value is None else f"{value:,.0f}"


def ratio(value: float | None, ref: float | None) -> str:
    if value is None or ref is None or ref == 0:
        return ""
    return f" ({X}{value / ref:.2f})"


def label(key: str) -> str:
    return _plan.CONTENDERS[key].label if key in _plan.CONTENDERS else key


def one_line(f: dict[str, Any]) -> str:
    """A progress line for the console."""
    return (
        f"finished {f['finished']}/{f['jobs']}"
        f"{' (did not finish)' if f['did_not_finish'] else ''}, "
        f"makespan {num(f['makespan_s'])} s, {num(f['requests_per_task'])} req/task, "
        f"{num(f['rate_limited_per_1000'], 1)} 429s/1k, lag p50 {num(f['lag_p50_s'])} s, "
        f"CPU {num(f['cpu_per_task_us'], 0)} us/task, peak RSS {num(f['rss_peak_mb'], 0)} MB, "
        f"server CPU {f['server_cpu_share']:.0%}"
    )


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def finished(f: dict[str, Any]) -> str:
    """``done/jobs``, and whether the run hit its wall cap."""
    text = f"{f['finished']:,}/{f['jobs']:,}"
    if f["did_not_finish"]:
        text += f" **did not finish within {f['wall_cap_s']:.0f} s**"
    return text


def ratio_word(value: float, ref: float) -> str:
    """``value / ref`` as e.g. ``1.23`` and the multiplication sign (``n/a`` without a ref)."""
    return f"{value / ref:.2f}{X}" if ref else "n/a"
