"""What every ``ruxa-async`` command shares: exit codes, one-line errors, secrets kept out."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from .. import (
    DEFAULT_BASE_URL,
)
from .._run import (
    RunEnd,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger("ruxa_async")

PROG = "ruxa-async"
EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_FATAL = 3
EXIT_INTERRUPTED = 130

EXITS = {
    RunEnd.COMPLETE: EXIT_OK,
    RunEnd.PARTIAL: EXIT_PARTIAL,
    RunEnd.STOPPED: EXIT_FATAL,
    RunEnd.INTERRUPTED: EXIT_INTERRUPTED,
}

EXIT_CODES = """\
exit status:
  0    every job succeeded and its files are on disk
  1    partial failure: some jobs failed, were invalid, were not submitted,
       are ambiguous or still pending, or a file could not be downloaded
  2    bad input or usage: a missing or malformed jobs file (nothing is sent),
       an unwritable output folder, RUXA_API_KEY not set, a job changed since
       the journal recorded it
  3    fatal: the API key was rejected (401), the account ran out of credits
       (402), the service could not be reached (wrong RUXA_BASE_URL, or an
       outage longer than the outage policy allows), or the journal could not
       be written
  130  interrupted; run the same command again to resume

The API key is read from RUXA_API_KEY only (RUXA_BASE_URL sets the API URL).
"""


class CLIError(Exception):
    """A problem that ends a command with a one-line message and an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class StderrHandler(logging.Handler):
    """Log lines to whatever ``sys.stderr`` is now (rich's live display redirects it)."""

    def __init__(self, secrets: set[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(redact(self.format(record), self.secrets) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            self.handleError(record)


SECRETS: set[str] = set()


def redact(text: str, secrets: set[str]) -> str:
    for value in secrets:
        text = text.replace(value, "***")
    return text


def say(message: str) -> None:
    print(redact(message, SECRETS), file=sys.stderr, flush=True)


def setup_logging(verbosity: int) -> None:
    logger = logging.getLogger("ruxa_async")
    if any(isinstance(h, StderrHandler) for h in logger.handlers):
        return
    handler = StderrHandler(SECRETS)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(
        logging.DEBUG if verbosity >= 2 else logging.INFO if verbosity == 1 else logging.WARNING
    )
    logger.propagate = False


def api_key() -> str:
    key = os.environ.get("RUXA_API_KEY", "").strip()
    if not key:
        raise CLIError(
            "RUXA_API_KEY is not set: export your Ruxa API key "
            "(or add --simulate to try the built-in simulator)"
        )
    SECRETS.add(key)
    return key


def base_url(args: argparse.Namespace) -> str:
    url: str = args.base_url or os.environ.get("RUXA_BASE_URL") or DEFAULT_BASE_URL
    return url.rstrip("/")


__all__ = [
    "EXITS",
    "EXIT_CODES",
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "PROG",
    "CLIError",
    "api_key",
    "base_url",
    "say",
    "setup_logging",
]
