"""The simulated Ruxa service: one object that owns its parts, and the loopback server.

The parts, each in its own module: the socket (``_site``), the request
handlers (``_api``) over the request gate (``_gate``: auth and rate limits),
injected faults (``_faults``), the task store and credits (``_store``), reply
bodies (``_replies``), outages (``_outage``), callback delivery
(``_callbacks``) and the ``/_sim`` admin endpoints (``_admin``).
:class:`FakeRuxa` wires them together and is the public face: lifecycle,
inspection and control.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from types import TracebackType
from typing import Any

import attrs
from aiohttp import web

from ._admin import admin_routes
from ._api import ApiHandlers
from ._callbacks import CallbackDispatcher
from ._config import SimConfig
from ._faults import FaultInjector
from ._gate import Gate
from ._outage import OutageMode, OutageSwitch
from ._records import TaskRecord, callback_body
from ._replies import Replies, dumps
from ._site import Site
from ._stats import Counters, SimStats
from ._store import TaskStore

__all__ = ["FakeRuxa", "serve"]


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
        config = SimConfig() if config is None else config
        seed = config.seed
        self._config = config
        self._counters = counters = Counters()
        self._site = Site(host, port)
        self._callbacks = CallbackDispatcher(
            settings=lambda: self._config.callbacks,
            lookup=self.task,
            payload=self._callback_body,
            counters=counters,
            rng=random.Random(_stream(seed, "callbacks")),
        )
        self._store = TaskStore(
            config,
            counters,
            schedule_callback=self._callbacks.schedule,
            seed=_stream(seed, "tasks"),
        )
        self._replies = replies = Replies(config, counters)
        self._gate = Gate(config, counters, replies)
        self._faults = FaultInjector(config, counters, replies, _stream(seed, "faults"))
        self._outage = OutageSwitch(
            counters, stop_listening=self._site.unlisten, start_listening=self._site.listen
        )
        self._api = ApiHandlers(
            config,
            counters=counters,
            replies=replies,
            gate=self._gate,
            faults=self._faults,
            outage=self._outage,
            store=self._store,
            base_url=lambda: self._site.url,
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
        if self._site.running:
            raise RuntimeError("the simulator is already running")
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.on_response_prepare.append(self._gate.add_rate_headers)
        app.router.add_routes(self._api.routes())
        app.router.add_routes(admin_routes(self))
        await self._site.start(app)
        self._callbacks.start()

    async def aclose(self) -> None:
        """Stop serving; undelivered callbacks are discarded. Records stay readable."""
        await self._callbacks.aclose()
        await self._outage.aclose()
        await self._site.aclose()

    # -- outages ---------------------------------------------------------------------

    async def outage(self, mode: OutageMode = "refuse", seconds: float | None = None) -> None:
        """Take the API down: ``"refuse"`` connections or ``"drop"`` requests unanswered.

        After ``seconds`` (else at :meth:`restore`) it serves again on the same
        port with the same tasks; see ``ruxa_async.testing._outage`` for the modes.
        """
        if not self._site.running:
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

    # -- inspection and control ----------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321`` (empty until started)."""
        return self._site.url

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
        return self._counters.snapshot(self._store.balance)

    def task(self, task_id: str) -> TaskRecord | None:
        """The server-side record of ``task_id``, or None."""
        return self._store.get(task_id)

    def tasks(self) -> list[TaskRecord]:
        """Every task record, in creation order."""
        return self._store.records()

    def reconfigure(self, **changes: Any) -> None:
        """Apply ``attrs.evolve(config, **changes)`` while running.

        Changing ``credits`` resets the balance; a changed rate limit starts a
        new bucket that keeps the tokens left (up to the new burst).
        """
        old = self._config
        new = attrs.evolve(old, **changes)
        self._config = new
        self._replies.apply(new)
        self._gate.apply(new, old)
        self._faults.apply(new)
        self._store.apply(new)
        self._api.apply(new)
        if "credits" in changes:
            self._store.balance = new.credits
        if new.seed != old.seed:
            self._reseed(new.seed)

    def reset(self) -> None:
        """Forget every task, counter and pending callback, as if just started.

        The configuration, the URL and the socket stay; the balance goes back
        to ``config.credits``, rate-limit buckets are full again and the random
        streams restart from ``config.seed``.
        """
        seed = self._config.seed
        self._store.clear()
        self._counters.clear()
        self._callbacks.clear()
        self._gate.reset()
        self._reseed(seed)

    def set_credits(self, credits: float | None) -> None:
        """Set the balance (None: unlimited)."""
        self.reconfigure(credits=credits)

    def _reseed(self, seed: int | None) -> None:
        self._store.reseed(_stream(seed, "tasks"))
        self._faults.reseed(_stream(seed, "faults"))
        self._callbacks.reseed(_stream(seed, "callbacks"))

    def _callback_body(self, record: TaskRecord) -> bytes:
        dialect = self._config.dialect
        body = callback_body(
            record,
            style=dialect.callback_style,
            message_field=self._replies.message_field,
            balance=self._store.balance,
            base_url=self._site.url,
            epoch_offset=self._store.epoch_offset,
            success_word=dialect.success_state,
            result_as_object=dialect.result_json == "object",
        )
        return dumps(body).encode()


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
