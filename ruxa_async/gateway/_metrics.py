"""Counters the gateway keeps anyway, and their Prometheus view when ``prometheus-client`` is there.

The request path only bumps plain integers; the Prometheus collector reads
them (and the ledgers and key health) at scrape time. Without the
``prometheus`` extra the gateway runs the same and ``/metrics`` answers 404.
Labels carry user and key *names*, never a token or a key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import attrs

__all__ = ["Counters", "GatewayStatistics", "prometheus_exposition"]


@attrs.frozen(kw_only=True)
class GatewayStatistics:
    """A snapshot of what a gateway did: requests, denials, tasks, spend and key health."""

    requests: dict[str, int]
    denials: dict[str, int]
    created: int
    settled: int
    ownership_refusals: int
    relays_delivered: int
    relays_failed: int
    spend: dict[str, float]
    remaining: dict[str, float]
    keys: dict[str, str]


class Counters:
    """Plain counters bumped on the request path."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.denials: Counter[str] = Counter()
        self.created: Counter[str] = Counter()
        self.settled = 0
        self.ownership_refusals = 0


def prometheus_exposition(
    counters: Counters,
    spend: Callable[[], dict[str, tuple[float, float | None]]],
    keys: Callable[[], dict[str, str]],
    relays: Callable[[], tuple[int, int]],
) -> Callable[[], tuple[bytes, str]] | None:
    """A function rendering the metrics in Prometheus' text format, or None without the extra."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.exposition import CONTENT_TYPE_LATEST
    except ImportError:
        return None

    class _Collector:
        def collect(self) -> Iterator[Any]:
            req = CounterMetricFamily(
                "ruxa_gateway_requests", "Requests answered", labels=["route", "code"]
            )
            for (route, code), n in sorted(counters.requests.items()):
                req.add_metric([route, str(code)], n)
            yield req
            den = CounterMetricFamily(
                "ruxa_gateway_denials", "Requests refused, by reason", labels=["reason"]
            )
            for reason, n in sorted(counters.denials.items()):
                den.add_metric([reason], n)
            yield den
            created = CounterMetricFamily(
                "ruxa_gateway_tasks_created", "Tasks created", labels=["user"]
            )
            for user, n in sorted(counters.created.items()):
                created.add_metric([user], n)
            yield created
            spent = GaugeMetricFamily(
                "ruxa_gateway_spend_credits",
                "Credits spent and held in the current budget window",
                labels=["user"],
            )
            left = GaugeMetricFamily(
                "ruxa_gateway_budget_remaining_credits",
                "Credits left in the current budget window",
                labels=["user"],
            )
            for user, (used, remaining) in sorted(spend().items()):
                spent.add_metric([user], used)
                if remaining is not None:
                    left.add_metric([user], remaining)
            yield spent
            yield left
            up = GaugeMetricFamily(
                "ruxa_gateway_key_up",
                "1 when an upstream key takes creates",
                labels=["key", "state"],
            )
            for name, state in sorted(keys().items()):
                up.add_metric([name, state], 1.0 if state == "active" else 0.0)
            yield up
            delivered, failed = relays()
            relay = CounterMetricFamily(
                "ruxa_gateway_callbacks_relayed", "Callback relays", labels=["outcome"]
            )
            relay.add_metric(["delivered"], delivered)
            relay.add_metric(["failed"], failed)
            yield relay

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())

    def render() -> tuple[bytes, str]:
        return generate_latest(registry), CONTENT_TYPE_LATEST

    return render
