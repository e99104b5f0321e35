"""Relaying task callbacks to their owners, signed per Standard Webhooks.

Each delivery carries ``webhook-id`` (stable per task and state, so a receiver
can drop duplicates), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}")).
A secret written ``whsec_<base64>`` is used as the decoded bytes, as the
Standard Webhooks libraries do. Deliveries go through a bounded queue and a
fixed set of workers, with exponential backoff between attempts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .._errors import CallbackVerificationError
from ._config import CallbackSettings

__all__ = ["Relay", "sign_webhook", "verify_webhook"]

log = logging.getLogger("ruxa_async")

_QUEUE = 10_000
_WORKERS = 16
_REFUSED = "refused: private address"


def _secret_bytes(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[6:], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one delivery: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> None:
    """Check a relayed callback's Standard Webhooks signature; raise if it is not genuine.

    Raises :class:`CallbackVerificationError` when a header is missing, the
    timestamp is more than ``tolerance`` seconds away, or no ``v1`` signature
    in ``webhook-signature`` (space-separated list) matches.
    """
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    given = _header(headers, "webhook-signature")
    if not msg_id or not stamp or not given:
        raise CallbackVerificationError(
            "missing webhook-id, webhook-timestamp or webhook-signature",
            reason="signature",
            http_status=401,
        )
    if not stamp.isdigit() or abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        raise CallbackVerificationError(
            "webhook-timestamp is stale or malformed", reason="signature", http_status=401
        )
    expected = sign_webhook(secret, msg_id, int(stamp), body)
    if not any(hmac.compare_digest(expected, part) for part in given.split()):
        raise CallbackVerificationError(
            "webhook-signature does not match", reason="signature", http_status=401
        )


class _PrivateAddress(OSError):
    """A callback host that resolves to no public address (loopback, private, link-local)."""


def _public(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_global
    except ValueError:
        return False


class _PublicResolver(AbstractResolver):
    """DNS for relays: only public addresses, unless private ones are allowed.

    The check is on the addresses a connection is actually made to, so a
    hostname that resolves to 127.0.0.1, 10.x or 169.254.x (written host
    checks miss ``127.1`` or ``2130706433``, and DNS can change after the
    create) is refused at delivery time.
    """

    def __init__(self, allow_private: Callable[[], bool]) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if self._allow_private():
            return found
        public = [r for r in found if _public(r["host"])]
        if not public:
            raise _PrivateAddress(f"{host} resolves only to private or loopback addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()


class Relay:
    """Delivers signed callbacks to users' URLs; started and closed by the gateway."""

    def __init__(
        self,
        settings: CallbackSettings,
        report: Callable[..., None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._report = report
        self._clock = clock
        self._queue: asyncio.Queue[tuple[str, str, str, bytes, str | None]] = asyncio.Queue(_QUEUE)
        self._workers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.refused = 0

    async def start(self) -> None:
        """Open the session and start the workers."""
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=_WORKERS * 2,
                resolver=_PublicResolver(lambda: self.settings.allow_private),
            ),
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            raise_for_status=False,
            trust_env=False,
        )
        self._workers = [
            asyncio.create_task(self._work(), name=f"ruxa gateway relay {i}")
            for i in range(_WORKERS)
        ]

    async def aclose(self) -> None:
        """Stop the workers (pending deliveries are abandoned) and close the session."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def drain(self) -> None:
        """Wait until every queued delivery has been delivered or given up."""
        await self._queue.join()

    def send(self, url: str, task_id: str, state: str, body: bytes, secret: str | None) -> None:
        """Queue one delivery; it is dropped (and reported) if the queue is full."""
        try:
            self._queue.put_nowait((url, task_id, state, body, secret))
        except asyncio.QueueFull:
            self.dropped += 1
            self._report("relay_dropped", task_id=task_id, state=state)

    async def _work(self) -> None:
        while True:
            url, task_id, state, body, secret = await self._queue.get()
            try:
                await self._deliver(url, task_id, state, body, secret)
            finally:
                self._queue.task_done()

    async def _deliver(
        self, url: str, task_id: str, state: str, body: bytes, secret: str | None
    ) -> None:
        msg_id = f"{task_id}.{state}"
        if not self._allowed(url):
            self.refused += 1
            log.warning("gateway: callback for %s (%s) refused: private address", task_id, state)
            self._report("relay_refused", task_id=task_id, state=state, reason="private_address")
            return
        delay = self.settings.first_retry
        last = ""
        for attempt in range(1, self.settings.attempts + 1):
            stamp = int(self._clock())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "ruxa-async-gateway",
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
            }
            if secret:
                headers["webhook-signature"] = sign_webhook(secret, msg_id, stamp, body)
            last = await self._post(url, body, headers)
            if last is _REFUSED:
                self.refused += 1
                log.warning(
                    "gateway: callback for %s (%s) refused: its host resolves to a private address",
                    task_id,
                    state,
                )
                self._report(
                    "relay_refused", task_id=task_id, state=state, reason="private_address"
                )
                return
            if not last:
                self.delivered += 1
                self._report("relay_delivered", task_id=task_id, state=state, attempts=attempt)
                return
            if attempt < self.settings.attempts:
                await asyncio.sleep(delay)
                delay *= 2
        self.failed += 1
        log.warning("gateway: callback for %s (%s) not delivered: %s", task_id, state, last)
        self._report("relay_failed", task_id=task_id, state=state, error=last)

    def _allowed(self, url: str) -> bool:
        """False for a literal private address (those never reach the resolver)."""
        if self.settings.allow_private:
            return True
        try:
            host = urlsplit(url).hostname or ""
            address = ipaddress.ip_address(host)
        except ValueError:
            return True  # a name: the resolver checks what it resolves to
        return address.is_global

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str:
        """'' on a 2xx reply, ``_REFUSED`` for a private address, else what went wrong."""
        assert self._session is not None
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                return "" if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _PrivateAddress):
                return _REFUSED
            return type(exc).__name__
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            return type(exc).__name__


def relay_body(
    info_raw: Mapping[str, Any], succeeded: bool, user_url: str | None
) -> dict[str, Any]:
    """The body relayed to the owner: kie's callback shape, minus account-wide fields."""
    data = scrub_task(info_raw, user_url)
    return {
        "code": 200 if succeeded else 501,
        "message": "Task completed successfully." if succeeded else "Task failed.",
        "data": data,
    }


_HIDDEN = ("remainedCredits",)


@functools.lru_cache(maxsize=4096)
def _scrub_param(param: str, user_url: str | None) -> str | None:
    """The task's ``param`` with the owner's callback URL in place of the gateway's (memoised:
    a task is queried many times with the same ``param``)."""
    try:
        body = json.loads(param)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    body.pop("callBackUrl", None)
    if user_url is not None:
        body["callBackUrl"] = user_url
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def scrub_task(raw: Mapping[str, Any], user_url: str | None) -> dict[str, Any]:
    """A task object fit for its owner: no account balance, the owner's own callback URL."""
    data = {k: v for k, v in raw.items() if k not in _HIDDEN}
    param = data.get("param")
    if isinstance(param, str) and "callBackUrl" in param:
        view = _scrub_param(param, user_url)
        if view is None:
            data.pop("param")
        else:
            data["param"] = view
    return data
