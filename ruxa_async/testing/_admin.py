"""``/_sim``: inspection and control of a running simulator over HTTP (no auth).

Built only on :class:`FakeRuxa`'s public methods (the :class:`Controls` it
offers), for simulators running in another process (benchmarks, the
``simulate`` command).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from aiohttp import web

from ._config import SimConfig, config_changes, config_to_dict
from ._outage import OutageMode
from ._records import TaskRecord
from ._stats import SimStats

__all__ = ["Controls", "admin_routes", "summarize"]


class Controls(Protocol):
    """What the ``/_sim`` routes inspect and control: a simulator's public face."""

    @property
    def config(self) -> SimConfig:
        """The configuration in force."""
        ...

    @property
    def down(self) -> OutageMode | None:
        """The outage mode in force, or None while serving."""
        ...

    @property
    def outage_remaining(self) -> float | None:
        """Seconds until a timed outage ends by itself."""
        ...

    def stats(self) -> SimStats:
        """A frozen snapshot of the counters."""
        ...

    def tasks(self) -> list[TaskRecord]:
        """Every task record, in creation order."""
        ...

    def reset(self) -> None:
        """Forget every task, counter and pending callback."""
        ...

    def reconfigure(self, **changes: Any) -> None:
        """Apply configuration changes while running."""
        ...

    async def outage(self, mode: OutageMode = "refuse", seconds: float | None = None) -> None:
        """Take the API down."""
        ...

    async def restore(self) -> None:
        """End an outage now."""
        ...


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(value).encode(), status=status, content_type="application/json")


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "") not in ("", "0", "false")


def summarize(records: Sequence[TaskRecord], now: float) -> dict[str, Any]:
    """Counts of ``records`` by model, by outcome and by state at monotonic ``now``."""
    return {
        "count": len(records),
        "by_model": dict(Counter(record.model for record in records)),
        "by_outcome": dict(Counter(record.outcome for record in records)),
        "by_state": dict(Counter(record.state_at(now) for record in records)),
        "queries": sum(record.query_count for record in records),
        "callbacks_delivered": sum(record.callbacks_delivered for record in records),
        "first_created_at": records[0].created_at if records else None,
        "last_created_at": records[-1].created_at if records else None,
    }


def admin_routes(fake: Controls) -> list[web.RouteDef]:
    """The ``/_sim`` routes.

    ``GET /_sim/stats`` (the per-100 ms ``series`` only with ``?series=1``, so
    frequent pollers do not pay for it); ``GET /_sim/tasks`` (every record, or
    a page with ``?offset=&limit=`` and the total in ``X-Total-Count``, or
    counts only with ``?summary=1``); ``GET`` and ``POST /_sim/config``;
    ``POST /_sim/reset`` (forget every task and counter, keep the configuration);
    ``GET`` and ``POST /_sim/outage`` (take the API down for a while, see ``_outage``).
    """

    def config_view() -> dict[str, Any]:
        view = config_to_dict(fake.config)
        view["credits_balance"] = fake.stats().credits_balance
        return view

    async def stats(request: web.Request) -> web.Response:
        data = fake.stats().to_dict()
        if not _flag(request, "series"):
            del data["series"]
        return _json(data)

    async def tasks(request: web.Request) -> web.Response:
        records = fake.tasks()
        query = request.query
        if _flag(request, "summary"):
            return _json(summarize(records, time.monotonic()))
        try:
            offset = int(query.get("offset", 0))
            limit = int(query["limit"]) if "limit" in query else len(records)
        except ValueError:
            return _json({"error": "offset and limit must be integers"}, 400)
        if offset < 0 or limit < 0:
            return _json({"error": "offset and limit must not be negative"}, 400)
        page = records[offset : offset + limit]
        reply = _json([record.to_dict() for record in page])
        reply.headers["X-Total-Count"] = str(len(records))
        return reply

    async def reset(request: web.Request) -> web.Response:
        fake.reset()
        return _json(fake.stats().to_dict())

    async def get_config(request: web.Request) -> web.Response:
        return _json(config_view())

    async def set_config(request: web.Request) -> web.Response:
        try:
            patch = json.loads(await request.read())
        except ValueError as exc:
            return _json({"error": f"the body is not JSON: {exc}"}, 400)
        if not isinstance(patch, dict):
            return _json({"error": "the body must be a JSON object"}, 400)
        try:
            fake.reconfigure(**config_changes(fake.config, patch))
        except (ValueError, TypeError) as exc:
            return _json({"error": str(exc)}, 400)
        return _json(config_view())

    def outage_view() -> dict[str, Any]:
        return {"mode": fake.down, "remaining": fake.outage_remaining}

    async def get_outage(request: web.Request) -> web.Response:
        return _json(outage_view())

    async def set_outage(request: web.Request) -> web.StreamResponse:
        """``{"mode": "refuse"|"drop"|"up", "seconds": N}``; "refuse" needs ``seconds``."""
        try:
            body = json.loads(await request.read())
            mode = body["mode"]
            seconds = None if body.get("seconds") is None else float(body["seconds"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return _json({"error": f"expected {{mode, seconds}}: {exc}"}, 400)
        if mode == "refuse" and seconds is None:
            return _json({"error": "a refuse outage closes this port too: give its seconds"}, 400)
        if mode == "up":
            await fake.restore()
            return _json(outage_view())
        if mode not in ("refuse", "drop"):
            return _json({"error": f"mode must be refuse, drop or up, got {mode!r}"}, 400)
        # reply first: a refuse outage cuts this very connection
        reply = _json({"mode": mode, "remaining": seconds})
        reply.force_close()
        await reply.prepare(request)
        await reply.write_eof()
        await fake.outage(mode, seconds)
        return reply

    return [
        web.get("/_sim/outage", get_outage),
        web.post("/_sim/outage", set_outage),
        web.get("/_sim/stats", stats),
        web.get("/_sim/tasks", tasks),
        web.get("/_sim/config", get_config),
        web.post("/_sim/config", set_config),
        web.post("/_sim/reset", reset),
    ]
