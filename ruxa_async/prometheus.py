"""A Prometheus exporter for one client's ``statistics()`` (the ``prometheus`` extra).

::

    async with RuxaClient(coordinator=...) as client, PrometheusExporter(client, port=9464):
        ...   # scrape http://127.0.0.1:9464/metrics

The exporter takes a snapshot of ``client.statistics()`` on the event loop
every ``interval`` seconds and serves the latest one, so a scrape (which
prometheus-client answers from its own thread) never touches the client's
state while the loop changes it. Counters end in ``_total``; with a
coordinator the fleet's view is exported as ``ruxa_fleet_*``. Pass your own
``registry`` to mount the metrics in an existing endpoint instead of ``port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._client import ClientStatistics, RuxaClient

__all__ = ["PrometheusExporter"]

log = logging.getLogger("ruxa_async")


class PrometheusExporter(Collector):
    """Exports a :class:`RuxaClient`'s statistics as Prometheus metrics (see the module)."""

    def __init__(
        self,
        client: RuxaClient,
        *,
        port: int | None = None,
        addr: str = "127.0.0.1",
        registry: CollectorRegistry | None = None,
        interval: float = 1.0,
        prefix: str = "ruxa",
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self._client = client
        self._port = port
        self._addr = addr
        self._registry = registry if registry is not None else REGISTRY
        self._interval = interval
        self._prefix = prefix
        self._snapshot: ClientStatistics | None = None
        self._task: asyncio.Task[None] | None = None
        self._server: Any = None

    async def __aenter__(self) -> PrometheusExporter:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Register the metrics, start refreshing them, and serve them when ``port`` is set."""
        self.refresh()
        self._registry.register(self)
        self._task = asyncio.get_running_loop().create_task(
            self._refresh_loop(), name="ruxa_async prometheus"
        )
        if self._port is not None:
            served = start_http_server(self._port, addr=self._addr, registry=self._registry)
            self._server = served[0] if isinstance(served, tuple) else None
            log.info("Prometheus metrics on http://%s:%d/metrics", self._addr, self._port)

    async def aclose(self) -> None:
        """Stop serving and unregister the metrics."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._registry.unregister(self)
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.shutdown)
            server.server_close()

    def refresh(self) -> None:
        """Take a new snapshot of the client's statistics now."""
        self._snapshot = self._client.statistics()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.refresh()

    def collect(self) -> Iterator[Metric]:
        """The metrics of the latest snapshot (called by prometheus-client)."""
        stats = self._snapshot
        if stats is None:
            return
        p = self._prefix

        def counter(name: str, doc: str, value: float) -> Metric:
            return CounterMetricFamily(f"{p}_{name}", doc, value=value)

        def gauge(name: str, doc: str, value: float) -> Metric:
            return GaugeMetricFamily(f"{p}_{name}", doc, value=value)

        def per_kind(name: str, doc: str, create: float | None, query: float | None) -> Metric:
            family = GaugeMetricFamily(f"{p}_{name}", doc, labels=["kind"])
            for kind, value in (("create", create), ("query", query)):
                if value is not None:
                    family.add_metric([kind], value)
            return family

        yield counter("requests", "Requests sent", stats.requests_sent)
        yield counter("creates", "Create requests sent", stats.creates)
        yield counter("queries", "Status queries sent", stats.queries)
        yield counter("retries", "Requests retried", stats.retries)
        yield counter(
            "ambiguous_create_retries",
            "Creates retried that may have created a task",
            stats.ambiguous_create_retries,
        )
        yield counter("rate_limited", "429 replies", stats.rate_limited)
        yield gauge("pending_tasks", "Tasks being awaited", stats.pending)
        rate = stats.rate
        yield gauge("in_flight", "Requests in flight", rate.in_flight)
        yield counter("paused_seconds", "Seconds a 429 gate was closed", rate.paused_seconds)
        yield per_kind(
            "rate_per_second",
            "The local pace per endpoint class",
            rate.create_rate,
            rate.query_rate,
        )
        fleet = stats.coordinator
        if fleet is None:
            return
        yield per_kind(
            "fleet_rate_per_second", "The fleet's shared pace", fleet.create_rate, fleet.query_rate
        )
        yield gauge("fleet_members", "Live processes in the fleet", fleet.members)
        yield counter(
            "fleet_pauses", "Gate closings heard from other processes", fleet.fleet_pauses
        )
        yield counter("fleet_leases", "Token blocks leased from the fleet", fleet.leases)
        yield counter("fleet_leased_tokens", "Tokens leased from the fleet", fleet.leased_tokens)
        yield gauge("fleet_degraded", "1 while the shared store is unreachable", fleet.degraded)
        yield counter("fleet_degraded_seconds", "Seconds spent degraded", fleet.degraded_seconds)
        yield counter("fleet_store_errors", "Failed calls to the shared store", fleet.store_errors)
        yield counter("fleet_claims", "Idempotency keys claimed", fleet.claims)
        yield counter("fleet_attached", "Submits attached to a task by key", fleet.attached)
        yield counter("fleet_credits_reserved", "Credits reserved", fleet.credits_reserved)
        yield counter(
            "fleet_credits_refunded",
            "Credits given back (creates that failed, tasks that failed)",
            fleet.credits_refunded,
        )
        yield counter(
            "fleet_rate_limited",
            "429s this process reported to the fleet",
            fleet.fleet_rate_limited,
        )
        yield counter(
            "fleet_callbacks_received",
            "Callbacks received from the fleet",
            fleet.callbacks_received,
        )
