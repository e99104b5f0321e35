"""Counters the gateway keeps anyway, and their Prometheus view when ``prometheus-client`` is there.

The request path only bumps plain integers; the Prometheus collector reads
them (and the ledgers and key health) at scrape time. Without the
``prometheus`` extra the gateway runs the same and ``/metrics`` answers 404.
Labels carry user and key *names*, never a token or a key.

**Spend in a fleet.** With a state shared by several instances (Redis), each
scrape first reads every user's ledger from the shared state in one bounded
call (:meth:`SharedSpend.fleet_ledgers`), so every instance reports the same,
fleet-wide spend and remaining budget (aggregate those with ``max()``, never
``sum()``). What went through *this* instance is counted apart, in counters
that do add up across instances. When the shared state does not answer within
its timeout, the scrape still answers: with the last figures read, flagged by
``ruxa_gateway_state_degraded 1`` and a growing ``ruxa_gateway_spend_age_seconds``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from ._policy import window_bounds

#: How many users of a shared state's index a scrape lists besides the configured ones (the
#: most recently active): each costs Redis about 2-8 µs of script time per scrape.
LISTED_USERS = 2_000

if TYPE_CHECKING:
    from ._config import Policy
    from ._view import GatewayView

__all__ = [
    "LISTED_USERS",
    "FleetLedgers",
    "GatewayStatistics",
    "SharedSpend",
    "SpendSnapshot",
    "prometheus_exposition",
    "spend_snapshot",
]


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


@attrs.frozen(kw_only=True)
class FleetLedgers:
    """Users' budget ledgers as a shared state holds them: ``user -> (period, spent, held)``.

    ``indexed`` is how many users the shared state knows of; ``read_at`` the
    monotonic time of the last successful read (None: never); ``fresh`` is
    False when this read failed and the figures are the last known ones.
    """

    ledgers: dict[str, tuple[str, float, float]]
    indexed: int
    read_at: float | None
    fresh: bool


@runtime_checkable
class SharedSpend(Protocol):
    """A state store shared by several instances, which can tell the whole fleet's spend."""

    reserved_here: dict[str, float]
    spent_here: dict[str, float]

    async def fleet_ledgers(self, periods: dict[str, str], default_period: str) -> FleetLedgers:
        """The ledgers of the users of ``periods`` and of the other recently active users."""


@attrs.frozen(kw_only=True)
class SpendSnapshot:
    """What one scrape reports of spend: ``users`` maps a user to (period, used, left).

    ``shared`` is True when the figures are the fleet's (a shared state);
    ``degraded`` when that state did not answer and they are the last known.
    """

    users: dict[str, tuple[str, float, float | None]]
    shared: bool = False
    degraded: bool = False
    age: float | None = None
    indexed: int | None = None
    reserved_here: dict[str, float] = attrs.field(factory=dict)
    spent_here: dict[str, float] = attrs.field(factory=dict)


async def spend_snapshot(gw: GatewayView) -> SpendSnapshot:
    """Each user's spend and remaining budget in the current window, read fresh.

    Users: the configured ones and those who created through this instance; with a
    shared state, also every user with a ledger there (the :data:`LISTED_USERS` most recent).
    """
    now = gw.clock()
    config = gw.config
    policies: dict[str, Policy] = {u: e.policy for u, e in config.users.items()}
    for user in gw.counters.created:
        policies.setdefault(user, config.defaults)
    periods = {u: window_bounds(p.window, now)[0] for u, p in policies.items()}
    store = gw.store
    if not isinstance(store, SharedSpend):
        local = {u: (p, *store.usage(f"user:{u}", p)) for u, p in periods.items()}
        return SpendSnapshot(users=_left(local, policies, config.defaults))
    read = await store.fleet_ledgers(periods, window_bounds(config.defaults.window, now)[0])
    return SpendSnapshot(
        users=_left(read.ledgers, policies, config.defaults),
        shared=True,
        degraded=not read.fresh,
        age=None if read.read_at is None else time.monotonic() - read.read_at,
        indexed=read.indexed,
        reserved_here=dict(store.reserved_here),
        spent_here=dict(store.spent_here),
    )


def _left(
    ledgers: dict[str, tuple[str, float, float]], policies: dict[str, Policy], defaults: Policy
) -> dict[str, tuple[str, float, float | None]]:
    out: dict[str, tuple[str, float, float | None]] = {}
    for user, (period, spent, held) in ledgers.items():
        budget = policies.get(user, defaults).budget
        used = spent + held
        out[user] = (period, used, None if budget is None else max(0.0, budget - used))
    return out


