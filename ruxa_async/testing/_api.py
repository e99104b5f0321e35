"""The simulated API's request handlers: create, query, result files.

A request walks: outage drop -> count it -> authenticate -> rate limit (per
endpoint class) -> faults that strike before any work -> validate -> credits
-> create -> faults that strike after the work -> reply. Task state is
computed from the clock at query time.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping

from aiohttp import web

from ._config import SimConfig
from ._faults import FaultInjector
from ._gate import CREATE, QUERY, Gate
from ._outage import OutageSwitch
from ._records import DONE, file_bytes, file_extension, note_query, phase_at, result_urls, task_data
from ._replies import Replies
from ._rules import accepted_models, check_create, price_table
from ._stats import Counters
from ._store import TaskStore

__all__ = ["ApiHandlers"]

_FILE_TYPES = {"png": "image/png", "mp4": "video/mp4"}


class ApiHandlers:
    """The aiohttp handlers of the API's endpoints, over the simulator's parts.

    ``base_url`` gives the simulator's URL (for result-file links).
    """

    def __init__(
        self,
        config: SimConfig,
        *,
        counters: Counters,
        replies: Replies,
        gate: Gate,
        faults: FaultInjector,
        outage: OutageSwitch,
        store: TaskStore,
        base_url: Callable[[], str],
    ) -> None:
        self._counters = counters
        self._reply = replies.reply
        self._replies = replies
        self._gate = gate
        self._faults = faults
        self._outage = outage
        self._store = store
        self._base_url = base_url
        self.apply(config)

    def apply(self, config: SimConfig) -> None:
        """Follow ``config`` from the next request on."""
        self._config = config
        dialect = config.dialect
        self._success_word = dialect.success_state
        self._result_object = dialect.result_json == "object"
        self._accepted = accepted_models(config.accept_models, config.models)
        self._prices: Mapping[str, float] = price_table(config.prices)

    def routes(self) -> list[web.RouteDef]:
        """The API's routes (every other ``/api/`` path answers 404 in the envelope)."""
        return [
            web.post("/api/v1/tasks/create", self.create),
            web.get("/api/v1/tasks/query/{task_id}", self.query),
            web.get("/files/{task_id}/{name}", self.file),
            web.route("*", "/api/{tail:.*}", self.unknown),
        ]

    def _admit(self, request: web.Request, kind: int) -> web.Response | None:
        """Count the request, then apply auth, the rate limit and before-faults."""
        dropped = self._outage.drop(request)
        if dropped is not None:
            return dropped
        counters = self._counters
        counters.requests += 1
        if kind == CREATE:
            counters.creates += 1
        else:
            counters.queries += 1
        now = time.monotonic()
        limited = counters.rate_limited_create + counters.rate_limited_query
        rejected = self._gate.check(request, kind, now)
        limited = counters.rate_limited_create + counters.rate_limited_query > limited
        if rejected is None or limited:
            counters.series.note(now, kind, limited)
        if rejected is None and self._faults.active:
            rejected = self._faults.before(request)
        return rejected

    async def create(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/v1/tasks/create``."""
        rejected = self._admit(request, CREATE)
        if rejected is not None:
            return rejected
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            body = None
        problem = check_create(body, self._config.input_rules, self._accepted)
        if problem is not None:
            self._counters.validation_errors += 1
            return self._reply(422, problem)
        model: str = sys.intern(body["model"])
        price = self._prices.get(model, 0.0)
        short = self._store.charge(price)
        if short is not None:
            return self._reply(402, short)
        record = self._store.create(model, body, price)
        if self._faults.active:
            faulted = await self._faults.after_create(request)
            if faulted is not None:
                return faulted
        return self._reply(200, "success", {"taskId": record.task_id})

    async def query(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/v1/tasks/query/{task_id}``."""
        rejected = self._admit(request, QUERY)
        if rejected is not None:
            return rejected
        if self._faults.active:
            await self._faults.maybe_slow()
        record = self._store.get(request.match_info["task_id"])
        if record is None:
            if self._config.dialect.unknown_task == "422":
                return self._reply(422, "recordInfo is null")
            return self._reply(404, "task not found")
        now = time.monotonic()
        phase = phase_at(record, now)
        note_query(record, now, phase)
        data = task_data(
            record,
            phase,
            base_url=self._base_url(),
            epoch_offset=self._store.epoch_offset,
            success_word=self._success_word,
            result_as_object=self._result_object,
        )
        return self._reply(200, "success", data)

    async def unknown(self, request: web.Request) -> web.StreamResponse:
        """Any other ``/api/`` path."""
        return self._reply(404, "resource not found")

    async def file(self, request: web.Request) -> web.StreamResponse:
        """``GET /files/{task_id}/{name}``: a result file while the task's results live."""
        dropped = self._outage.drop(request)
        if dropped is not None:
            return dropped
        counters = self._counters
        counters.requests += 1
        counters.downloads += 1
        config = self._config
        if config.faults.files and self._faults.active:
            rejected = self._faults.before(request)
            if rejected is not None:
                return rejected
            await self._faults.maybe_slow()
        record = self._store.get(request.match_info["task_id"])
        now = time.monotonic()
        missing = self._replies.file_missing
        if record is None or phase_at(record, now) != DONE or record.outcome != "success":
            return missing()
        ttl = config.result_ttl
        if ttl is not None and now > record.completes_at + ttl:
            return missing()
        name = request.match_info["name"]
        if name not in {u.rsplit("/", 1)[1] for u in result_urls(record, "")}:
            return missing()
        self._replies.count(200)
        ext = file_extension(record.model)
        return web.Response(body=file_bytes(ext, config.file_size), content_type=_FILE_TYPES[ext])
