"""Receive Ruxa's task callbacks: a ready-made receiver and the pure functions behind it.

Two ways in:

* :class:`CallbackServer` is a small aiohttp server that a :class:`RuxaClient`
  starts and stops itself (``RuxaClient(callbacks=CallbackServer(...))``): every
  task the client creates carries the server's secret URL, and each verified
  callback resolves the task's handle at once. Polling then only runs as a
  slow safety net for callbacks that never arrive.
* :func:`parse_callback_request` and :func:`verify_callback` are pure functions
  for a web framework you already run: hand them the raw body and headers, get
  a :class:`TaskInfo` back (or a :class:`CallbackVerificationError`), and pass
  it to ``client.feed_callback(info)``.

Ruxa documents neither the callback body nor any signing. The body is read as
kie.ai's envelope ``{code, msg, data: task}`` or as a flat task object. The
optional HMAC check is kie.ai's scheme (not a Ruxa guarantee): headers
``X-Webhook-Timestamp`` (Unix seconds) and ``X-Webhook-Signature`` =
base64(HMAC-SHA256(key, f"{taskId}.{timestamp}")). Without a key, the secret
token in the callback URL is what keeps strangers out; ``verify_by_query=True``
additionally trusts no callback's claim and asks the API for the task instead.
"""

from __future__ import annotations

from ._webhook_server import CallbackServer, CallbackStatistics
from ._webhook_verify import (
    DEFAULT_MAX_BODY,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    parse_callback_request,
    verify_callback,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "CallbackServer",
    "CallbackStatistics",
    "parse_callback_request",
    "verify_callback",
]

# Reported where users import them from (reprs, docs, pickling), not where they live.
CallbackServer.__module__ = __name__
CallbackStatistics.__module__ = __name__
parse_callback_request.__module__ = __name__
verify_callback.__module__ = __name__
