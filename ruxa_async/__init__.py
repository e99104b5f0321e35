"""ruxa_async: an asyncio-native SDK and batch runner for the Ruxa AI generation API."""

from __future__ import annotations

from ._batch import AsCompleted, ProgressEvent
from ._client import CallbackReceiver, ClientStatistics, RuxaClient
from ._config import (
    DEFAULT_BASE_URL,
    OutagePolicy,
    PollPolicy,
    RateLimits,
    RetryPolicy,
    Timeouts,
)
from ._coordinator import (
    AmbiguousCreateError,
    Claim,
    Coordinator,
    CoordinatorStatistics,
    CreditBudgetExceededError,
    LocalCoordinator,
    Reservation,
)
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    CallbackVerificationError,
    ClientClosedError,
    ClientNotStartedError,
    ConfigurationError,
    DownloadError,
    InsufficientCreditsError,
    InvalidInputError,
    MalformedResponseError,
    NotFoundError,
    NotSubmittedError,
    RateLimitError,
    RuxaError,
    ServerError,
    ServiceUnavailableError,
    TaskFailedError,
    TaskLostError,
    TaskTimeoutError,
    ValidationError,
)
from ._handles import TaskHandle
from ._limiter import RateStatistics
from ._models import (
    BatchReport,
    Job,
    JobOutcome,
    OutcomeStatus,
    RequestEvent,
    TaskInfo,
    TaskState,
)
from ._outage import OutageCoordinator, OutageGate, OutageStatistics
from ._scheduler import SchedulerStatistics
from ._sync import SyncRuxaClient, SyncTaskHandle
from ._sync_batch import SyncAsCompleted
from ._version import __version__

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AmbiguousCreateError",
    "AsCompleted",
    "AuthenticationError",
    "BatchReport",
    "CallbackReceiver",
    "CallbackVerificationError",
    "Claim",
    "ClientClosedError",
    "ClientNotStartedError",
    "ClientStatistics",
    "ConfigurationError",
    "Coordinator",
    "CoordinatorStatistics",
    "CreditBudgetExceededError",
    "DownloadError",
    "InsufficientCreditsError",
    "InvalidInputError",
    "Job",
    "JobOutcome",
    "LocalCoordinator",
    "MalformedResponseError",
    "NotFoundError",
    "NotSubmittedError",
    "OutageCoordinator",
    "OutageGate",
    "OutagePolicy",
    "OutageStatistics",
    "OutcomeStatus",
    "PollPolicy",
    "ProgressEvent",
    "RateLimitError",
    "RateLimits",
    "RateStatistics",
    "RequestEvent",
    "Reservation",
    "RetryPolicy",
    "RuxaClient",
    "RuxaError",
    "SchedulerStatistics",
    "ServerError",
    "ServiceUnavailableError",
    "SyncAsCompleted",
    "SyncRuxaClient",
    "SyncTaskHandle",
    "TaskFailedError",
    "TaskHandle",
    "TaskInfo",
    "TaskLostError",
    "TaskState",
    "TaskTimeoutError",
    "Timeouts",
    "ValidationError",
    "__version__",
]


def _claim_public_names() -> None:
    """Public classes and functions say ``ruxa_async`` is their home, as users import them."""
    for name in __all__:
        value = globals()[name]
        if isinstance(value, type) or callable(value):
            value.__module__ = __name__


_claim_public_names()
