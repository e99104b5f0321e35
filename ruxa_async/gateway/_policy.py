"""Policy decisions that need no state: windows, request rates, models, inputs, callback URLs.

Each check returns None when the request may go on, or a :class:`Denial`
carrying the Ruxa code, the reason (a metrics label) and a message that says
what to do.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from json.encoder import encode_basestring
from typing import Any
from urllib.parse import urlsplit

import attrs

from .. import catalog
from .._errors import InvalidInputError
from .._jsoncodec import json_encoder
from ._config import Policy, Window

__all__ = [
    "Denial",
    "RateBuckets",
    "Reply",
    "check_callback_url",
    "check_request",
    "estimate",
    "window_bounds",
]

_MAX_URL = 2048
_dumps = json_encoder(ensure_ascii=False, separators=(",", ":"))
_string = encode_basestring  # a str as _dumps writes it (ensure_ascii=False)
_CREATED = b'{"code":200,"message":"success","data":{"taskId":'
_URL_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space, no control characters


@attrs.frozen
class Denial:
    """A refused request: the Ruxa ``code``, a ``reason`` label and the message for the caller."""

    code: int
    reason: str
    message: str
    retry_after: float | None = None


@attrs.frozen
class Reply:
    """What to answer: the Ruxa ``code``, ``message``, ``data`` and an optional Retry-After.

    A reply given again (a task that did not change since its owner last asked) is
    encoded once: :meth:`body` keeps its bytes. ``data`` may then be shared between
    answers: read it, do not change it.
    """

    code: int
    message: str
    data: Any = None
    retry_after: float | None = None
    _body: bytes | None = attrs.field(default=None, init=False, eq=False, repr=False)

    @classmethod
    def of(cls, denial: Denial) -> Reply:
        """The answer to a refusal."""
        return cls(denial.code, denial.message, None, denial.retry_after)

    @classmethod
    def created(cls, task_id: str) -> Reply:
        """The answer to a create: ``data`` is ``{"taskId": task_id}`` (its bytes put together
        around the id, the same as :meth:`body` would encode them)."""
        reply = cls(200, "success", {"taskId": task_id})
        object.__setattr__(reply, "_body", b"%s%s}}" % (_CREATED, _string(task_id).encode()))
        return reply

    def body(self) -> bytes:
        """The Ruxa envelope ``{code, message, data}`` as JSON (encoded once per reply)."""
        body = self._body
        if body is None:
            body = envelope_bytes(self.code, self.message, self.data)
            object.__setattr__(self, "_body", body)  # a cache of the frozen fields' encoding
        return body


def envelope_bytes(code: int, message: str, data: Any = None) -> bytes:
    """The Ruxa envelope ``{code, message, data}`` as compact UTF-8 JSON."""
    return _dumps({"code": code, "message": message, "data": data}).encode()


def window_bounds(window: Window, now: float) -> tuple[str, float]:
    """The budget period containing ``now``: its label and its end (Unix seconds, UTC).

    Days start at 00:00 UTC, weeks on Monday, months on the 1st.
    """
    return _bounds(window, math.floor(now / _DAY))


_DAY = 86_400


@functools.lru_cache(maxsize=64)
def _bounds(window: Window, day_number: int) -> tuple[str, float]:
    """``window_bounds`` for the UTC day ``day_number`` (days since 1970-01-01): every
    period boundary is a midnight, so the day decides (memoised: creates ask every time)."""
    day = datetime.fromtimestamp(day_number * _DAY, tz=timezone.utc)
    if window == "day":
        return day.strftime("%Y-%m-%d"), (day + timedelta(days=1)).timestamp()
    if window == "week":
        start = day - timedelta(days=day.weekday())
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}", (start + timedelta(days=7)).timestamp()
    start = day.replace(day=1)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else (start.replace(month=start.month + 1))
    )
    return start.strftime("%Y-%m"), end.timestamp()


class RateBuckets:
    """One token bucket per user; idle buckets are forgotten so the table stays small."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}

    def take(self, user: str, policy: Policy) -> Denial | None:
        """Spend one request of ``user``'s rate; a Denial (429, Retry-After) when none is left."""
        rate = policy.requests_per_second
        if rate is None:
            return None
        now = self._clock()
        bucket = self._buckets.get(user)
        if bucket is None:
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            bucket = self._buckets[user] = [float(policy.burst), now]
        tokens = min(float(policy.burst), bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return None
        bucket[0] = tokens
        wait = (1.0 - tokens) / rate
        return Denial(
            429,
            "rate",
            f"too many requests: your limit is {rate:g} per second; retry after the pause",
            retry_after=wait,
        )


def estimate(model: str, input: Mapping[str, Any], prices: Mapping[str, float]) -> float | None:
    """The credits reserved for one task: the config's price, else the catalogue's estimate."""
    return catalog.estimate_cost(model, input, prices=prices)


def check_request(policy: Policy, model: str, input: Mapping[str, Any]) -> Denial | None:
    """The model allow-list (403) and input rules (422) of ``policy`` and the catalogue."""
    if not policy.allows(model):
        return Denial(403, "model", f"model {model!r} is not allowed for you on this gateway")
    try:
        catalog.validate_input(model, input)
    except InvalidInputError as exc:
        return Denial(422, "input", str(exc))
    limit = policy.max_prompt_chars
    prompt = input.get("prompt")
    if limit is not None and isinstance(prompt, str) and len(prompt) > limit:
        return Denial(
            422, "input", f"input.prompt is {len(prompt)} characters; this gateway allows {limit}"
        )
    return None


def _private(host: str) -> bool:
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return not addr.is_global


def check_callback_url(url: object, *, allow_private: bool) -> Denial | None:
    """A user's ``callBackUrl``: absolute http(s), printable ASCII, no credentials, public host.

    Refuses anything that could inject a header or a request line (CR, LF,
    spaces, control characters), other schemes, and (unless ``allow_private``)
    loopback and private-network hosts.
    """
    if not isinstance(url, str):
        return Denial(422, "callback_url", "callBackUrl must be a string")
    if len(url) > _MAX_URL or not _URL_CHARS.fullmatch(url):
        return Denial(
            422,
            "callback_url",
            f"callBackUrl must be printable ASCII without spaces, at most {_MAX_URL} characters",
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return Denial(422, "callback_url", "callBackUrl is not a valid URL")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Denial(
            422, "callback_url", "callBackUrl must be an absolute http:// or https:// URL"
        )
    if parts.username is not None or parts.password is not None:
        return Denial(422, "callback_url", "callBackUrl must not carry credentials")
    if port == 0:
        return Denial(422, "callback_url", "callBackUrl has an invalid port")
    if not allow_private and _private(parts.hostname):
        return Denial(422, "callback_url", "callBackUrl points at a private or loopback address")
    return None


def retry_after_header(seconds: float) -> str:
    """Whole seconds for a ``Retry-After`` header, at least 1."""
    return str(max(1, math.ceil(seconds)))
