"""The simulated Ruxa service: state, request handlers and the loopback server.

A request walks: count it -> authenticate -> rate limit (per endpoint class)
-> faults that strike before any work -> validate -> credits -> create ->
faults that strike after the work -> reply. Replies are built with one
``json.dumps`` each; task state is computed from the clock at query time.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import attrs
from aiohttp import web

from ._admin import admin_routes
from ._callbacks import CallbackDispatcher
from ._config import ModelBehavior, SimConfig
from ._limits import TokenBucket
from ._outage import OutageMode, OutageSwitch
from ._records import (
    DONE,
    TaskRecord,
    callback_body,
    file_bytes,
    file_extension,
    note_query,
    phase_at,
    result_urls,
    task_data,
    upstream_name,
)
from ._rules import accepted_models, check_create, price_table
from ._stats import Counters, SimStats

__all__ = ["FakeRuxa", "serve"]

_JSON = "application/json"
_CREATE, _QUERY = 0, 1
_monotonic = time.monotonic
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_canonical = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode
_FILE_TYPES = {"png": "image/png", "mp4": "video/mp4"}
_UNAUTHORIZED = "You do not have access permissions"
_SERVER_ERROR = "Internal server error"
_RATE_HEADERS = "ruxa_sim_rate_headers"  # request key: the bucket's headers for the reply


def _stream(seed: int | None, name: str) -> str | None:
    """A separate random stream per purpose, so callbacks cannot shift task draws."""
    return None if seed is None else f"{seed}:{name}"


class FakeRuxa:
    """A stateful local Ruxa API on a real loopback socket; an async context manager.

    ``url`` is the base URL to give a client, ``api_key`` the key it must send.
    Inspect with :meth:`stats` and :meth:`task`; change behaviour while running
    with :meth:`reconfigure` and :meth:`set_credits`.
    """

    def __init__(
        self, config: SimConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._config = SimConfig() if config is None else config
        self._host = host
        self._port = port
        self._url = ""
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._tasks: dict[str, TaskRecord] = {}
        self._seen: set[int] = set()
        self._counters = Counters()
        self._rng = random.Random(_stream(self._config.seed, "tasks"))
        self._fault_rng = random.Random(_stream(self._config.seed, "faults"))
        self._balance = self._config.credits
        self._epoch_offset = time.time() - _monotonic()
        self._buckets: list[TokenBucket | None] = [None, None]
        self._deadlines = [0.0, 0.0]
        self._callbacks = CallbackDispatcher(
            settings=lambda: self._config.callbacks,
            lookup=self._tasks.get,
            payload=self._callback_body,
            counters=self._counters,
            rng=random.Random(_stream(self._config.seed, "callbacks")),
        )
        self._apply(self._config, None)
        self._outage = OutageSwitch(
            self._counters, stop_listening=self._unlisten, start_listening=self._listen
        )

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> FakeRuxa:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind the socket and start serving (and delivering callbacks)."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.on_response_prepare.append(self._add_rate_headers)
        app.router.add_post("/api/v1/tasks/create", self._handle_create)
        app.router.add_get("/api/v1/tasks/query/{task_id}", self._handle_query)
        app.router.add_get("/files/{task_id}/{name}", self._handle_file)
        app.router.add_routes(admin_routes(self))
        app.router.add_route("*", "/api/{tail:.*}", self._handle_unknown)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, backlog=1024)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._site = site
        port = runner.addresses[0][1]
        self._port = port
        host = self._host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self._callbacks.start()

    async def aclose(self) -> None:
        """Stop serving; undelivered callbacks are discarded. Records stay readable."""
        await self._callbacks.aclose()
        await self._outage.aclose()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- outages ---------------------------------------------------------------------

    async def outage(self, mode: OutageMode = "refuse", seconds: float | None = None) -> None:
        """Take the API down: ``"refuse"`` connections or ``"drop"`` requests unanswered.

        After ``seconds`` (else at :meth:`restore`) it serves again on the same
        port with the same tasks; see ``ruxa_async.testing._outage`` for the modes.
        """
        if self._runner is None:
            raise RuntimeError("start the simulator first")
        await self._outage.begin(mode, seconds)

    async def restore(self) -> None:
        """End an outage now."""
        await self._outage.end()

    async def serving(self) -> None:
        """Return once no outage is running (a timed one has ended)."""
        await self._outage.serving()

    @property
    def down(self) -> OutageMode | None:
        """The outage mode in force, or None while serving."""
        return self._outage.mode

    @property
    def outage_remaining(self) -> float | None:
        """Seconds until a timed outage ends by itself (None: none running)."""
        return self._outage.remaining

    async def _unlisten(self) -> None:
        site, self._site = self._site, None
        if site is not None:
            await site.stop()
        server = self._runner.server if self._runner is not None else None
        for handler in server.connections if server is not None else ():
            transport = handler.transport
            if transport is not None:
                transport.close()

    async def _listen(self) -> None:
        assert self._runner is not None
        for attempt in range(50):  # the port may be briefly taken (an outgoing socket)
            site = web.TCPSite(self._runner, self._host, self._port, backlog=1024)
            try:
                await site.start()
            except OSError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.02)
            else:
                self._site = site
                return

    # -- inspection and control ----------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321`` (empty until started)."""
        return self._url

    @property
    def api_key(self) -> str:
        """The key clients must send as ``Authorization: Bearer <key>``."""
        return self._config.api_key

    @property
    def config(self) -> SimConfig:
        """The configuration in force."""
        return self._config

    def stats(self) -> SimStats:
        """A frozen snapshot of the counters."""
        return self._counters.snapshot(self._balance)

    def task(self, task_id: str) -> TaskRecord | None:
        """The server-side record of ``task_id``, or None."""
        return self._tasks.get(task_id)

    def tasks(self) -> list[TaskRecord]:
        """Every task record, in creation order."""
        return list(self._tasks.values())

    def reconfigure(self, **changes: Any) -> None:
        """Apply ``attrs.evolve(config, **changes)`` while running.

        Changing ``credits`` resets the balance; a changed rate limit starts a
        new bucket that keeps the tokens left (up to the new burst).
        """
        old = self._config
        new = attrs.evolve(old, **changes)
        self._config = new
        self._apply(new, old)
        if "credits" in changes:
            self._balance = new.credits

    def reset(self) -> None:
        """Forget every task, counter and pending callback, as if just started.

        The configuration, the URL and the socket stay; the balance goes back
        to ``config.credits``, rate-limit buckets are full again and the random
        streams restart from ``config.seed``.
        """
        config = self._config
        self._tasks.clear()
        self._seen.clear()
        self._counters.clear()
        self._callbacks.clear()
        self._balance = config.credits
        self._deadlines = [0.0, 0.0]
        self._buckets = [None, None]
        self._rng.seed(_stream(config.seed, "tasks"))
        self._fault_rng.seed(_stream(config.seed, "faults"))
        self._callbacks.reseed(_stream(config.seed, "callbacks"))
        self._apply(config, None)

    def set_credits(self, credits: float | None) -> None:
        """Set the balance (None: unlimited)."""
        self.reconfigure(credits=credits)

    def _apply(self, new: SimConfig, old: SimConfig | None) -> None:
        self._auth = "Bearer " + new.api_key
        dialect = new.dialect
        self._msg_field = dialect.message_field
        self._http_errors = dialect.errors == "http"
        self._success_word = dialect.success_state
        self._result_object = dialect.result_json == "object"
        self._faults_active = new.faults.active
        self._accepted = accepted_models(new.accept_models, new.models)
        self._prices: Mapping[str, float] = price_table(new.prices)
        for index, limit in ((_CREATE, new.create_limit), (_QUERY, new.query_limit)):
            previous = self._buckets[index]
            if old is None or limit != (old.create_limit, old.query_limit)[index]:
                tokens = None
                if previous is not None:
                    elapsed = _monotonic() - previous.stamp
                    tokens = min(previous.tokens + elapsed * previous.rate, previous.burst)
                self._buckets[index] = None if limit is None else TokenBucket(limit, tokens)
        if old is not None and new.seed != old.seed:
            self._rng.seed(_stream(new.seed, "tasks"))
            self._fault_rng.seed(_stream(new.seed, "faults"))
            self._callbacks.reseed(_stream(new.seed, "callbacks"))

    # -- replies ---------------------------------------------------------------------

    def _reply(
        self, code: int, message: str, data: Any = None, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        by_status = self._counters.by_status
        by_status[code] = by_status.get(code, 0) + 1
        body = _dumps({"code": code, self._msg_field: message, "data": data}).encode()
        status = code if self._http_errors else 200
        return web.Response(body=body, status=status, content_type=_JSON, headers=headers)

    def _drop(self, request: web.Request, kind: str) -> web.Response:
        self._counters.faults[kind] += 1
        transport = request.transport
        if transport is not None:
            transport.close()
        return web.Response()  # never sent: aiohttp finds the transport closed

    def _draw(self, probability: float) -> bool:
        return probability > 0.0 and self._fault_rng.random() < probability

    def _gate(self, request: web.Request, kind: int, now: float) -> web.Response | None:
        """Authenticate and rate limit; a reply means the request ends there."""
        if now < self._deadlines[kind]:
            self._counters.early_requests += 1
        auth = request.headers.get("Authorization")
        if auth != self._auth and not self._auth_matches(auth):
            self._counters.unauthorized += 1
            return self._reply(401, _UNAUTHORIZED)
        bucket = self._buckets[kind]
        if bucket is not None:
            wait = bucket.take(now)
            family = self._config.dialect.rate_headers
            if family != "none":
                request[_RATE_HEADERS] = bucket.headers(family)
            if wait > 0.0:
                return self._rate_limited(kind, wait, now)
        return None

    def _auth_matches(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and token.strip() == self._config.api_key

    def _rate_limited(self, kind: int, wait: float, now: float) -> web.Response:
        if kind == _CREATE:
            self._counters.rate_limited_create += 1
        else:
            self._counters.rate_limited_query += 1
        headers = None
        if self._config.dialect.retry_after:
            seconds = max(1, math.ceil(wait))
            self._deadlines[kind] = max(self._deadlines[kind], now + seconds)
            headers = {"Retry-After": str(seconds)}
        return self._reply(429, "Too many requests, please slow down", headers=headers)

    @staticmethod
    async def _add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
        """Copy the rate-limit headers the gate computed onto whatever reply goes out."""
        extra = request.get(_RATE_HEADERS)
        if extra:
            response.headers.update(extra)

    def _fault_before(self, request: web.Request) -> web.Response | None:
        faults = self._config.faults
        if self._draw(faults.drop_before):
            return self._drop(request, "drop_before")
        if self._draw(faults.error_500_before):
            self._counters.faults["error_500_before"] += 1
            return self._reply(500, _SERVER_ERROR)
        return None

    async def _maybe_slow(self) -> bool:
        faults = self._config.faults
        if not self._draw(faults.slow_reply):
            return False
        self._counters.faults["slow_reply"] += 1
        await asyncio.sleep(faults.slow_seconds)
        return True

    # -- API handlers ----------------------------------------------------------------

    def _admit(self, request: web.Request, kind: int) -> web.Response | None:
        """Count the request, then apply auth, the rate limit and before-faults."""
        dropped = self._outage.drop(request)
        if dropped is not None:
            return dropped
        counters = self._counters
        counters.requests += 1
        if kind == _CREATE:
            counters.creates += 1
        else:
            counters.queries += 1
        now = _monotonic()
        limited = counters.rate_limited_create + counters.rate_limited_query
        rejected = self._gate(request, kind, now)
        limited = counters.rate_limited_create + counters.rate_limited_query > limited
        if rejected is None or limited:
            counters.series.note(now, kind, limited)
        if rejected is None and self._faults_active:
            rejected = self._fault_before(request)
        return rejected

    async def _handle_create(self, request: web.Request) -> web.StreamResponse:
        rejected = self._admit(request, _CREATE)
        if rejected is not None:
            return rejected
        counters = self._counters
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            body = None
        problem = self._invalid(body)
        if problem is not None:
            counters.validation_errors += 1
            return self._reply(422, problem)
        model: str = sys.intern(body["model"])
        price = self._prices.get(model, 0.0)
        balance = self._balance
        if balance is not None:
            if balance < price:
                counters.insufficient_credits += 1
                return self._reply(
                    402, f"Insufficient credits: need {price:.2f}, balance {balance:.2f}"
                )
            self._balance = balance - price
        record = self._create_task(model, body, price)
        if self._faults_active:
            faults = self._config.faults
            if self._draw(faults.error_500_after_create):
                counters.ambiguous_created += 1
                counters.faults["error_500_after_create"] += 1
                return self._reply(500, _SERVER_ERROR)
            if self._draw(faults.drop_after_create):
                counters.ambiguous_created += 1
                return self._drop(request, "drop_after_create")
            if await self._maybe_slow():
                transport = request.transport
                if transport is None or transport.is_closing():
                    counters.ambiguous_created += 1
        return self._reply(200, "success", {"taskId": record.task_id})

    def _invalid(self, body: Any) -> str | None:
        return check_create(body, self._config.input_rules, self._accepted)

    def _create_task(self, model: str, body: dict[str, Any], price: float) -> TaskRecord:
        config = self._config
        counters = self._counters
        rng = self._rng
        behavior = config.models.get(model, config.default_behavior)
        now = _monotonic()
        duration = self._draw_duration(behavior)
        fails = behavior.fail_rate > 0.0 and rng.random() < behavior.fail_rate
        outcome = "fail" if fails else "success"
        prefix = f"task_{upstream_name(model)}_{int((now + self._epoch_offset) * 1000)}_"
        task_id = f"{prefix}{rng.getrandbits(32):08x}"
        while task_id in self._tasks:
            task_id = f"{prefix}{rng.getrandbits(32):08x}"
        callback = body.get("callBackUrl")
        record = TaskRecord(
            task_id=task_id,
            model=model,
            param=_dumps(body),
            callback_url=sys.intern(callback) if callback is not None else None,
            created_at=now,
            completes_at=now + duration,
            outcome=outcome,
            behavior=behavior,
            cost=price,
        )
        self._tasks[task_id] = record
        counters.tasks_created += 1
        counters.credits_spent += price
        key = hash((model, _canonical(body["input"])))
        if key in self._seen:
            counters.duplicate_creates += 1
        else:
            self._seen.add(key)
        if callback is not None:
            delivery = config.callbacks
            delay = delivery.delay_min
            if delivery.delay_max > delay:
                delay = rng.uniform(delay, delivery.delay_max)
            self._callbacks.schedule(now + duration + delay, task_id)
        return record

    def _draw_duration(self, behavior: ModelBehavior) -> float:
        median = behavior.median_seconds
        if median <= 0.0:
            return behavior.min_seconds
        drawn = median
        if behavior.sigma > 0.0:
            drawn = self._rng.lognormvariate(math.log(median), behavior.sigma)
        return max(behavior.min_seconds, drawn)

    async def _handle_query(self, request: web.Request) -> web.StreamResponse:
        rejected = self._admit(request, _QUERY)
        if rejected is not None:
            return rejected
        if self._faults_active:
            await self._maybe_slow()
        record = self._tasks.get(request.match_info["task_id"])
        if record is None:
            if self._config.dialect.unknown_task == "422":
                return self._reply(422, "recordInfo is null")
            return self._reply(404, "task not found")
        now = _monotonic()
        phase = phase_at(record, now)
        note_query(record, now, phase)
        data = task_data(
            record,
            phase,
            base_url=self._url,
            epoch_offset=self._epoch_offset,
            success_word=self._success_word,
            result_as_object=self._result_object,
        )
        return self._reply(200, "success", data)

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        return self._reply(404, "resource not found")

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        dropped = self._outage.drop(request)
        if dropped is not None:
            return dropped
        counters = self._counters
        counters.requests += 1
        counters.downloads += 1
        faults = self._config.faults
        if faults.files and self._faults_active:
            rejected = self._fault_before(request)
            if rejected is not None:
                return rejected
            await self._maybe_slow()
        record = self._tasks.get(request.match_info["task_id"])
        now = _monotonic()
        if record is None or phase_at(record, now) != DONE or record.outcome != "success":
            return self._file_missing()
        ttl = self._config.result_ttl
        if ttl is not None and now > record.completes_at + ttl:
            return self._file_missing()
        name = request.match_info["name"]
        if name not in {u.rsplit("/", 1)[1] for u in result_urls(record, "")}:
            return self._file_missing()
        by_status = counters.by_status
        by_status[200] = by_status.get(200, 0) + 1
        ext = file_extension(record.model)
        return web.Response(
            body=file_bytes(ext, self._config.file_size), content_type=_FILE_TYPES[ext]
        )

    def _file_missing(self) -> web.Response:
        by_status = self._counters.by_status
        by_status[404] = by_status.get(404, 0) + 1
        return web.Response(status=404, text="Not Found")

    # -- callbacks -------------------------------------------------------------------

    def _callback_body(self, record: TaskRecord) -> bytes:
        dialect = self._config.dialect
        body = callback_body(
            record,
            style=dialect.callback_style,
            message_field=self._msg_field,
            balance=self._balance,
            base_url=self._url,
            epoch_offset=self._epoch_offset,
            success_word=self._success_word,
            result_as_object=self._result_object,
        )
        return _dumps(body).encode()


async def serve(
    config: SimConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8089,
    *,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Run a :class:`FakeRuxa` until cancelled; ``ready`` gets its URL once it listens."""
    async with FakeRuxa(config, host=host, port=port) as fake:
        if ready is not None:
            ready(fake.url)
        await asyncio.get_running_loop().create_future()
