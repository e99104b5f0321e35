"""The ``ruxa-async`` argument parser."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .. import (
    __version__,
)

if TYPE_CHECKING:
    pass

from ._commands import cmd_models, cmd_run, cmd_simulate, cmd_status, cmd_wait
from ._common import (
    EXIT_CODES,
    PROG,
)

__all__ = ["build_parser"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``ruxa-async`` argument parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run Ruxa AI image and video generations in bulk, and inspect tasks.",
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more log output (-vv: debug)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run a JSONL file of jobs, download the results, resume after a crash",
        description=(
            "Run every job of JOBS (one JSON object per line: "
            '{"id": "fox-1", "model": "google/nano-banana", "input": {"prompt": "a fox"}}), '
            "download every result file into --out and write OUT/results.jsonl. "
            "Running the same command again resumes without paying twice."
        ),
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    run.add_argument("jobs", type=Path, metavar="JOBS.jsonl", help="the jobs file")
    run.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    run.add_argument("--model", help="model for lines that do not name one")
    run.add_argument(
        "--simulate",
        action="store_true",
        help="run against the built-in simulator: no key, no network, nothing paid",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the file, read the journal and show what a run would do and what the "
        "jobs it would send cost; send nothing",
    )
    run.add_argument("--journal", type=Path, metavar="PATH", help="default: OUT/journal.sqlite")
    run.add_argument(
        "--resubmit-ambiguous",
        action="store_true",
        help="send again the jobs whose earlier create may or may not have created a task",
    )
    run.add_argument(
        "--resubmit-lost",
        action="store_true",
        help="send again the jobs whose task the service no longer knows (recorded as lost)",
    )
    run.add_argument(
        "--no-dedupe", action="store_true", help="create identical jobs once each, not once"
    )
    run.add_argument(
        "--max-credits",
        type=_non_negative_float,
        metavar="N",
        help="stop submitting once the estimated spend of this run would pass N credits",
    )
    run.add_argument("--base-url", metavar="URL", help="API base URL (default: RUXA_BASE_URL)")
    run.add_argument(
        "--redis",
        metavar="URL",
        help="share rate limits, 429 pauses and credits with a fleet through this Redis",
    )
    tuning = run.add_argument_group("rates and timeouts")
    tuning.add_argument(
        "--concurrency", type=_positive_int, default=64, metavar="N", help="max requests in flight"
    )
    tuning.add_argument(
        "--max-pending",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="max tasks created and not yet finished",
    )
    tuning.add_argument(
        "--create-rate", type=_positive_float, metavar="R", help="max creates per second"
    )
    tuning.add_argument(
        "--query-rate", type=_positive_float, metavar="R", help="max status queries per second"
    )
    tuning.add_argument(
        "--first-check", type=_positive_float, metavar="S", help="first status check after S s"
    )
    tuning.add_argument(
        "--poll-min", type=_positive_float, metavar="S", help="shortest interval between checks"
    )
    tuning.add_argument(
        "--poll-max", type=_positive_float, metavar="S", help="longest interval between checks"
    )
    tuning.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="give up waiting after S seconds (unfinished tasks are re-attached next run)",
    )
    tuning.add_argument(
        "--max-outage",
        type=_positive_float,
        metavar="S",
        help="stop (exit 3, resume later) when the service is unreachable for S s (default 300)",
    )
    files = run.add_argument_group("downloads")
    files.add_argument("--no-download", action="store_true", help="only record result URLs")
    files.add_argument(
        "--downloads", type=_positive_int, default=8, metavar="N", help="parallel downloads"
    )
    files.add_argument("--download-attempts", type=_positive_int, default=4, metavar="N")
    files.add_argument("--download-timeout", type=_positive_float, default=300.0, metavar="S")
    files.add_argument(
        "--no-gallery", action="store_true", help="do not write OUT/index.html (a contact sheet)"
    )
    hooks = run.add_argument_group("callbacks (instead of polling)")
    hooks.add_argument(
        "--callback-bind", metavar="HOST:PORT", help="listen for Ruxa's callbacks here"
    )
    hooks.add_argument(
        "--callback-public-url",
        metavar="URL",
        help="the public base URL at which Ruxa reaches --callback-bind",
    )
    shown = run.add_argument_group("output")
    shown.add_argument(
        "--progress",
        choices=("auto", "rich", "plain", "none"),
        default="auto",
        help="auto: a live panel on a terminal (with rich), plain lines otherwise",
    )
    shown.add_argument(
        "--interval",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds between plain progress lines",
    )
    run.set_defaults(func=cmd_run)

    status = sub.add_parser(
        "status", parents=[common], help="show a task's current state", epilog=EXIT_CODES
    )
    status.add_argument("task_id", metavar="TASK_ID")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--base-url", metavar="URL")
    status.set_defaults(func=cmd_status)

    wait = sub.add_parser(
        "wait", parents=[common], help="wait for a task to finish", epilog=EXIT_CODES
    )
    wait.add_argument("task_id", metavar="TASK_ID")
    wait.add_argument("--timeout", type=_positive_float, metavar="S")
    wait.add_argument("--out", type=Path, metavar="DIR", help="download the results here")
    wait.add_argument("--json", action="store_true", help="print JSON")
    wait.add_argument("--base-url", metavar="URL")
    wait.set_defaults(func=cmd_wait)

    sim = sub.add_parser(
        "simulate",
        parents=[common],
        help="serve the Ruxa simulator locally until interrupted",
        epilog=EXIT_CODES,
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    sim.add_argument("--api-key", help="the key clients must send (default sk-simulator-key)")
    sim.add_argument("--credits", type=_non_negative_float, help="starting balance")
    sim.add_argument("--create-rate", type=_positive_float, help="creates per second allowed")
    sim.add_argument("--median-seconds", type=_non_negative_float, help="median task duration")
    sim.add_argument("--fail-rate", type=_non_negative_float, help="share of tasks that fail")
    sim.add_argument("--result-ttl", type=_non_negative_float, help="result files expire after S")
    sim.add_argument("--seed", type=int)
    sim.set_defaults(func=cmd_simulate)

    models = sub.add_parser(
        "models", parents=[common], help="list the known models, their inputs and estimated prices"
    )
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(func=cmd_models)
    from ..gateway._cli import add_commands as add_gateway_commands

    add_gateway_commands(sub, parents=[common])
    return parser