def prometheus_exposition(gw: GatewayView) -> Callable[[], Awaitable[tuple[bytes, str]]] | None:
    """A coroutine function rendering the metrics in Prometheus' text format (the spend read
    fresh first, see :func:`spend_snapshot`), or None without the extra."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.exposition import CONTENT_TYPE_LATEST
    except ImportError:
        return None

    counters = gw.counters

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
            up = GaugeMetricFamily(
                "ruxa_gateway_key_up",
                "1 when an upstream key takes creates",
                labels=["key", "state"],
            )
            keys = {k.name: k.state for k in gw.pool.health()}
            for name, state in sorted(keys.items()):
                up.add_metric([name, state], 1.0 if state == "active" else 0.0)
            yield up
            relay = CounterMetricFamily(
                "ruxa_gateway_callbacks_relayed", "Callback relays", labels=["outcome"]
            )
            relay.add_metric(["delivered"], gw.relay.delivered)
            relay.add_metric(["failed"], gw.relay.failed)
            yield relay

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())

    async def render() -> tuple[bytes, str]:
        snapshot = await spend_snapshot(gw)
        return generate_latest(registry) + spend_text(snapshot), CONTENT_TYPE_LATEST

    return render


_FLEET = (
    "; with a shared state this is the whole fleet's figure, the same on every instance "
    "(aggregate with max(), not sum())"
)


def spend_text(snap: SpendSnapshot) -> bytes:
    """The spend families of ``snap`` in Prometheus' text format, written directly (one line
    per user and family: several times quicker than ``prometheus_client`` for many users)."""
    out: list[str] = []
    help_ = "Credits spent and held in the user's current budget period" + _FLEET
    out += [f"# HELP ruxa_gateway_spend_credits {help_}", "# TYPE ruxa_gateway_spend_credits gauge"]
    users = sorted((_label(u), _label(p), used, left) for u, (p, used, left) in snap.users.items())
    out += [
        f'ruxa_gateway_spend_credits{{period="{p}",user="{u}"}} {_number(used)}'
        for u, p, used, _ in users
    ]
    help_ = "Credits left in the user's current budget period" + _FLEET
    name = "ruxa_gateway_budget_remaining_credits"
    out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
    out += [
        f'{name}{{period="{p}",user="{u}"}} {_number(left)}'
        for u, p, _, left in users
        if left is not None
    ]
    gauges = [
        (
            "ruxa_gateway_state_degraded",
            "1 when the shared state did not answer this scrape: the spend figures are the last "
            "known ones (see ruxa_gateway_spend_age_seconds)",
            1.0 if snap.degraded else 0.0,
        )
    ]
    if snap.shared:
        gauges.append(
            (
                "ruxa_gateway_spend_age_seconds",
                "Seconds since the spend figures were read from the shared state (about 0 when "
                "fresh, +Inf before a first read)",
                math.inf if snap.age is None else snap.age,
            )
        )
        if snap.indexed is not None:
            gauges.append(
                (
                    "ruxa_gateway_users_indexed",
                    "Users with a reservation in the shared state's index; the spend gauges list "
                    f"the configured users and at most {LISTED_USERS:,} of the most recently "
                    "active others",
                    float(snap.indexed),
                )
            )
    for name, text, value in gauges:
        out += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {_number(value)}"]
    if snap.shared:
        counters = [
            (
                "ruxa_gateway_instance_reserved_credits_total",
                "Credits reserved by creates through this instance; sum() across instances adds up",
                snap.reserved_here,
            ),
            (
                "ruxa_gateway_instance_spend_credits_total",
                "Credits this instance booked as spent in the shared ledgers (settlements, "
                "charged failed creates, expired holds); each credit is booked by one instance, "
                "so sum() across instances is the fleet's spend",
                snap.spent_here,
            ),
        ]
        for name, text, values in counters:
            out += [f"# HELP {name} {text}", f"# TYPE {name} counter"]
            out += [
                f'{name}{{user="{u}"}} {_number(v)}'
                for u, v in sorted((_label(u), v) for u, v in values.items())
            ]
    out.append("")
    return "\n".join(out).encode()


def _label(value: str) -> str:
    """A label value escaped for the text format."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))
