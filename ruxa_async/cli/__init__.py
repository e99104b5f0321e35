"""The ``ruxa-async`` command line, built on the public API and the run engine's entry point.

``ruxa-async run JOBS.jsonl --out DIR`` runs a file of jobs to the end: every
job is journaled in ``DIR/journal.sqlite`` before its create request is sent,
result files are downloaded into ``DIR`` as each task succeeds, and
``DIR/results.jsonl`` gets one line per job. Running the same command again
resumes: finished jobs are skipped, created tasks are re-attached, nothing is
paid for twice. ``--simulate`` does all of it against the built-in simulator.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .. import AuthenticationError, InsufficientCreditsError, RuxaError, ServiceUnavailableError
from .._run import RunFatalError, RunUsageError
from ._common import (
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    PROG,
    CLIError,
    say,
    setup_logging,
)
from ._options import run_options
from ._parser import build_parser

__all__ = [
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "build_parser",
    "main",
    "run_options",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        code: int = args.func(args)
    except CLIError as exc:
        say(f"{PROG}: error: {exc}")
        return exc.code
    except RunUsageError as exc:
        say(f"{PROG}: error: {exc}")
        return EXIT_USAGE
    except (
        AuthenticationError,
        InsufficientCreditsError,
        ServiceUnavailableError,
        RunFatalError,
    ) as exc:
        say(f"{PROG}: error: {exc}")
        return EXIT_FATAL
    except RuxaError as exc:
        say(f"{PROG}: error: {exc}")
        return EXIT_PARTIAL
    except KeyboardInterrupt:
        say(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PARTIAL
    return code
