"""Fleets on Redis: :class:`RedisCoordinator` shares one account's state between processes.

Needs the ``redis`` extra: ``pip install "ruxa-async[redis]"``.
"""

from __future__ import annotations

try:
    import redis.asyncio  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError('ruxa_async.redis needs redis-py: pip install "ruxa-async[redis]"') from exc

from ._coordinator import RedisCoordinator

__all__ = ["RedisCoordinator"]
