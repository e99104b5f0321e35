"""Admission: the checks a create passes, the reservation it holds, the key that makes it.

Everything between a user's create and the task id they get back: the body,
the model and input rules, the callback URL, the price, the atomic
reservation (in-flight cap and budgets), then the upstream create on a
healthy key, with another key tried after a 401, 402 or 429.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

import attrs

from .. import _wire
from .._client import send_once
from .._errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    InsufficientCreditsError,
    InvalidInputError,
    MalformedResponseError,
    RateLimitError,
    RuxaError,
    ValidationError,
)
from ..catalog import get_model
from ._policy import Denial, Reply, check_callback_url, check_request, estimate, window_bounds
from ._store import Reservation, Scope
from ._tokens import Identity

if TYPE_CHECKING:
    from ._keys import KeySlot
    from ._view import GatewayView

__all__ = ["Admission"]

_LEDGERS_KEPT = 4096  # callers' ledger tuples remembered (all forgotten when full)
_DAY = 86_400


class Admission:
    """Creates tasks for a :class:`~ruxa_async.gateway.Gateway`'s callers."""

    def __init__(self, gw: GatewayView) -> None:
        self._gw = gw
        self._ledgers: dict[tuple[object, ...], tuple[Scope, ...]] = {}
        # Each user's latest identity, UTC day and ledgers (every budget period is whole days).
        self._last: dict[str, tuple[Identity, int, tuple[Scope, ...]]] = {}
        self._callback: tuple[str | None, str | None] = (None, None)  # (public URL, its inbox)

    def _callback_url(self) -> str | None:
        """Where Ruxa sends this gateway its callbacks (None without a public URL)."""
        public = self._gw.public_url
        if public != self._callback[0]:
            inbox = f"{public}/_gateway/callback/{self._gw.callback_token}" if public else None
            self._callback = (public, inbox)
        return self._callback[1]

    def _scopes(self, who: Identity, now: float) -> tuple[Scope, ...]:
        """The ledgers a create of ``who`` is booked on (the same few, made once each)."""
        day = math.floor(now / _DAY)
        last = self._last.get(who.user)
        if last is not None and last[0] is who and last[1] == day:
            return last[2]  # the same caller (an immutable identity) on the same UTC day
        scopes = self._made_scopes(who, now)
        if len(self._last) >= _LEDGERS_KEPT:
            self._last.clear()
        self._last[who.user] = (who, day, scopes)
        return scopes

    def _made_scopes(self, who: Identity, now: float) -> tuple[Scope, ...]:
        period, _ = window_bounds(who.policy.window, now)
        key = (who.user, period, who.policy.budget, who.scope, who.token_budget)
        scopes = self._ledgers.get(key)
        if scopes is None:
            made = [Scope(f"user:{who.user}", period, who.policy.budget)]
            if who.scope is not None:
                made.append(Scope(who.scope, "life", who.token_budget))
            if len(self._ledgers) >= _LEDGERS_KEPT:
                self._ledgers.clear()
            scopes = self._ledgers[key] = tuple(made)
        return scopes

    async def create(self, header: str | None, body: object) -> Reply:
        """Create a task for the caller, if their policy and budget allow it.

        ``body`` is the decoded JSON request body (None when it was not JSON).
        """
        gw = self._gw
        who = gw.identify(header)
        if isinstance(who, Reply):
            return who
        if not isinstance(body, dict):
            return gw.deny(
                Denial(400, "body", "the body must be a JSON object {model, input, callBackUrl?}"),
                who.user,
            )
        model, input, user_url = body.get("model"), body.get("input"), body.get("callBackUrl")
        if user_url is None:
            user_url = body.get("callback_url")
        if not isinstance(model, str) or not model or not isinstance(input, dict):
            return gw.deny(
                Denial(422, "body", "the body needs model (a string) and input (an object)"),
                who.user,
            )
        policy = who.policy
        denial = check_request(policy, model, input)
        if denial is None and user_url is not None:
            denial = check_callback_url(user_url, allow_private=gw.config.callbacks.allow_private)
            if denial is None and gw.public_url is None:
                denial = Denial(
                    422,
                    "callback_url",
                    "this gateway cannot relay callbacks (its public_url is not set); poll instead",
                )
        if denial is not None:
            return gw.deny(denial, who.user, model=model)
        cost = estimate(model, input, gw.config.prices)
        if cost is None and (policy.budget is not None or who.token_budget is not None):
            return gw.deny(
                Denial(403, "price", f"no price is known for {model!r}, so no budget can cover it"),
                who.user,
                model=model,
            )
        rps = policy.requests_per_second
        store = gw.store
        held = await store.areserve(
            who.user,
            cost or 0.0,
            self._scopes(who, gw.clock()),
            policy.max_in_flight,
            rate=None if rps is None else (rps, policy.burst),
        )
        if isinstance(held, Denial):
            if held.reason == "in_flight":
                spec = get_model(model)
                typical = spec.typical_seconds if spec is not None else 10.0
                held = attrs.evolve(held, retry_after=min(30.0, max(1.0, typical / 2)))
            return gw.deny(held, who.user, model=model)
        for scope in held.scopes:
            if scope.limit:
                self._budget_alert(scope)
        # The upstream create: each key once, then pick() says why not.
        try:
            body = _wire.build_create_body(model, input, self._callback_url())
        except InvalidInputError as exc:
            store.release(held, charge=False)
            return gw.deny(Denial(422, "input", str(exc)), who.user, model=model)
        pool = gw.pool
        for _ in range(len(pool) + 1):
            slot = pool.pick()
            if isinstance(slot, Denial):
                store.release(held, charge=False)
                return gw.deny(slot, who.user, model=model)
            try:
                client = slot.open_client()
                if client is None:  # the key's first request opens its client
                    client = await slot.ready()
                task_id = _wire.parse_task_id(
                    await send_once(client, "create", _wire.CREATE_PATH, body)
                )
            except (APIConnectionError, APIStatusError, MalformedResponseError) as exc:
                refused = self._refused(who, held, model, slot, exc)
                if refused is None:
                    continue  # another key may take it
                return refused
            except asyncio.CancelledError:
                store.release(held, charge=True)
                raise
            user = who.user
            store.audit(  # before the commit: one transaction holds both
                "created", user, task_id, model=model, key=slot.name, reserved=held.amount
            )
            gw.remember(await store.acommit(held, task_id, slot.name, model, user_url))
            pool.opened(slot.name)
            gw.counters.created[user] += 1
            jump = gw.spend_watch.add(user, held.amount)
            if jump is not None:
                gw.alerter.spend_jump(user, *jump)
            return Reply.created(task_id)
        store.release(held, charge=False)
        return gw.deny(
            Denial(503, "no_key", "no upstream key accepted the task; retry later"), who.user
        )

    def _refused(
        self, who: Identity, held: Reservation, model: str, slot: KeySlot, exc: RuxaError
    ) -> Reply | None:
        """The answer to a create the service did not take, or None to try another key."""
        gw = self._gw
        if isinstance(exc, (AuthenticationError, InsufficientCreditsError, RateLimitError)):
            gw.pool.failed(slot, exc)
            return None
        if isinstance(exc, APIConnectionError):
            return None if not exc.request_sent else self._ambiguous(who, held, model, exc)
        if isinstance(exc, ValidationError):
            gw.store.release(held, charge=False)
            return gw.deny(Denial(422, "upstream_validation", exc.message), who.user)
        if isinstance(exc, APIStatusError) and exc.code is not None and exc.code < 500:
            gw.store.release(held, charge=False)
            return Reply(502, f"the service refused the task ({exc.code})")
        return self._ambiguous(who, held, model, exc)

    def _ambiguous(self, who: Identity, held: Reservation, model: str, exc: Exception) -> Reply:
        self._gw.store.release(held, charge=True)
        self._gw.store.audit("create_ambiguous", who.user, model=model, error=type(exc).__name__)
        return Reply(
            502,
            "the service failed mid-create; the task may exist, and its estimate was charged to "
            "your budget",
        )

    def _budget_alert(self, scope: Scope) -> None:
        spent, reserved = self._gw.store.usage(scope.name, scope.period)
        self._gw.alerter.budget(scope.name, scope.period, spent + reserved, scope.limit)
