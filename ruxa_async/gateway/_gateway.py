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
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from .._client import RuxaClient
from .._errors import ConfigurationError, RuxaError
from .._models import TaskInfo
from ._admission import Admission
from ._alerts import Alerter, SpendWatch
from ._config import GatewayConfig, UpstreamKey, load_config
from ._counters import Counters
from ._keys import KeyPool, default_client
from ._metrics import GatewayStatistics
from ._policy import RateBuckets, Reply, window_bounds
from ._queries import Queries
from ._relay import Relay
from ._settle import Settler
from ._store import SQLiteStore, StateStore, TaskRecord
from ._tokens import TokenVerifier, mint_token

__all__ = ["Gateway", "Reply"]

log = logging.getLogger("ruxa_async")


class Gateway(Queries):
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
        super().__init__()
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

    # -- create ------------------------------------------------------------------------------

    def create(self, header: str | None, body: object) -> Coroutine[Any, Any, Reply]:
        """Create a task for the caller, if their policy and budget allow it (await it).

        ``body`` is the decoded JSON request body (None when it was not JSON).
        """
        return self._admission.create(header, body)

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
