"""The exception tree, and the one table from Ruxa codes to exception classes.

Every error the SDK raises derives from :class:`RuxaError`. Status errors are
identical whether the service signalled them with an HTTP status or with an
HTTP 200 reply whose envelope carries the code: both paths go through
:func:`status_error`.
"""

from __future__ import annotations

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "CallbackVerificationError",
    "ClientClosedError",
    "ClientNotStartedError",
    "ConfigurationError",
    "DownloadError",
    "InsufficientCreditsError",
    "InvalidInputError",
    "MalformedResponseError",
    "NotFoundError",
    "NotSubmittedError",
    "RateLimitError",
    "RuxaError",
    "ServerError",
    "ServiceUnavailableError",
    "TaskFailedError",
    "TaskLostError",
    "TaskTimeoutError",
    "ValidationError",
    "status_error",
]

_BODY_EXCERPT = 500


class RuxaError(Exception):
    """Root of every error raised by ruxa_async."""


class APIConnectionError(RuxaError):
    """The request did not get a reply: connection refused, reset or dropped.

    ``request_sent`` is False only when the SDK knows the request never reached
    the server (the connection could not be opened); then a retry can never
    create a task twice.
    """

    def __init__(self, message: str, *, request_sent: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.request_sent = request_sent


class APITimeoutError(APIConnectionError):
    """The request timed out before a reply arrived."""


class ServiceUnavailableError(APIConnectionError):
    """The service could not be reached for longer than allowed; the message names URL and cause.

    Raised once an outage outlasts ``OutagePolicy.max_outage`` (or
    ``first_contact`` when the service never answered, as with a wrong base
    URL), or the caller's own timeout. A batch stops submitting on it; tasks
    already created stay on the service: run again later to resume.
    ``request_sent`` is False unless an earlier attempt of the same call may
    have reached the service.
    """

    def __init__(
        self,
        *,
        url: str,
        cause: str,
        down_seconds: float,
        call_deadline: bool = False,
        request_sent: bool = False,
    ) -> None:
        self.url = url
        self.cause = cause
        self.down_seconds = down_seconds
        how_long = f"{down_seconds:.0f} s"
        if call_deadline:
            how_long += " (the call's timeout)"
        message = (
            f"cannot reach the Ruxa service at {url} for {how_long}: {cause or 'no reply'}. "
            "Check the base URL (RUXA_BASE_URL) and the network; run again later to resume"
        )
        super().__init__(message, request_sent=request_sent)


class APIStatusError(RuxaError):
    """The service answered with an error code (by HTTP status or in the envelope).

    Attributes:
        code: the Ruxa code (envelope ``code``, else the HTTP status).
        message: the service's own text (``message`` or ``msg``), possibly empty.
        http_status: the HTTP status of the reply.
        body: an excerpt of the raw reply body, for diagnostics.
        retry_after: seconds from a ``Retry-After`` header, when one was sent.
    """

    hint = ""

    def __init__(
        self,
        message: str,
        *,
        code: int | None,
        http_status: int,
        body: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message
        self.code = code
        self.http_status = http_status
        self.body = body[:_BODY_EXCERPT] if body is not None else None
        self.retry_after = retry_after
        super().__init__(self._describe())

    def _describe(self) -> str:
        text = f"Ruxa API error {self.code if self.code is not None else self.http_status}"
        if self.message:
            text += f": {self.message}"
        if self.code is not None and self.http_status != self.code:
            text += f" (HTTP {self.http_status})"
        if self.hint:
            text += f". {self.hint}"
        return text


class AuthenticationError(APIStatusError):
    """401: the API key is missing, wrong or revoked."""

    hint = "Check the API key (RUXA_API_KEY or api_key=); it is never retried"


class InsufficientCreditsError(APIStatusError):
    """402: the account has not enough credits for this generation."""

    hint = "Top up the account's credits; tasks already created keep running"


class NotFoundError(APIStatusError):
    """404 (or the 'recordInfo is null' 422 dialect): no such task or endpoint."""

    hint = "Check the task id and the base URL"


class TaskLostError(NotFoundError):
    """A task the service no longer knows (404 or 'recordInfo is null' on re-attach).

    Its record may have passed the service's retention window. ``task_id``
    names it; nothing more can be learnt about it. Send the job again on
    purpose if its result is still wanted (``ruxa-async run --resubmit-lost``).
    """

    hint = "The service no longer knows this task; create it again if its result is wanted"

    def __init__(self, task_id: str, cause: NotFoundError) -> None:
        self.task_id = task_id
        super().__init__(
            f"task {task_id} is unknown to the service ({cause.message or 'not found'})",
            code=cause.code,
            http_status=cause.http_status,
            body=cause.body,
        )


class ValidationError(APIStatusError):
    """422: the request's parameters failed the service's validation."""

    hint = "Fix the model name or input fields; the request is not retried"


class RateLimitError(APIStatusError):
    """429: too many requests; retried automatically after the advised pause."""


class ServerError(APIStatusError):
    """5xx: the service failed to handle the request."""


class MalformedResponseError(RuxaError):
    """The reply could not be understood: not JSON, or JSON of the wrong shape."""

    def __init__(self, message: str, *, http_status: int | None = None, body: str | None = None):
        self.http_status = http_status
        self.body = body[:_BODY_EXCERPT] if body is not None else None
        super().__init__(message)


class InvalidInputError(RuxaError, ValueError):
    """A job's input fails the model catalogue's rules, found before anything was sent.

    ``field`` names the offending input field (or ``"model"``).
    """

    def __init__(self, message: str, *, model: str, field: str) -> None:
        self.model = model
        self.field = field
        super().__init__(message)


class TaskFailedError(RuxaError):
    """The task reached the ``fail`` state on the service."""

    def __init__(
        self,
        task_id: str,
        fail_code: str | None,
        fail_msg: str | None,
        info: object = None,
    ) -> None:
        self.task_id = task_id
        self.fail_code = fail_code
        self.fail_msg = fail_msg
        self.info = info
        detail = fail_msg or "no reason given"
        if fail_code:
            detail = f"{detail} (failCode {fail_code})"
        super().__init__(f"task {task_id} failed: {detail}")


class TaskTimeoutError(RuxaError, TimeoutError):
    """Waiting for a task took longer than the allowed timeout.

    The generation may still finish on the service: re-attach later with
    ``client.wait(task_id)``.
    """

    def __init__(self, task_id: str | None, timeout: float | None) -> None:
        self.task_id = task_id
        self.timeout = timeout
        which = f"task {task_id}" if task_id else "the task"
        after = f" after {timeout:g} s" if timeout is not None else ""
        super().__init__(
            f"gave up waiting for {which}{after}; it may still finish on the service "
            "(re-attach with client.wait(task_id))"
        )


class ConfigurationError(RuxaError, ValueError):
    """The client was set up wrongly (for example, no API key anywhere)."""


class DownloadError(RuxaError):
    """A result file could not be downloaded.

    ``http_status`` is the last HTTP status seen (None after a connection
    error); ``retryable`` says whether a later attempt may work (a transient
    failure that ran out of attempts) or not (the URL is refused or expired).
    """

    def __init__(
        self, message: str, *, url: str, http_status: int | None = None, retryable: bool = False
    ) -> None:
        self.url = url
        self.http_status = http_status
        self.retryable = retryable
        super().__init__(message)


class ClientClosedError(RuxaError):
    """The client is closed (or closing): a task was still being waited for, or a call came late.

    A closed client cannot be reopened: create a new ``RuxaClient``; tasks
    already created can be re-attached with ``client.wait(task_id)``.
    """


class ClientNotStartedError(RuxaError, RuntimeError):
    """A call needs the service but the client was never opened.

    Use ``async with RuxaClient(...) as client:`` or ``await client.start()``.
    """


class NotSubmittedError(RuxaError):
    """The batch stopped submitting before this job was sent; nothing was spent on it.

    ``reason`` says why (no credits, a bad key, the spend cap, the batch deadline);
    ``cause`` is the error that stopped submission, when there was one.
    """

    def __init__(self, reason: str, cause: BaseException | None = None) -> None:
        self.reason = reason
        self.cause = cause
        super().__init__(f"job not submitted: {reason}")


class CallbackVerificationError(RuxaError):
    """A callback request failed verification (token, signature, timestamp or body).

    ``reason`` is ``"body"`` (malformed: answer 400), ``"too_large"`` (413) or
    ``"signature"`` (a missing or wrong signature or a stale timestamp: 401);
    ``http_status`` is the status a receiver should answer with.
    """

    def __init__(self, message: str, *, reason: str = "body", http_status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.http_status = http_status


_BY_CODE: dict[int, type[APIStatusError]] = {
    401: AuthenticationError,
    402: InsufficientCreditsError,
    404: NotFoundError,
    422: ValidationError,
    429: RateLimitError,
}


def status_error(
    code: int | None,
    message: str,
    *,
    http_status: int,
    body: str | None = None,
    retry_after: float | None = None,
) -> APIStatusError:
    """Build the exception for a Ruxa error code, picked from one table."""
    effective = code if code is not None else http_status
    cls = _BY_CODE.get(effective)
    if cls is None:
        cls = ServerError if 500 <= effective <= 599 else APIStatusError
    if cls is ValidationError and "recordinfo is null" in message.lower():
        cls = NotFoundError
    return cls(message, code=code, http_status=http_status, body=body, retry_after=retry_after)
