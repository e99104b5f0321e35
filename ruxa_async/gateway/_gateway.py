"""The gateway's decisions: who may create what, whose task is whose, what it cost.

:class:`Gateway` knows nothing of HTTP (``_endpoints`` turns requests into calls of
:meth:`Gateway.create`, :meth:`Gateway.query` and :meth:`Gateway.upstream_callback`
and their :class:`Reply` back into responses).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from .. import _wire
from .._client import RuxaClient, send_once
from .._errors import (
    AuthenticationError,
    ConfigurationError,
    InsufficientCreditsError,
    NotFoundError,
    RateLimitError,
    RuxaError,
)
from .._models import TaskInfo
from ._admission import Admission
from ._alerts import Alerter, SpendWatch
from ._config import GatewayConfig, UpstreamKey, load_config
from ._counters import Counters
from ._keys import KeyPool, default_client
from ._metrics import GatewayStatistics
from ._policy import Denial, RateBuckets, Reply, window_bounds
from ._relay import Relay, scrub_task
from ._settle import Settler
from ._store import SQLiteStore, StateStore, StateUnavailableError, TaskRecord
from ._tokens import Identity, TokenVerifier, mint_token

__all__ = ["Gateway", "Reply"]

log = logging.getLogger("ruxa_async")

_TASK_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
_NOT_FOUND = "task not found"
_OWNER_CACHE = 50_000
_SHOWN_CACHE = 4096


class _Shown:
    """What a task's owner was last shown: the service's task object and the reply made of it
    (an unchanged task is answered with the same reply, encoded once)."""

    __slots__ = ("data", "path", "reply")

    def __init__(self, path: str, data: object, reply: Reply) -> None:
        self.path = path
        self.data = data
        self.reply = reply


class Gateway:
    """A key-holding gateway that speaks the Ruxa API; an async context manager.

    Users call it with their own token as the Bearer key; it checks their
    policy, reserves budget, creates the task with one of the real keys and
    remembers who owns it. Mount it into an aiohttp app with :meth:`mount`, or
    serve it alone with :meth:`listen`. ``upstream_keys`` (when given) replaces
    the config's key list, even across reloads (the ``--simulate`` mode uses it).
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        store: StateStore | None = None,
        upstream_keys: Sequence[UpstreamKey] | None = None,
        client_factory: Callable[[UpstreamKey], RuxaClient] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self._fixed_keys = tuple(upstream_keys) if upstream_keys is not None else None
        self.store: StateStore = store or store_for(config, clock=clock)
        self.counters = Counters()
        self.verifier = TokenVerifier(config, clock=clock)
        self.rates = RateBuckets()
        self._fleet = self.store.fleet()
        claim = None if self._fleet is None else self._fleet.claim
        self.alerter = Alerter(config.alerts, claim, clock)
        self.spend_watch = (
            SpendWatch(config.alerts, clock)
            if self._fleet is None
            else self._fleet.spend_watch(config.alerts, self._spend_jumped)
        )
        self.relay = Relay(config.callbacks, self._audit_event, clock=clock)
        self._client_factory = client_factory
        self.pool = KeyPool(self._factory_for(config), self._key_event)
        self.public_url = config.public_url.rstrip("/") if config.public_url else None
        secret = config.signing_secret
        self.callback_token = (
            hmac.new(secret.encode(), b"ruxa-gateway-callback", hashlib.sha256).hexdigest()[:40]
            if secret
            else secrets.token_hex(20)
        )
        self._background: list[asyncio.Task[None]] = []
        self._mtime: float | None = None
        self._started = False
        self._stop_serving: Callable[[], Awaitable[None]] | None = None
        self.url: str | None = None
        self._admission = Admission(self)
        self._settler = Settler(self)
        # Who owns a task and which key made it never change once written: the query path
        # reads them here, in front of the store (which may be a network away).
        self._records: OrderedDict[str, TaskRecord] = OrderedDict()
        # The last answer to each task's owner, by task id (for tasks being polled).
        self._shown: dict[str, _Shown] = {}

    def __repr__(self) -> str:
        return f"<Gateway users={len(self.config.users)} keys={len(self.pool)}>"

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the state store, the key pool, the relay and the background sweeper."""
        if self._started:
            return
        self._started = True
        await self.store.open()
        self.pool.update(self._fixed_keys if self._fixed_keys is not None else self.config.keys)
        self.pool.count_open(r.key for r in self.store.open_tasks())
        await self.relay.start()
        await self.alerter.start()
        loop = asyncio.get_running_loop()
        self._background.append(
            loop.create_task(self._settler.sweep_forever(), name="gateway sweeper")
        )
        if self.config.path is not None:
            self._mtime = _mtime(self.config.path)
            self._background.append(loop.create_task(self._watch_config(), name="gateway reload"))

    async def aclose(self) -> None:
        """Stop serving and background work, close the key clients, flush the state."""
        stop, self._stop_serving = self._stop_serving, None
        if stop is not None:
            await stop()
        if not self._started:
            return
        self._started = False
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        await self.relay.aclose()
        await self.alerter.aclose()
        await self.pool.aclose()
        await self.store.aclose()

    async def listen(self, host: str = "127.0.0.1", port: int = 8080) -> str:
        """Serve the gateway on ``host:port`` (0 picks a free port); return its base URL.

        Starts the gateway if needed. Without a configured ``public_url``, the
        listening URL becomes the address Ruxa's callbacks are sent to.
        """
        from ._http import serve_gateway

        await self.start()
        self._stop_serving, self.url = await serve_gateway(self, host, port)
        if self.public_url is None:
            self.public_url = self.url
        return self.url

    def mount(self, app: Any, prefix: str = "") -> None:
        """Add the gateway's routes to an existing ``aiohttp.web.Application``.

        The app's startup and cleanup then start and close the gateway.
        ``prefix`` puts every route under a path (``"/ruxa"``: the Ruxa base URL
        for clients becomes ``https://your.app/ruxa``).
        """
        from ._aiohttp_front import gateway_routes

        async def on_startup(_app: Any) -> None:
            await self.start()

        async def on_cleanup(_app: Any) -> None:
            await self.aclose()

        app.add_routes(gateway_routes(self, prefix))
        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)

    # -- configuration -------------------------------------------------------------------

    def reload(self, config: GatewayConfig | None = None) -> bool:
        """Apply ``config`` (default: re-read the config file); False if it was rejected.

        Users, policies, tokens, prices, callback and alert settings, the public URL,
        timeouts of bodies, sweeping and settling, and keys change at once; removed keys
        drain. Changed ``upstream_*`` settings give every key a new client (the old one
        finishes the requests it is sending). The state (``state_path``, ``[state]``),
        ``header_timeout``, ``demo`` and the upstream callback path (derived from the
        signing secret at start) need a restart.
        """
        if config is None:
            if self.config.path is None:
                return False
            try:
                config = load_config(self.config.path)
            except RuxaError as exc:
                log.error("gateway: config reload rejected, keeping the old one: %s", exc)
                self.store.audit("config_rejected", error=str(exc))
                return False
        old, self.config = self.config, config
        self.verifier.update(config)
        self.relay.settings = config.callbacks
        self.alerter.update(config.alerts)
        self.spend_watch.update(config.alerts)
        if config.public_url:
            self.public_url = config.public_url.rstrip("/")
        if self._client_factory is None and _upstream(config) != _upstream(old):
            self.pool.rebuild(self._factory_for(config), grace=old.upstream_timeout + 1.0)
        self.pool.update(self._fixed_keys if self._fixed_keys is not None else config.keys)
        self.store.audit("config_reloaded", users=len(config.users), keys=len(config.keys))
        log.info("gateway: configuration reloaded (%d users)", len(config.users))
        return True

    def _factory_for(self, config: GatewayConfig) -> Callable[[UpstreamKey], RuxaClient]:
        if self._client_factory is not None:
            return self._client_factory
        return lambda key: default_client(
            key,
            timeout=config.upstream_timeout,
            max_in_flight=config.upstream_max_in_flight,
            create_per_second=config.upstream_create_per_second,
            query_per_second=config.upstream_query_per_second,
            discover=config.upstream_discover_rate,
            http=config.upstream_http,
        )

    async def _watch_config(self) -> None:
        path = self.config.path
        assert path is not None
        while True:
            await asyncio.sleep(self.config.reload_interval)
            stamp = await asyncio.to_thread(_mtime, path)
            if stamp is not None and stamp != self._mtime:
                self._mtime = stamp
                self.reload()

    def mint_token(self, user: str, **options: Any) -> str:
        """A scoped token signed with this gateway's secret (see :func:`mint_token`)."""
        if not self.config.signing_secret:
            raise RuxaError("this gateway has no signing_secret; it cannot mint tokens")
        return mint_token(self.config.signing_secret, user, **options)

    # -- events ----------------------------------------------------------------------------

    def _audit_event(self, event: str, **detail: Any) -> None:
        task_id = detail.pop("task_id", None)
        self.store.audit(event, None, task_id, **detail)

    def _spend_jumped(self, user: str, spend: float, baseline: float) -> None:
        self.alerter.alert("spend_jump", user=user, spend=spend, baseline=baseline)

    def _key_event(self, event: str, **detail: Any) -> None:
        alert = detail.pop("alert", False)
        self.store.audit(event, **detail)
        if alert:
            self.alerter.alert(event, **detail)

    def deny(self, denial: Denial, user: str | None, **detail: Any) -> Reply:
        """Count, audit and answer one refusal."""
        self.counters.denials[denial.reason] += 1
        self.store.audit("denied", user, reason=denial.reason, code=denial.code, **detail)
        return Reply.of(denial)

    # -- create ------------------------------------------------------------------------------

    def identify(self, header: str | None) -> Identity | Reply:
        """The caller, or the 401 reply."""
        who = self.verifier.identify(header)
        if who is None:
            self.counters.denials["auth"] += 1
            self.store.audit("denied", None, reason="auth", code=401)
            return Reply(401, "a valid gateway token is required (Authorization: Bearer <token>)")
        limited = self.rates.take(who.user, who.policy)
        if limited is not None:
            return self.deny(limited, who.user)
        return who

    def create(self, header: str | None, body: object) -> Coroutine[Any, Any, Reply]:
        """Create a task for the caller, if their policy and budget allow it (await it).

        ``body`` is the decoded JSON request body (None when it was not JSON).
        """
        return self._admission.create(header, body)

    # -- query ---------------------------------------------------------------------------

    async def query(self, header: str | None, task_id: str) -> Reply:
        """The caller's own task; anybody else's (or an unknown id) is the same 404."""
        who = self.identify(header)
        if isinstance(who, Reply):
            return who
        rate = who.policy.requests_per_second
        if self._fleet is not None and rate is not None:  # the user's rate across instances
            limited = await self._fleet.request(who.user, rate, who.policy.burst)
            if limited is not None:
                return self.deny(limited, who.user)
        # An id shown before passed the check below (only a found record is ever shown).
        if task_id not in self._shown and not _TASK_ID.fullmatch(task_id):
            record = None
        else:
            record = self._records.get(task_id)
            if record is None:
                try:
                    record = await self.record(task_id)
                except StateUnavailableError as exc:
                    return Reply(503, exc.message, None, exc.retry_after)
        if record is None or record.user != who.user:
            if record is not None:
                self.counters.ownership_refusals += 1
                self.store.audit("ownership_refused", who.user, task_id, owner=record.user)
            else:
                self.store.audit("unknown_task", who.user, None, task=task_id[:200])
            self.counters.denials["not_found"] += 1
            return Reply(404, _NOT_FOUND)
        shown = self._shown.get(task_id)
        if record.final is not None:
            if shown is not None and shown.data is record.final:
                return shown.reply
            reply = Reply(200, "success", record.final)
            self._show(task_id, _wire.query_path(task_id), record.final, reply)
            return reply
        slot = self.pool.get(record.key)
        if slot is None:
            return Reply(503, "the key that created this task is no longer configured")
        path = shown.path if shown is not None else _wire.query_path(task_id)
        try:
            client = slot.client
            if slot.opened is not client:
                client = await slot.ready()
            data = await send_once(client, "query", path)
            # Unchanged (the same object when the reply's bytes were): it has not ended either.
            if shown is not None and (data is shown.data or data == shown.data):
                return shown.reply
            ended = _wire.task_state(data).is_terminal  # parsed whole only when it has ended
            info = _wire.parse_task(data, task_id=task_id) if ended else None
        except NotFoundError:
            return Reply(404, _NOT_FOUND)
        except (AuthenticationError, InsufficientCreditsError, RateLimitError) as exc:
            self.pool.failed(slot, exc)
            if isinstance(exc, RateLimitError):
                return Reply(
                    429,
                    "the service is rate limiting; retry after the pause",
                    None,
                    exc.retry_after or 1.0,
                )
            return Reply(503, "the gateway's key was refused; the operator has been alerted")
        except RuxaError:
            return Reply(502, "the service did not answer properly; retry")
        if info is not None:
            self.settle(record, info, "query")
            return Reply(200, "success", scrub_task(data, record.callback_url))
        reply = Reply(200, "success", scrub_task(data, record.callback_url))
        self._show(task_id, path, data, reply)
        return reply

    def _show(self, task_id: str, path: str, data: object, reply: Reply) -> None:
        shown = self._shown
        shown.pop(task_id, None)
        shown[task_id] = _Shown(path, data, reply)
        if len(shown) > _SHOWN_CACHE:
            del shown[next(iter(shown))]  # the least recently changed

    async def record(self, task_id: str) -> TaskRecord | None:
        """The task's record: from the ownership cache, else the store (then cached)."""
        record = self._records.get(task_id)
        if record is not None:
            return record
        record = await self.store.lookup(task_id)
        if record is not None:
            self.remember(record)
        return record

    def remember(self, record: TaskRecord) -> None:
        """Keep ``record`` in the ownership cache (the oldest entries make room)."""
        self._records[record.task_id] = record
        if len(self._records) > _OWNER_CACHE:
            self._records.popitem(last=False)

    # -- settlement ------------------------------------------------------------------------

    def settle(self, record: TaskRecord, info: TaskInfo, source: str) -> None:
        """Book a finished task's cost once, then relay its outcome to the owner once."""
        self._settler.settle(record, info, source)

    async def upstream_callback(self, token: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Ruxa's own callback: check the secret path and (optional) HMAC, settle, relay."""
        return await self._settler.upstream_callback(token, body, headers)

    async def sweep(self) -> None:
        """Check every open task once now (the background sweeper does this periodically)."""
        await self._settler.sweep()

    # -- inspection ----------------------------------------------------------------------

    def usage(self) -> dict[str, tuple[float, float | None]]:
        """Per configured or active user: credits used in the current window, and what is left."""
        now = self.clock()
        out: dict[str, tuple[float, float | None]] = {}
        users = {**{u: e.policy for u, e in self.config.users.items()}}
        for user in self.counters.created:
            users.setdefault(user, self.config.defaults)
        for user, policy in users.items():
            period, _ = window_bounds(policy.window, now)
            spent, reserved = self.store.usage(f"user:{user}", period)
            used = spent + reserved
            left = None if policy.budget is None else max(0.0, policy.budget - used)
            out[user] = (used, left)
        return out

    def statistics(self) -> GatewayStatistics:
        """A snapshot of requests, denials, tasks, spend and key health."""
        usage = self.usage()
        return GatewayStatistics(
            requests={f"{r} {c}": n for (r, c), n in self.counters.requests.items()},
            denials=dict(self.counters.denials),
            created=sum(self.counters.created.values()),
            settled=self.counters.settled,
            ownership_refusals=self.counters.ownership_refusals,
            relays_delivered=self.relay.delivered,
            relays_failed=self.relay.failed,
            spend={u: used for u, (used, _) in usage.items()},
            remaining={u: left for u, (_, left) in usage.items() if left is not None},
            keys={k.name: k.state for k in self.pool.health()},
        )


def store_for(config: GatewayConfig, *, clock: Callable[[], float] = time.time) -> StateStore:
    """The store ``config`` names: Redis with ``[state] redis_url``, else SQLite at state_path."""
    settings = config.state
    if settings.redis_url:
        try:
            from ._redis_store import RedisStore  # redis-py is an extra: loaded on demand
        except ImportError as exc:
            raise ConfigurationError(
                '[state] redis_url needs redis-py: pip install "ruxa-async[gateway,redis]"'
            ) from exc

        return RedisStore(
            settings.redis_url,
            namespace=settings.namespace,
            timeout=settings.timeout,
            keep_settled=settings.keep_settled,
            audit_maxlen=settings.audit_maxlen,
            rate_lease=settings.rate_lease,
            clock=clock,
        )
    return SQLiteStore(config.state_path, clock=clock)


def _upstream(config: GatewayConfig) -> tuple[object, ...]:
    """The settings each key's client is built from."""
    return (
        config.upstream_timeout,
        config.upstream_max_in_flight,
        config.upstream_create_per_second,
        config.upstream_query_per_second,
        config.upstream_discover_rate,
        config.upstream_http,
    )


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except OSError:
        return None
