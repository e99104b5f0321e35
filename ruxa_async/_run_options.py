"""What one ``ruxa-async run`` is asked to do, already derived; and how the run ends.

The command line parses its arguments into one :class:`RunOptions`; the run
engine reads nothing else. Adding a setting means adding a field here (with a
default) and one line in the CLI that fills it.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import attrs

from ._config import OutagePolicy, PollPolicy, RateLimits
from ._errors import RuxaError

if TYPE_CHECKING:
    from .testing import SimConfig

__all__ = ["ProgressMode", "RunEnd", "RunError", "RunOptions", "RunUsageError"]

ProgressMode = Literal["auto", "rich", "plain", "none"]


class RunError(RuxaError):
    """A batch run cannot start or go on; the message says what to do."""


class RunUsageError(RunError):
    """The run was asked for something it cannot do (a changed job, a journal of another
    endpoint, an unwritable folder); nothing was sent."""


class RunEnd(enum.Enum):
    """How a run ended (the CLI turns it into an exit status)."""

    COMPLETE = "complete"
    """Every job succeeded and its files are on disk."""
    PARTIAL = "partial"
    """Some job failed, was invalid, not submitted, ambiguous, pending or lacks a file."""
    STOPPED = "stopped"
    """Submitting stopped for the account (a rejected key, no credits) or the journal failed."""
    INTERRUPTED = "interrupted"
    """A signal stopped the run; the journal is consistent."""


@attrs.frozen(kw_only=True)
class RunOptions:
    """Everything one run needs, validated and derived (see ``ruxa-async run --help``).

    ``simulator`` set means: run against an in-process simulator with that
    configuration (``api_key`` and ``base_url`` are then ignored).
    ``callback_bind`` is the ``(host, port)`` to receive callbacks on.
    ``redis_url`` names the Redis a fleet shares its budget through (``--redis``).
    ``outage`` bounds how long an unreachable service is waited for (``--max-outage``).
    """

    jobs: Path
    out: Path
    journal: Path
    api_key: str | None = attrs.field(default=None, repr=False)
    base_url: str = ""
    redis_url: str | None = attrs.field(default=None, repr=False)
    simulator: SimConfig | None = None
    default_model: str | None = None
    dedupe: bool = True
    resubmit_ambiguous: bool = False
    resubmit_lost: bool = False
    max_credits: float | None = None
    rate_limits: RateLimits = attrs.field(factory=RateLimits)
    poll: PollPolicy = attrs.field(factory=PollPolicy)
    outage: OutagePolicy = attrs.field(factory=OutagePolicy)
    max_pending: int = 1000
    timeout: float | None = None
    callback_bind: tuple[str, int] | None = None
    callback_public_url: str | None = None
    download: bool = True
    downloads: int = 8
    download_attempts: int = 4
    download_timeout: float = 300.0
    progress: ProgressMode = "auto"
    interval: float = 5.0
    gallery: bool = True

    @property
    def simulate(self) -> bool:
        """True when the run goes to the built-in simulator."""
        return self.simulator is not None

    @property
    def endpoint(self) -> str:
        """What the journal records as the service its tasks live on."""
        return "simulator" if self.simulator is not None else self.base_url

    def redact(self, text: str) -> str:
        """``text`` with the API key masked."""
        return text.replace(self.api_key, "***") if self.api_key else text
