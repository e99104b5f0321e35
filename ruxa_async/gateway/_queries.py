"""The gateway's read side: who the caller is, and the caller's own tasks.

:class:`Queries` is the base of :class:`~ruxa_async.gateway.Gateway` (``_gateway``)
and holds its query path: identifying callers (and refusing them), the ownership
cache in front of the store, and the last reply shown for each task being polled.
As a base class it costs a request no extra call.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from .. import _wire
from .._client import send_once
from .._errors import (
    AuthenticationError,
    InsufficientCreditsError,
    NotFoundError,
    RateLimitError,
    RuxaError,
)
from ._counters import Counters
from ._keys import KeyPool
from ._policy import Denial, RateBuckets, Reply
from ._relay import scrub_task
from ._settle import Settler
from ._store import GatewayFleet, StateStore, StateUnavailableError, TaskRecord
from ._tokens import Identity, TokenVerifier

__all__ = ["Queries"]

_TASK_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
_NOT_FOUND = "task not found"
_OWNER_CACHE = 50_000
_SHOWN_CACHE = 4096


class _Shown:
    """What a task's owner was last shown: the service's task object and the reply made of it
    (an unchanged task is answered with the same reply, encoded once)."""

    __slots__ = ("data", "path", "reply")

    def __init__(self, path: str, data: object, reply: Reply) -> None:
        self.path = path
        self.data = data
        self.reply = reply


class Queries:
    """A gateway's callers and their tasks (the gateway sets the parts annotated here)."""

    store: StateStore
    counters: Counters
    verifier: TokenVerifier
    rates: RateBuckets
    pool: KeyPool
    _fleet: GatewayFleet | None
    _settler: Settler

    def __init__(self) -> None:
        # Who owns a task and which key made it never change once written: the query path
        # reads them here, in front of the store (which may be a network away).
        self._records: OrderedDict[str, TaskRecord] = OrderedDict()
        # The last answer to each task's owner, by task id (for tasks being polled).
        self._shown: dict[str, _Shown] = {}

    def deny(self, denial: Denial, user: str | None, **detail: Any) -> Reply:
        """Count, audit and answer one refusal."""
        self.counters.denials[denial.reason] += 1
        self.store.audit("denied", user, reason=denial.reason, code=denial.code, **detail)
        return Reply.of(denial)

    def identify(self, header: str | None) -> Identity | Reply:
        """The caller, or the 401 reply."""
        who = self.verifier.identify(header)
        if who is None:
            self.counters.denials["auth"] += 1
            self.store.audit("denied", None, reason="auth", code=401)
            return Reply(401, "a valid gateway token is required (Authorization: Bearer <token>)")
        limited = self.rates.take(who.user, who.policy)
        if limited is not None:
            return self.deny(limited, who.user)
        return who

    async def query(self, header: str | None, task_id: str) -> Reply:
        """The caller's own task; anybody else's (or an unknown id) is the same 404."""
        who = self.identify(header)
        if isinstance(who, Reply):
            return who
        rate = who.policy.requests_per_second
        if self._fleet is not None and rate is not None:  # the user's rate across instances
            limited = await self._fleet.request(who.user, rate, who.policy.burst)
            if limited is not None:
                return self.deny(limited, who.user)
        # An id shown before passed the check below (only a found record is ever shown).
        if task_id not in self._shown and not _TASK_ID.fullmatch(task_id):
            record = None
        else:
            record = self._records.get(task_id)
            if record is None:
                try:
                    record = await self.record(task_id)
                except StateUnavailableError as exc:
                    return Reply(503, exc.message, None, exc.retry_after)
        if record is None or record.user != who.user:
            if record is not None:
                self.counters.ownership_refusals += 1
                self.store.audit("ownership_refused", who.user, task_id, owner=record.user)
            else:
                self.store.audit("unknown_task", who.user, None, task=task_id[:200])
            self.counters.denials["not_found"] += 1
            return Reply(404, _NOT_FOUND)
        shown = self._shown.get(task_id)
        if record.final is not None:
            if shown is not None and shown.data is record.final:
                return shown.reply
            reply = Reply(200, "success", record.final)
            self._show(task_id, _wire.query_path(task_id), record.final, reply)
            return reply
        slot = self.pool.get(record.key)
        if slot is None:
            return Reply(503, "the key that created this task is no longer configured")
        path = shown.path if shown is not None else _wire.query_path(task_id)
        try:
            client = slot.open_client()
            if client is None:  # the key's first request opens its client
                client = await slot.ready()
            data = await send_once(client, "query", path)
            # Unchanged (the same object when the reply's bytes were): it has not ended either.
            if shown is not None and (data is shown.data or data == shown.data):
                return shown.reply
            ended = _wire.task_state(data).is_terminal  # parsed whole only when it has ended
            info = _wire.parse_task(data, task_id=task_id) if ended else None
        except NotFoundError:
            return Reply(404, _NOT_FOUND)
        except (AuthenticationError, InsufficientCreditsError, RateLimitError) as exc:
            self.pool.failed(slot, exc)
            if isinstance(exc, RateLimitError):
                return Reply(
                    429,
                    "the service is rate limiting; retry after the pause",
                    None,
                    exc.retry_after or 1.0,
                )
            return Reply(503, "the gateway's key was refused; the operator has been alerted")
        except RuxaError:
            return Reply(502, "the service did not answer properly; retry")
        if info is not None:
            self._settler.settle(record, info, "query")
            return Reply(200, "success", scrub_task(data, record.callback_url))
        reply = Reply(200, "success", scrub_task(data, record.callback_url))
        self._show(task_id, path, data, reply)
        return reply

    def _show(self, task_id: str, path: str, data: object, reply: Reply) -> None:
        shown = self._shown
        shown.pop(task_id, None)
        shown[task_id] = _Shown(path, data, reply)
        if len(shown) > _SHOWN_CACHE:
            del shown[next(iter(shown))]  # the least recently changed

    async def record(self, task_id: str) -> TaskRecord | None:
        """The task's record: from the ownership cache, else the store (then cached)."""
        record = self._records.get(task_id)
        if record is not None:
            return record
        record = await self.store.lookup(task_id)
        if record is not None:
            self.remember(record)
        return record

    def remember(self, record: TaskRecord) -> None:
        """Keep ``record`` in the ownership cache (the oldest entries make room)."""
        self._records[record.task_id] = record
        if len(self._records) > _OWNER_CACHE:
            self._records.popitem(last=False)
