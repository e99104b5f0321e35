"""Creating a task: retries, a callback token per attempt, and recovery of ambiguous attempts.

A create that fails after it may have reached the service (a 5xx, a timeout
after sending) is *ambiguous*: a task may exist. With the client's own
callback receiver, each attempt carries its own token in the callback URL
(``attempt=...``); an ambiguous attempt then waits, up to the scheduler's
safety-net delay for the model, for that attempt's callback, which names the
task if one was created, and nothing is sent again. Otherwise the retry
policy decides (``RetryPolicy.ambiguous_creates``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from . import _wire
from ._errors import RuxaError
from ._fleet import Fleet
from ._request import Requester
from ._retry import Retrier, is_ambiguous_create
from ._tally import Tally

__all__ = ["Creator"]

log = logging.getLogger("ruxa_async")


class Creator:
    """Creates tasks for a client through its :class:`Requester`, retried per its :class:`Retrier`.

    ``own_callback_url`` gives the client's callback receiver's URL (None
    without one): only creates that carry it get a token per attempt.
    ``safety_net_seconds`` gives how long to wait for a model's callback.
    """

    def __init__(
        self,
        *,
        requester: Requester,
        retrier: Retrier,
        fleet: Fleet,
        own_callback_url: Callable[[], str | None],
        safety_net_seconds: Callable[[str | None], float],
    ) -> None:
        self._requester = requester
        self._retrier = retrier
        self._fleet = fleet
        self._own_callback_url = own_callback_url
        self._safety_net_seconds = safety_net_seconds
        self._attempts: dict[str, asyncio.Future[str]] = {}  # callback token -> task id
        self.recovered = 0
        """Ambiguous attempts whose task was named by their own callback (not sent again)."""

    def attempt_named(self, token: str, task_id: str) -> None:
        """The callback of the create attempt with ``token`` names ``task_id``."""
        waiter = self._attempts.get(token)
        if waiter is not None and not waiter.done():
            waiter.set_result(task_id)

    async def create(
        self,
        model: str,
        input: Mapping[str, Any],
        callback_url: str | None,
        tally: Tally | None = None,
        sending: Callable[[], Awaitable[None]] | None = None,
        failed: Callable[[BaseException], None] | None = None,
        label: str | None = None,
    ) -> str:
        """Create a task with retries; each attempt is counted in ``tally``, told to ``sending``.

        ``failed`` is told each failed attempt's error (after ``sending``, or
        before it when the attempt was refused earlier). With the client's own
        callback receiver, each attempt carries its own token in the callback
        URL; an attempt that fails ambiguously waits (up to the scheduler's
        safety-net delay for ``model``) for that attempt's callback, which names
        the task if one was created: then nothing is sent again. ``label``
        names the job in log lines.
        """
        body = _wire.build_create_body(model, input, callback_url)
        own = self._own_callback_url()
        send_create = self._requester.send

        async def send() -> str:
            if own is not None and callback_url == own:
                return await self._create_with_tokens(
                    model, input, own, tally, sending, failed, label
                )
            if tally is None and sending is None and failed is None:
                data = await self._retrier.call(
                    "create", lambda: send_create("create", "POST", _wire.CREATE_PATH, body)
                )
                return _wire.parse_task_id(data)
            last: list[BaseException] = []

            async def attempt() -> Any:
                if tally is not None and last and is_ambiguous_create(last[-1]):
                    tally.ambiguous_create_retries += 1
                try:
                    return await send_create(
                        "create", "POST", _wire.CREATE_PATH, body, tally, sending, failed
                    )
                except BaseException as exc:
                    last.append(exc)
                    if failed is not None:
                        failed(exc)
                    raise

            data = await self._retrier.call("create", attempt)
            return _wire.parse_task_id(data)

        task_id = await self._fleet.create(model, input, send)
        log.debug("created task %s (%s)", task_id, model)
        return task_id

    async def _create_with_tokens(
        self,
        model: str,
        input: Mapping[str, Any],
        callback_url: str,
        tally: Tally | None,
        sending: Callable[[], Awaitable[None]] | None,
        failed: Callable[[BaseException], None] | None,
        label: str | None,
    ) -> str:
        """:meth:`create` with a callback token per attempt (see there)."""
        last: list[BaseException] = []
        sep = "&" if "?" in callback_url else "?"

        async def attempt() -> Any:
            if tally is not None and last and is_ambiguous_create(last[-1]):
                tally.ambiguous_create_retries += 1
            token = secrets.token_urlsafe(12)
            waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._attempts[token] = waiter
            body = _wire.build_create_body(model, input, f"{callback_url}{sep}attempt={token}")
            try:
                return await self._requester.send(
                    "create", "POST", _wire.CREATE_PATH, body, tally, sending, failed
                )
            except RuxaError as exc:
                if is_ambiguous_create(exc):
                    task_id = await self._recover(waiter, model)
                    if task_id is not None:
                        self.recovered += 1
                        log.warning(
                            "job %s: its create failed ambiguously (%s) but its callback named "
                            "task %s; not sent again",
                            label or "(no key)",
                            exc,
                            task_id,
                        )
                        return {"taskId": task_id}
                last.append(exc)
                if failed is not None:
                    failed(exc)
                raise
            except BaseException as exc:
                last.append(exc)
                if failed is not None:
                    failed(exc)
                raise
            finally:
                self._attempts.pop(token, None)

        data = await self._retrier.call("create", attempt)
        return _wire.parse_task_id(data)

    async def _recover(self, waiter: asyncio.Future[str], model: str) -> str | None:
        """The task id the attempt's callback names, if it comes within the safety-net delay."""
        if not waiter.done():
            delay = self._safety_net_seconds(model)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), delay)
            except asyncio.TimeoutError:
                return None
        return waiter.result()
