"""The API's reply envelope ``{code, msg, data}`` in the configured dialect, counted by status."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ._config import SimConfig
from ._stats import Counters

__all__ = ["Replies", "dumps"]

dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
"""Compact JSON, as the service writes it."""

_JSON = "application/json"


class Replies:
    """Builds every reply of the simulated API with one ``json.dumps``.

    The dialect decides the message field's name and whether an error is an
    HTTP status or a 200 carrying the code in its body.
    """

    __slots__ = ("_counters", "_http_errors", "message_field")

    def __init__(self, config: SimConfig, counters: Counters) -> None:
        self._counters = counters
        self.message_field = config.dialect.message_field
        self._http_errors = config.dialect.errors == "http"

    def apply(self, config: SimConfig) -> None:
        """Follow ``config``'s dialect from now on."""
        dialect = config.dialect
        self.message_field = dialect.message_field
        self._http_errors = dialect.errors == "http"

    def count(self, status: int) -> None:
        """Count one reply of HTTP ``status`` that was built elsewhere."""
        by_status = self._counters.by_status
        by_status[status] = by_status.get(status, 0) + 1

    def reply(
        self, code: int, message: str, data: Any = None, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        """The envelope for ``code`` (its HTTP status follows the dialect)."""
        self.count(code)
        body = dumps({"code": code, self.message_field: message, "data": data}).encode()
        status = code if self._http_errors else 200
        return web.Response(body=body, status=status, content_type=_JSON, headers=headers)

    def file_missing(self) -> web.Response:
        """A plain 404 for a result file that is not (or no longer) there."""
        self.count(404)
        return web.Response(status=404, text="Not Found")
