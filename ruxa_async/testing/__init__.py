"""A faithful local Ruxa API for tests, demos and benchmarks.

:class:`FakeRuxa` serves the create, query and result-file endpoints on a real
loopback socket, keeps every task's state (computed from the clock), charges
credits, rate-limits, injects faults and delivers callbacks, all as configured
by a frozen :class:`SimConfig`::

    async with FakeRuxa(SimConfig(credits=100)) as fake:
        client = RuxaClient(api_key=fake.api_key, base_url=fake.url)
        ...
        assert fake.stats().duplicate_creates == 0

``python -m ruxa_async.testing`` runs one as a standalone process; its
``/_sim/stats``, ``/_sim/tasks``, ``/_sim/config`` and ``/_sim/reset`` endpoints
expose the same inspection and control over HTTP.

What the simulator accepts comes from the wire reference, not from the SDK's
catalogue (:class:`InputRules` plays each reading where the reference is unsure),
so tests against it can catch a catalogue mistake.
"""

from __future__ import annotations

from ._config import CallbackDelivery, Dialect, Faults, ModelBehavior, RateLimit, SimConfig
from ._records import TaskRecord
from ._rules import InputRules
from ._server import FakeRuxa, serve
from ._stats import RateSeries, SimStats

__all__ = [
    "CallbackDelivery",
    "Dialect",
    "FakeRuxa",
    "Faults",
    "InputRules",
    "ModelBehavior",
    "RateLimit",
    "RateSeries",
    "SimConfig",
    "SimStats",
    "TaskRecord",
    "serve",
]
