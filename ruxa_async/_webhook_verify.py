"""Callback verification and parsing: pure functions over a raw body and its headers.

No I/O and no web framework: :func:`parse_callback_request` turns bytes and a
header mapping into a :class:`TaskInfo` or a :class:`CallbackVerificationError`;
:func:`verify_callback` checks kie.ai's HMAC signature. Public through
:mod:`ruxa_async.webhooks`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Mapping

from . import _wire
from ._errors import CallbackVerificationError, ConfigurationError, MalformedResponseError
from ._models import TaskInfo

__all__ = [
    "DEFAULT_MAX_BODY",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "check_options",
    "parse_callback_request",
    "utf8",
    "verify_callback",
]

DEFAULT_MAX_BODY = 256 * 1024
"""The largest callback body accepted, in bytes (kie's payloads are about 1 KiB)."""

TIMESTAMP_HEADER = "X-Webhook-Timestamp"
"""kie.ai's header carrying the signing time, in Unix seconds."""
SIGNATURE_HEADER = "X-Webhook-Signature"
"""kie.ai's header carrying base64(HMAC-SHA256(key, f"{taskId}.{timestamp}"))."""

_TIMESTAMP = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")


def _bad_body(message: str) -> CallbackVerificationError:
    return CallbackVerificationError(message, reason="body", http_status=400)


def _bad_signature(message: str) -> CallbackVerificationError:
    return CallbackVerificationError(message, reason="signature", http_status=401)


def utf8(text: str) -> bytes:
    """``text`` as UTF-8, lone surrogates kept (a hostile header must not raise)."""
    return text.encode("utf-8", "surrogatepass")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value, matched case-insensitively (plain dicts from other frameworks)."""
    value = headers.get(name)
    if value is None:
        wanted = name.lower()
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == wanted:
                value = candidate
                break
    return value if isinstance(value, str) else None


def _load(body: bytes, max_body: int) -> TaskInfo:
    """Size limit, JSON, then the wire parser; every failure is a CallbackVerificationError."""
    if len(body) > max_body:
        raise CallbackVerificationError(
            f"callback body of {len(body)} bytes exceeds the {max_body}-byte limit",
            reason="too_large",
            http_status=413,
        )
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise _bad_body("the callback body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _bad_body("the callback body is not a JSON object")
    try:
        return _wire.parse_callback(obj)
    except MalformedResponseError as exc:
        raise _bad_body(str(exc)) from exc
    except (OverflowError, RecursionError) as exc:
        # _wire._timestamp lets OverflowError out for huge integer times; see the report.
        raise _bad_body("the callback body holds an out-of-range value") from exc


def _check_signature(
    task_id: str,
    headers: Mapping[str, str],
    *,
    hmac_key: str,
    tolerance: float,
    now: float | None,
) -> None:
    stamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if stamp is None or signature is None:
        raise _bad_signature(f"the callback lacks {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}")
    stamp = stamp.strip()
    if not _TIMESTAMP.fullmatch(stamp):
        raise _bad_signature(f"{TIMESTAMP_HEADER} is not a Unix time in seconds")
    current = time.time() if now is None else now
    if abs(current - float(stamp)) > tolerance:
        raise _bad_signature(
            f"{TIMESTAMP_HEADER} is more than {tolerance:g} s away from now (replayed or stale)"
        )
    digest = hmac.new(utf8(hmac_key), utf8(f"{task_id}.{stamp}"), hashlib.sha256).digest()
    expected = base64.b64encode(digest)
    if not hmac.compare_digest(expected, utf8(signature.strip())):
        raise _bad_signature(f"{SIGNATURE_HEADER} does not match")


def check_options(tolerance: float, max_body: int) -> None:
    """Raise :class:`ConfigurationError` for a negative tolerance or a max_body below 1."""
    if math.isnan(tolerance) or tolerance < 0:
        raise ConfigurationError(f"tolerance must be >= 0 seconds, got {tolerance!r}")
    if max_body < 1:
        raise ConfigurationError(f"max_body must be >= 1 byte, got {max_body!r}")


def verify_callback(
    body: bytes,
    headers: Mapping[str, str],
    *,
    hmac_key: str | None = None,
    tolerance: float = 300.0,
    now: float | None = None,
) -> None:
    """Check a callback's kie-style HMAC signature; raise if it is not genuine.

    The signature is base64(HMAC-SHA256(``hmac_key``, f"{taskId}.{timestamp}"))
    in ``X-Webhook-Signature``, the timestamp (Unix seconds) in
    ``X-Webhook-Timestamp``; the task id is read from the body (``data.taskId``,
    ``data.task_id`` or a flat ``taskId``). Header names match in any case. The
    comparison takes constant time, and a timestamp more than ``tolerance``
    seconds from ``now`` (default: the current time) is refused as a replay.

    Raises :class:`CallbackVerificationError` for a missing, malformed or wrong
    signature, a stale timestamp, or a body naming no task; and
    :class:`ConfigurationError` when ``hmac_key`` is None (there is nothing to
    verify against; checking nothing must never look like success).
    """
    if not hmac_key:
        raise ConfigurationError("verify_callback needs the HMAC key: pass hmac_key=...")
    check_options(tolerance, 1)
    info = _load(body, len(body))
    _check_signature(info.task_id, headers, hmac_key=hmac_key, tolerance=tolerance, now=now)


def parse_callback_request(
    body: bytes,
    headers: Mapping[str, str],
    *,
    hmac_key: str | None = None,
    tolerance: float = 300.0,
    max_body: int = DEFAULT_MAX_BODY,
    now: float | None = None,
) -> TaskInfo:
    """Turn one callback request into a :class:`TaskInfo`, verifying it on the way.

    Checks, in order: the size limit (``max_body`` bytes), that the body is a
    JSON object naming a task, and, when ``hmac_key`` is given, the signature
    and timestamp (see :func:`verify_callback`). Feed the result to
    ``client.feed_callback(info)``.

    Every problem with the request raises :class:`CallbackVerificationError`
    (never a ``KeyError``, ``TypeError`` or ``JSONDecodeError``); its
    ``http_status`` attribute suggests the reply: 400 for a malformed body, 413
    for an oversized one, 401 for a bad signature or timestamp.
    """
    check_options(tolerance, max_body)
    info = _load(body, max_body)
    if hmac_key is not None:
        _check_signature(info.task_id, headers, hmac_key=hmac_key, tolerance=tolerance, now=now)
    return info
