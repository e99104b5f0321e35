"""The one request path of a client: outage gate, rate permit, fleet hooks, transport, reply.

Every API request a client makes (creates, checks, the outage gate's probes)
goes through :meth:`Requester.send`: it waits while the outage gate is
closed, takes a permit from the rate controller (and, in a fleet that shares
its rate, from the fleet), sends through the transport, parses the reply and
tells the rate controller, the fleet and the outage gate what happened. A
failure that closed (or met) the outage gate is sent again once it opens,
unless it was a create that may have reached the service.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import _wire
from ._config import Kind
from ._errors import (
    APIConnectionError,
    APIStatusError,
    MalformedResponseError,
    RateLimitError,
    RuxaError,
)
from ._fleet import Fleet
from ._limiter import Permit, RateController
from ._models import RequestEvent, TaskInfo
from ._outage import OutageCoordinator
from ._ratehints import parse_rate_headers
from ._tally import Tally
from ._transport import Transport

__all__ = ["Requester"]

log = logging.getLogger("ruxa_async")
_PROBE_PATH = _wire.query_path("ruxa-async-probe")
_GATED = object()  # an attempt that found the outage gate closed once it had its permit


class Requester:
    """Sends a client's requests, one path for all of them; counts creates and queries.

    ``require_open`` raises unless the client may talk to the service;
    ``on_request`` is the client's event hook (see ``RuxaClient``).
    """

    def __init__(
        self,
        *,
        transport: Transport,
        limiter: RateController,
        outage: OutageCoordinator,
        fleet: Fleet,
        require_open: Callable[[], None],
        on_request: Callable[[RequestEvent], None] | None,
    ) -> None:
        self.transport = transport
        self._limiter = limiter
        self._outage = outage
        self._fleet = fleet
        self._require_open = require_open
        self._on_request = on_request
        self.counts = {"create": 0, "query": 0}

    async def send(
        self,
        kind: Kind,
        method: str,
        path: str,
        body: bytes | None = None,
        tally: Tally | None = None,
        sending: Callable[[], Awaitable[None]] | None = None,
        failed: Callable[[BaseException], None] | None = None,
    ) -> Any:
        """One request, waiting first while the outage gate is closed.

        A failure that closed (or met) the gate is sent again once it opens,
        unless it was a create that may have reached the service: the retry
        policy decides about those. ``sending`` and ``tally``: see :meth:`_attempt`;
        ``failed`` is told a create refused before it was sent (nothing was created).
        """
        self._require_open()
        outage = self._outage
        while True:
            if not outage.is_open():
                await outage.wait_open(self._probe)
            try:
                data = await self._attempt(kind, method, path, body, tally=tally, sending=sending)
            except APIConnectionError as exc:
                if outage.on_failure(exc) and (kind == "query" or not exc.request_sent):
                    if failed is not None and kind == "create":
                        failed(exc)
                    continue
                raise
            if data is not _GATED:
                return data

    async def check(self, task_id: str, tally: Tally | None = None) -> TaskInfo:
        """Fetch one task's state once (no retries: the caller decides)."""
        data = await self.send("query", "GET", _wire.query_path(task_id), None, tally)
        info = _wire.parse_task(data, task_id=task_id)
        self._fleet.outcome(info)  # settles the task's credit reservation
        return info

    async def _attempt(
        self,
        kind: Kind,
        method: str,
        path: str,
        body: bytes | None,
        *,
        tally: Tally | None = None,
        sending: Callable[[], Awaitable[None]] | None = None,
        probe: bool = False,
    ) -> Any:
        """One attempt: permit from the rate controller, the request, the parsed reply.

        Returns ``_GATED`` without sending when the outage gate closed while
        this attempt waited for its permit. ``sending`` is awaited once the
        permit is granted, right before the request goes out (it may raise to
        send nothing); ``tally`` counts the attempt for its owner (a batch).
        """
        fleet = self._fleet if self._fleet.shares_rate else None
        async with self._limiter.permit(kind) as permit:
            if not (probe or self._outage.is_open()):
                return _GATED
            if sending is not None:
                await sending()
            if fleet is not None:
                await fleet.sending(kind)
            self.counts[kind] += 1
            if tally is not None:
                tally.requests_sent += 1
            try:
                reply = await self.transport.request(method, path, body)
            except RuxaError:
                if self._on_request is not None:
                    self._observe(kind, path, permit, None)
                raise
        self._outage.on_reply()
        hint = parse_rate_headers(reply.rate_headers) if reply.rate_headers else None
        try:
            data = _wire.parse_reply(reply.status, reply.body, reply.retry_after)
        except RateLimitError as exc:
            if self._on_request is not None:  # stamped before the gate closes
                self._observe(kind, path, permit, 429)
            await self._limiter.on_rate_limited(permit, exc.retry_after, hint)
            if tally is not None:
                tally.rate_limited += 1
            raise
        except APIStatusError as exc:
            await self._limiter.on_success(permit, hint)
            if self._on_request is not None:
                self._observe(kind, path, permit, exc.code or exc.http_status)
            raise
        except RuxaError:
            if self._on_request is not None:
                self._observe(kind, path, permit, reply.status)
            raise
        await self._limiter.on_success(permit, hint)
        if self._on_request is not None:
            self._observe(kind, path, permit, 200)
        return data

    async def _probe(self) -> None:
        """The outage gate's probe: a query for a task that does not exist; any reply will do."""
        with contextlib.suppress(APIStatusError, MalformedResponseError):
            await self._attempt("query", "GET", _PROBE_PATH, None, probe=True)

    def _observe(self, kind: Kind, path: str, permit: Permit, code: int | None) -> None:
        event = RequestEvent(
            kind=kind, path=path, sent_at=permit.granted_at, replied_at=time.monotonic(), code=code
        )
        try:
            self._on_request(event)  # type: ignore[misc]
        except Exception:
            log.exception("the on_request callback raised; ignoring")
