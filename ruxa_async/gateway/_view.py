"""What the gateway's rooms (admission, settlement, HTTP) see of the gateway: one narrow view.

:class:`~ruxa_async.gateway.Gateway` satisfies :class:`GatewayView`. The rooms
type against this protocol instead of importing ``_gateway``, so the package's
imports run one way: the gateway imports its rooms, never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from ._alerts import Alerter, SpendWatch
from ._config import GatewayConfig
from ._counters import Counters
from ._keys import KeyPool
from ._policy import Denial, Reply
from ._relay import Relay
from ._store import StateStore, TaskRecord
from ._tokens import Identity, TokenVerifier

__all__ = ["GatewayView"]


class GatewayView(Protocol):
    """The parts of a gateway that its admission, settlement and HTTP rooms use."""

    config: GatewayConfig
    clock: Callable[[], float]
    store: StateStore
    pool: KeyPool
    counters: Counters
    verifier: TokenVerifier
    relay: Relay
    alerter: Alerter
    spend_watch: SpendWatch
    public_url: str | None
    callback_token: str

    async def record(self, task_id: str) -> TaskRecord | None:
        """The task's record (ownership cached in front of the store)."""

    def remember(self, record: TaskRecord) -> None:
        """Cache a task's record."""

    def identify(self, header: str | None) -> Identity | Reply:
        """The caller, or the 401 (or 429) reply."""

    def deny(self, denial: Denial, user: str | None, **detail: Any) -> Reply:
        """Count, audit and answer one refusal."""

    def create(self, header: str | None, body: object) -> Coroutine[Any, Any, Reply]:
        """Create a task for the caller (await it)."""

    async def query(self, header: str | None, task_id: str) -> Reply:
        """The caller's own task."""

    async def upstream_callback(self, token: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Ruxa's own callback."""

    def usage(self) -> dict[str, tuple[float, float | None]]:
        """Per user: credits used in the current window, and what is left."""

    def mint_token(self, user: str, **options: Any) -> str:
        """A scoped token signed with this gateway's secret."""
