"""A key-holding gateway: browsers and apps use Ruxa through it and never see the key.

It speaks the Ruxa API itself (``POST /api/v1/tasks/create``,
``GET /api/v1/tasks/query/{taskId}``, the same envelope), so any Ruxa client
works through it with a *user* token as its key::

    config = load_config("gateway.toml")
    async with Gateway(config) as gateway:
        url = await gateway.listen("127.0.0.1", 8080)
        ...

Behind it, one client per real Ruxa key. In front of it: per-user tokens (from
the config, stored hashed) or short-lived scoped tokens from :func:`mint_token`;
task ownership (another user's task is a 404); per-user models, input rules,
budgets reserved at create, in-flight caps and request rates; callback relay
signed per Standard Webhooks; an append-only audit log, metrics and alerts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._config import (
    AlertSettings,
    CallbackSettings,
    GatewayConfig,
    Policy,
    StateSettings,
    UpstreamKey,
    UserEntry,
    hash_token,
    load_config,
    parse_config,
)
from ._gateway import Gateway, Reply
from ._metrics import GatewayStatistics
from ._relay import sign_webhook, verify_webhook
from ._store import GatewayFleet, SQLiteStore, StateStore, StateUnavailableError
from ._tokens import Identity, mint_token, new_user_token

if TYPE_CHECKING:
    from ._redis_store import RedisStore

__all__ = [
    "AlertSettings",
    "CallbackSettings",
    "Gateway",
    "GatewayConfig",
    "GatewayFleet",
    "GatewayStatistics",
    "Identity",
    "Policy",
    "RedisStore",
    "Reply",
    "SQLiteStore",
    "StateSettings",
    "StateStore",
    "StateUnavailableError",
    "UpstreamKey",
    "UserEntry",
    "hash_token",
    "load_config",
    "mint_token",
    "new_user_token",
    "parse_config",
    "sign_webhook",
    "verify_webhook",
]


def __getattr__(name: str) -> object:
    if name == "RedisStore":  # imported on use: it needs the `redis` extra
        from ._redis_store import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
