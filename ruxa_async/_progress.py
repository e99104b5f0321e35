"""Live progress and the final summary of a batch run.

On a terminal, with the optional ``rich`` package, a live panel redrawn a few
times a second; otherwise one plain line every few seconds. Both read the same
:class:`BatchCounters`, which the runner updates as events arrive.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, Literal, Protocol, TextIO

import attrs

__all__ = [
    "BatchCounters",
    "Display",
    "PlainDisplay",
    "make_display",
    "print_summary",
    "rich_available",
]

Mode = Literal["auto", "rich", "plain", "none"]


@attrs.define(kw_only=True)
class BatchCounters:
    """What the batch runner has done so far (mutated by the runner, read by displays).

    ``todo`` is the number of jobs this run has to finish (jobs finished in an
    earlier run, duplicates and invalid jobs excluded).
    """

    total: int = 0
    todo: int = 0
    skipped: int = 0
    duplicates: int = 0
    submitted: int = 0
    reattached: int = 0
    finished: int = 0
    succeeded: int = 0
    failed: int = 0
    errors: int = 0
    invalid: int = 0
    not_submitted: int = 0
    ambiguous: int = 0
    downloads_done: int = 0
    downloads_failed: int = 0
    downloads_running: int = 0
    rate_limited: int = 0
    requests: int = 0
    estimated_credits: float = 0.0
    started: float = attrs.field(factory=time.monotonic)

    @property
    def running(self) -> int:
        """Tasks created or re-attached and not finished yet."""
        return max(0, self.submitted + self.reattached - self._settled_tasks)

    @property
    def _settled_tasks(self) -> int:
        return self.succeeded + self.failed + self.errors

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Jobs finished per second so far."""
        elapsed = self.elapsed
        return self.finished / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every job is finished at the current rate, None when unknown."""
        left = self.todo - self.finished
        if left <= 0:
            return 0.0
        rate = self.rate
        return left / rate if rate > 0 else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def status_line(c: BatchCounters) -> str:
    """One line describing the run so far."""
    failed = c.failed + c.errors + c.invalid + c.not_submitted + c.ambiguous
    line = (
        f"[{_duration(c.elapsed)}] {c.finished}/{c.todo} done: "
        f"{c.submitted} submitted, {c.running} running, {c.succeeded} succeeded, "
        f"{failed} failed | {c.rate:.1f}/s, {c.rate_limited} x 429, ETA {_duration(c.eta)}"
    )
    if c.downloads_done or c.downloads_failed or c.downloads_running:
        line += f" | files {c.downloads_done} saved"
        if c.downloads_running:
            line += f", {c.downloads_running} downloading"
        if c.downloads_failed:
            line += f", {c.downloads_failed} failed"
    return line


class Display(Protocol):
    """A live progress display."""

    def start(self) -> None:
        """Show the display."""

    def refresh(self) -> None:
        """Redraw from the counters (called periodically and on demand)."""

    def stop(self) -> None:
        """Draw a last time and remove the live parts."""


class NoDisplay:
    """No progress output at all."""

    def start(self) -> None:
        """Do nothing."""

    def refresh(self) -> None:
        """Do nothing."""

    def stop(self) -> None:
        """Do nothing."""


class PlainDisplay:
    """A plain status line every ``interval`` seconds, for logs and pipes."""

    def __init__(self, counters: BatchCounters, stream: TextIO, interval: float = 5.0) -> None:
        self._counters = counters
        self._stream = stream
        self._interval = interval
        self._last = 0.0

    def start(self) -> None:
        """Remember the start; the first line comes after ``interval`` seconds."""
        self._last = time.monotonic()

    def refresh(self) -> None:
        """Print a line when ``interval`` seconds have passed since the last one."""
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._write()

    def stop(self) -> None:
        """Print a final line."""
        self._write()

    def _write(self) -> None:
        print(status_line(self._counters), file=self._stream, flush=True)


class RichDisplay:
    """A live rich panel: a progress bar and the counters."""

    def __init__(self, counters: BatchCounters, stream: TextIO) -> None:
        from rich.console import Console
        from rich.live import Live

        self._counters = counters
        self._console = Console(file=stream)
        self._live = Live(
            console=self._console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=True,
        )

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        c = self._counters
        failed = c.failed + c.errors + c.invalid + c.not_submitted + c.ambiguous
        grid = Table.grid(padding=(0, 2))
        grid.add_column()
        grid.add_column()
        bar = ProgressBar(total=max(c.todo, 1), completed=c.finished, width=40)
        grid.add_row(bar, f"{c.finished}/{c.todo} jobs  {_duration(c.elapsed)}")
        grid.add_row(
            f"[bold]submitted[/] {c.submitted}   [bold]running[/] {c.running}   "
            f"[green]succeeded[/] {c.succeeded}   [red]failed[/] {failed}",
            f"{c.rate:.1f} jobs/s  ETA {_duration(c.eta)}",
        )
        files = f"files saved {c.downloads_done}"
        if c.downloads_running:
            files += f", downloading {c.downloads_running}"
        if c.downloads_failed:
            files += f", [red]failed {c.downloads_failed}[/]"
        grid.add_row(files, f"429s {c.rate_limited}  requests {c.requests}")
        return grid

    def start(self) -> None:
        """Start the live panel."""
        self._live.start()
        self.refresh()

    def refresh(self) -> None:
        """Redraw the panel."""
        self._live.update(self._render(), refresh=True)

    def stop(self) -> None:
        """Draw the final state and stop."""
        self.refresh()
        self._live.stop()


def rich_available() -> bool:
    """True when the optional ``rich`` package can be imported."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def make_display(
    mode: Mode, counters: BatchCounters, stream: TextIO | None = None, interval: float = 5.0
) -> Display:
    """The display for ``mode``; ``auto`` picks rich on a terminal when installed, else plain."""
    out = stream if stream is not None else sys.stderr
    if mode == "none":
        return NoDisplay()
    if (mode == "rich" or (mode == "auto" and out.isatty())) and rich_available():
        return RichDisplay(counters, out)
    return PlainDisplay(counters, out, interval)


def print_summary(
    title: str,
    rows: Sequence[tuple[str, str]],
    problems: Sequence[str],
    *,
    stream: TextIO | None = None,
    use_rich: bool | None = None,
) -> None:
    """Print a two-column summary table and a list of problems."""
    out = stream if stream is not None else sys.stdout
    fancy = use_rich if use_rich is not None else (out.isatty() and rich_available())
    if fancy:
        from rich.console import Console
        from rich.table import Table

        console = Console(file=out)
        table = Table(title=title, show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column(justify="right")
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)
        for problem in problems:
            console.print(problem, markup=False, highlight=False)
        return
    width = max((len(name) for name, _ in rows), default=0)
    print(title, file=out)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", file=out)
    for problem in problems:
        print(problem, file=out)
    out.flush()
