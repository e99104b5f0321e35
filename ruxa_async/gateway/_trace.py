"""Where a standalone gateway's request spends its time: phase stamps, on only when asked.

``RUXA_GATEWAY_TRACE=FILE ruxa-async gateway ...`` swaps in traced subclasses
of the server's connection and of the light upstream client's connection
(their ``connection_class`` hooks), and wraps the SQLite writer's commit. When
the gateway stops, ``FILE`` gets one JSON line per request::

    {"kind": "create", "t": [read, parsed, start, up_written, up_read, up_resumed,
                             end, written, up_writing, writing]}

(``time.perf_counter()`` seconds; a query has the same stamps; a request with no
upstream exchange has nulls there), one line per commit:
``{"commit": [start, end], "journalled": N, "rows": M, "checkpointing": B}`` (B: a
WAL checkpoint was queued or running on the writer's thread), and one per run of the
cyclic garbage collector: ``{"gc": [start, end], "generation": G}``. The first line,
``{"frozen": N}``, counts the objects frozen at start-up (``gc.freeze()``), which the
collector no longer walks.

- *read*: the first bytes of the request arrived (``data_received``);
- *parsed*: the whole request was parsed;
- *start*: the handler started (the connection's answering task woke);
- *up_written*: the upstream request was handed to the socket;
- *up_read*: the upstream reply was read whole;
- *up_resumed*: the handler resumed after it (*up_read* to here: a wake-up);
- *end*: the handler returned its response (after the commit, for a create);
- *written*: the response was handed to the socket;
- *up_writing*, *writing*: just before those two writes (the write itself can wait
  while the peer it wakes takes the CPU).

Off (the variable unset), nothing here is imported by the serving path and
nothing is stamped: the hooks hold the plain classes.
"""

from __future__ import annotations

import contextvars
import gc
import json
import os
import time
from collections.abc import Awaitable, Generator
from typing import Any

from .._light_conn import Connection as UpstreamConnection
from .._light_transport import LightTransport
from ._exchange import Request, Response
from ._httpserver import HttpServer, _Connection

__all__ = ["ENV", "dump", "install"]

ENV = "RUXA_GATEWAY_TRACE"

_now = time.perf_counter
_current: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "ruxa_gateway_trace", default=None
)
_records: list[tuple[str, list[Any]]] = []
_commits: list[tuple[float, float, int, int, bool]] = []
_collections: list[tuple[float, float, int]] = []  # the cyclic GC's runs: start, end, generation
_gc_started = [0.0]
(
    _READ,
    _PARSED,
    _START,
    _UP_WRITTEN,
    _UP_READ,
    _UP_RESUMED,
    _END,
    _WRITTEN,
    _UP_WRITING,
    _WRITING,
) = range(10)
_N = 10


def _kind(path: str) -> str:
    if path.endswith("/tasks/create"):
        return "create"
    if "/tasks/query/" in path:
        return "query"
    return "other"


class _Resumed:
    """Awaits a future, then stamps when the awaiting coroutine resumed."""

    __slots__ = ("_future", "_stamps")

    def __init__(self, future: Awaitable[None], stamps: list[Any]) -> None:
        self._future = future
        self._stamps = stamps

    def __await__(self) -> Generator[Any, None, None]:
        yield from self._future.__await__()
        self._stamps[_UP_RESUMED] = _now()


class _TracedUpstream(UpstreamConnection):
    """The light client's connection, stamping the exchange of the traced request."""

    _stamps: list[Any] | None = None

    def send(self, payload: bytes, now: float, read: float, deadline: float) -> Any:
        stamps = _current.get()
        if stamps is not None:
            stamps[_UP_WRITING] = _now()
        waiter = super().send(payload, now, read, deadline)
        self._stamps = stamps
        if stamps is None:
            return waiter
        stamps[_UP_WRITTEN] = _now()
        return _Resumed(waiter, stamps)

    def _finish(self, error: BaseException | None) -> None:
        if self._stamps is not None and self._waiter is not None:
            self._stamps[_UP_READ] = _now()
        self._stamps = None
        super()._finish(error)


class _TracedConnection(_Connection):
    """The server's connection, stamping each request's phases."""

    def __init__(self, server: HttpServer) -> None:
        super().__init__(server)
        self._stamps: list[Any] = [None] * _N
        self._job_stamps: dict[int, list[Any]] = {}
        self._written_next: tuple[str, list[Any]] | None = None
        app = self._app

        async def traced(request: Request) -> Response:
            stamps = self._job_stamps.pop(id(request), None) or [None] * _N
            stamps[_START] = _now()
            token = _current.set(stamps)
            try:
                response = await app(request)
            finally:
                _current.reset(token)
            stamps[_END] = _now()
            self._written_next = (_kind(request.path), stamps)
            return response

        self._app = _TracedApp(traced, app)

    def data_received(self, data: bytes) -> None:
        if self._stage == 0 and self._stamps[_READ] is None:  # the first bytes of a request
            self._stamps[_READ] = _now()
        super().data_received(data)

    def _enqueue(
        self, item: Request | Response, keep_alive: bool, head: bool, version: str
    ) -> None:
        if isinstance(item, Request):
            self._stamps[_PARSED] = _now()
            self._job_stamps[id(item)] = self._stamps
            self._stamps = [None] * _N
        super()._enqueue(item, keep_alive, head, version)

    def _write(self, response: Response, keep_alive: bool, head: bool, http10: bool) -> bool:
        pending, self._written_next = self._written_next, None
        if pending is not None:
            pending[1][_WRITING] = _now()
        done = super()._write(response, keep_alive, head, http10)
        if pending is not None:
            pending[1][_WRITTEN] = _now()
            _records.append(pending)
        return done


class _TracedApp:
    """The application with a traced call (``refused`` passes through)."""

    def __init__(self, call: Any, app: Any) -> None:
        self._call = call
        self.refused = app.refused

    def __call__(self, request: Request) -> Awaitable[Response]:
        return self._call(request)  # type: ignore[no-any-return]


def install() -> None:
    """Trace every request from now on (the standalone CLI calls it when ``ENV`` is set)."""
    from . import _sqlite_writer

    HttpServer.connection_class = _TracedConnection
    LightTransport.connection_class = _TracedUpstream
    flush = _sqlite_writer.SqliteWriter._flush

    def traced_flush(self: Any) -> None:
        journalled, rows = self._journalled, len(self._pending)  # rows creates made durable
        checkpointing = self._checkpointing  # a checkpoint queued or running on the thread
        started = _now()
        flush(self)
        if rows:
            _commits.append((started, _now(), journalled, rows, checkpointing))

    _sqlite_writer.SqliteWriter._flush = traced_flush  # type: ignore[method-assign]
    gc.callbacks.append(_gc_callback)


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = _now()
    else:
        _collections.append((_gc_started[0], _now(), info["generation"]))


def dump() -> None:
    """Write what was stamped to the file ``ENV`` names (and forget it)."""
    path = os.environ.get(ENV)
    if not path:
        return
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps({"frozen": gc.get_freeze_count()}) + "\n")  # objects the GC skips
        for kind, stamps in _records:
            out.write(json.dumps({"kind": kind, "t": stamps}) + "\n")
        for started, ended, journalled, rows, checkpointing in _commits:
            line = {"commit": [started, ended], "journalled": journalled, "rows": rows}
            out.write(json.dumps({**line, "checkpointing": checkpointing}))
            out.write("\n")
        for started, ended, generation in _collections:
            out.write(json.dumps({"gc": [started, ended], "generation": generation}) + "\n")
    _records.clear()
    _commits.clear()
    _collections.clear()
