"""Settlement: booking what a finished task cost, once, and telling its owner, once.

A task's end is learned from Ruxa's callback, from the owner's own query, or
from the sweeper that checks tasks nobody asked about; whichever comes first
settles the reservation and queues the relay to the owner's ``callBackUrl``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .._errors import RuxaError
from .._models import TaskInfo
from ._keys import KeySlot
from ._policy import Reply
from ._relay import relay_body, scrub_task
from ._store import StateUnavailableError, TaskRecord

if TYPE_CHECKING:
    from ._view import GatewayView

__all__ = ["Settler"]

log = logging.getLogger("ruxa_async")

_SWEEP_CONCURRENCY = 16


class Settler:
    """Settles a :class:`~ruxa_async.gateway.Gateway`'s tasks and relays their outcome."""

    def __init__(self, gw: GatewayView) -> None:
        self._gw = gw

    def _cost(self, record: TaskRecord, info: TaskInfo) -> float:
        reported = info.raw.get("consumeCredits")
        if isinstance(reported, (int, float)) and not isinstance(reported, bool) and reported >= 0:
            return float(reported)
        return record.reserved if info.succeeded or self._gw.config.charge_failed else 0.0

    def settle(self, record: TaskRecord, info: TaskInfo, source: str) -> None:
        """Book a finished task's cost once, then relay its outcome to the owner once."""
        state = "success" if info.succeeded else "fail"
        final = scrub_task(info.raw, record.callback_url)
        if "resultJson" not in final:  # a flat callback: rebuild the query shape
            final = {
                "taskId": info.task_id,
                "model": record.model,
                "state": info.raw_state or state,
                "resultJson": json.dumps(info.result) if info.result else "",
                "failCode": info.fail_code or "",
                "failMsg": info.fail_msg or "",
            }
        settled = self._gw.store.settle(record.task_id, self._cost(record, info), state, final)
        if settled is not None:
            self._gw.pool.closed(settled.key)
            self._gw.counters.settled += 1
            self._gw.store.audit(
                "settled",
                settled.user,
                settled.task_id,
                cost=settled.cost,
                state=state,
                source=source,
            )
        if record.callback_url and self._gw.store.claim_relay(record, state):
            secret = self._gw.verifier.webhook_secret(record.user)
            body = json.dumps(
                relay_body(info.raw, info.succeeded, record.callback_url),
                ensure_ascii=False,
                separators=(",", ":"),
            ).encode()
            self._gw.relay.send(record.callback_url, record.task_id, state, body, secret)

    async def upstream_callback(self, token: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Ruxa's own callback: check the secret path and (optional) HMAC, settle, relay."""
        from ..webhooks import parse_callback_request

        if not hmac.compare_digest(token.encode(), self._gw.callback_token.encode()):
            self._gw.store.audit("callback_rejected", reason="token")
            return Reply(401, "unknown callback address")
        try:
            info = parse_callback_request(
                body,
                headers,
                hmac_key=self._gw.config.callbacks.upstream_hmac_key,
                max_body=self._gw.config.max_body,
            )
        except RuxaError as exc:
            status = getattr(exc, "http_status", 400)
            self._gw.store.audit("callback_rejected", reason=getattr(exc, "reason", "body"))
            return Reply(status, str(exc))
        try:
            record = await self._gw.record(info.task_id)
        except StateUnavailableError as exc:
            return Reply(503, exc.message, None, exc.retry_after)  # Ruxa retries its callback
        if record is not None and info.is_terminal:
            self.settle(record, info, "callback")
        return Reply(200, "ok")

    async def sweep_forever(self) -> None:
        slots = asyncio.Semaphore(_SWEEP_CONCURRENCY)
        while True:
            await asyncio.sleep(self._gw.config.sweep_interval)
            horizon = self._gw.clock() - self._gw.config.settle_after
            due = [r for r in self._gw.store.open_tasks() if r.created <= horizon]
            await asyncio.gather(*(self._sweep_one(r, slots) for r in due))

    async def _sweep_one(self, record: TaskRecord, slots: asyncio.Semaphore) -> None:
        slot: KeySlot | None = self._gw.pool.get(record.key)
        if slot is None:
            return
        async with slots:
            try:
                info = await (await slot.ready()).get_task(record.task_id)
            except RuxaError as exc:
                log.debug("gateway sweep: %s not checked: %s", record.task_id, exc)
                return
        if info.is_terminal:
            self.settle(record, info, "sweep")

    async def sweep(self) -> None:
        """Check every open task once now (the background sweeper does this periodically)."""
        slots = asyncio.Semaphore(_SWEEP_CONCURRENCY)
        await asyncio.gather(*(self._sweep_one(r, slots) for r in self._gw.store.open_tasks()))
