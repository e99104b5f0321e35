"""Admission: the checks a create passes, the reservation it holds, the key that makes it.

Everything between a user's create and the task id they get back: the body,
the model and input rules, the callback URL, the price, the atomic
reservation (in-flight cap and budgets), then the upstream create on a
healthy key, with another key tried after a 401, 402 or 429.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

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
    ValidationError,
)
from ..catalog import get_model
from ._policy import Denial, Reply, check_callback_url, check_request, estimate, window_bounds
from ._store import Reservation, Scope
from ._tokens import Identity

if TYPE_CHECKING:
    from ._view import GatewayView

__all__ = ["Admission"]

_LEDGERS_KEPT = 4096  # callers' ledger tuples remembered (all forgotten when full)


class Admission:
    """Creates tasks for a :class:`~ruxa_async.gateway.Gateway`'s callers."""

    def __init__(self, gw: GatewayView) -> None:
        self._gw = gw
        self._ledgers: dict[tuple[object, ...], tuple[Scope, ...]] = {}
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
        who = self._gw.identify(header)
        if isinstance(who, Reply):
            return who
        if not isinstance(body, dict):
            return self._gw.deny(
                Denial(400, "body", "the body must be a JSON object {model, input, callBackUrl?}"),
                who.user,
            )
        model, input, user_url = body.get("model"), body.get("input"), body.get("callBackUrl")
        if user_url is None:
            user_url = body.get("callback_url")
        if not isinstance(model, str) or not model or not isinstance(input, dict):
            return self._gw.deny(
                Denial(422, "body", "the body needs model (a string) and input (an object)"),
                who.user,
            )
        denial = check_request(who.policy, model, input)
        if denial is None and user_url is not None:
            denial = check_callback_url(
                user_url, allow_private=self._gw.config.callbacks.allow_private
            )
            if denial is None and self._gw.public_url is None:
                denial = Denial(
                    422,
                    "callback_url",
                    "this gateway cannot relay callbacks (its public_url is not set); poll instead",
                )
        if denial is not None:
            return self._gw.deny(denial, who.user, model=model)
        cost = estimate(model, input, self._gw.config.prices)
        if cost is None and (who.policy.budget is not None or who.token_budget is not None):
            return self._gw.deny(
                Denial(403, "price", f"no price is known for {model!r}, so no budget can cover it"),
                who.user,
                model=model,
            )
        rps = who.policy.requests_per_second
        held = await self._gw.store.areserve(
            who.user,
            cost or 0.0,
            self._scopes(who, self._gw.clock()),
            who.policy.max_in_flight,
            rate=None if rps is None else (rps, who.policy.burst),
        )
        if isinstance(held, Denial):
            if held.reason == "in_flight":
                spec = get_model(model)
                typical = spec.typical_seconds if spec is not None else 10.0
                held = attrs.evolve(held, retry_after=min(30.0, max(1.0, typical / 2)))
            return self._gw.deny(held, who.user, model=model)
        self._budget_alerts(held)
        return await self._create_upstream(who, held, model, input, user_url)

    async def _create_upstream(
        self,
        who: Identity,
        held: Reservation,
        model: str,
        input: dict[str, Any],
        user_url: str | None,
    ) -> Reply:
        upstream_url = self._callback_url()
        try:
            body = _wire.build_create_body(model, input, upstream_url)
        except InvalidInputError as exc:
            self._gw.store.release(held, charge=False)
            return self._gw.deny(Denial(422, "input", str(exc)), who.user, model=model)
        for _ in range(len(self._gw.pool) + 1):  # each key once, then pick() says why not
            slot = self._gw.pool.pick()
            if isinstance(slot, Denial):
                self._gw.store.release(held, charge=False)
                return self._gw.deny(slot, who.user, model=model)
            try:
                client = await slot.ready()
                task_id = _wire.parse_task_id(
                    await send_once(client, "create", _wire.CREATE_PATH, body)
                )
            except (AuthenticationError, InsufficientCreditsError, RateLimitError) as exc:
                self._gw.pool.failed(slot, exc)
                continue
            except APIConnectionError as exc:
                if not exc.request_sent:
                    continue
                return self._ambiguous(who, held, model, exc)
            except ValidationError as exc:
                self._gw.store.release(held, charge=False)
                return self._gw.deny(Denial(422, "upstream_validation", exc.message), who.user)
            except (APIStatusError, MalformedResponseError) as exc:
                if isinstance(exc, APIStatusError) and exc.code is not None and exc.code < 500:
                    self._gw.store.release(held, charge=False)
                    return Reply(502, f"the service refused the task ({exc.code})")
                return self._ambiguous(who, held, model, exc)
            except asyncio.CancelledError:
                self._gw.store.release(held, charge=True)
                raise
            self._gw.store.audit(  # before the commit: one transaction holds both
                "created", who.user, task_id, model=model, key=slot.name, reserved=held.amount
            )
            self._gw.remember(
                await self._gw.store.acommit(held, task_id, slot.name, model, user_url)
            )
            self._gw.pool.opened(slot.name)
            self._gw.counters.created[who.user] += 1
            jump = self._gw.spend_watch.add(who.user, held.amount)
            if jump is not None:
                self._gw.alerter.spend_jump(who.user, *jump)
            return Reply.created(task_id)
        self._gw.store.release(held, charge=False)
        return self._gw.deny(
            Denial(503, "no_key", "no upstream key accepted the task; retry later"), who.user
        )

    def _ambiguous(self, who: Identity, held: Reservation, model: str, exc: Exception) -> Reply:
        self._gw.store.release(held, charge=True)
        self._gw.store.audit("create_ambiguous", who.user, model=model, error=type(exc).__name__)
        return Reply(
            502,
            "the service failed mid-create; the task may exist, and its estimate was charged to "
            "your budget",
        )

    def _budget_alerts(self, held: Reservation) -> None:
        for scope in held.scopes:
            if scope.limit:
                spent, reserved = self._gw.store.usage(scope.name, scope.period)
                self._gw.alerter.budget(scope.name, scope.period, spent + reserved, scope.limit)
