"""The Prometheus exporter serves a client's statistics over real HTTP."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client import CollectorRegistry

from ruxa_async.prometheus import PrometheusExporter
from ruxa_async.redis import RedisCoordinator
from ruxa_async.testing import FakeRuxa
from tests.conftest import make_client
from tests.services import free_port


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


async def test_metrics_count_the_clients_requests(fake: FakeRuxa, redis_url: str) -> None:
    """After three generations the scrape shows three creates and the fleet's view."""
    port = free_port()
    registry = CollectorRegistry()
    coordinator = RedisCoordinator(redis_url, namespace="prom")
    client = make_client(fake, coordinator=coordinator)
    exporter = PrometheusExporter(client, port=port, registry=registry)
    async with client, exporter:
        for i in range(3):
            await client.generate("google/nano-banana", {"prompt": f"fox {i}"})
        exporter.refresh()
        text = await asyncio.to_thread(_scrape, port)
    assert "ruxa_creates_total 3.0" in text
    assert "ruxa_pending_tasks 0.0" in text
    assert "ruxa_fleet_members 1.0" in text
    assert "ruxa_fleet_degraded 0.0" in text
    assert "ruxa_fleet_rate_limited_total 0.0" in text
    assert "ruxa_fleet_credits_refunded_total 0.0" in text
    assert list(registry.collect()) == []  # unregistered on exit
