"""ruxa_async: an asyncio-native SDK and batch runner for the Ruxa AI generation API."""

from __future__ import annotations

from ._config import DEFAULT_BASE_URL, PollPolicy, RateLimits, RetryPolicy, Timeouts
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    CallbackVerificationError,
    ClientClosedError,
    InsufficientCreditsError,
    InvalidInputError,
    MalformedResponseError,
    NotFoundError,
    NotSubmittedError,
    RateLimitError,
    RuxaError,
    ServerError,
    TaskFailedError,
    TaskTimeoutError,
    ValidationError,
)
from ._models import BatchReport, Job, JobOutcome, OutcomeStatus, TaskInfo, TaskState

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BatchReport",
    "CallbackVerificationError",
    "ClientClosedError",
    "InsufficientCreditsError",
    "InvalidInputError",
    "Job",
    "JobOutcome",
    "MalformedResponseError",
    "NotFoundError",
    "NotSubmittedError",
    "OutcomeStatus",
    "PollPolicy",
    "RateLimitError",
    "RateLimits",
    "RetryPolicy",
    "RuxaError",
    "ServerError",
    "TaskFailedError",
    "TaskInfo",
    "TaskState",
    "TaskTimeoutError",
    "Timeouts",
    "ValidationError",
    "__version__",
]
