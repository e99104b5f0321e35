"""The callback receiver: :class:`CallbackServer` and its statistics.

An aiohttp server (or routes mounted in your app) that checks each callback
with the pure functions of :mod:`._webhook_verify` and resolves the attached
client's handles. Public through :mod:`ruxa_async.webhooks`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
from aiohttp import web

from ._errors import CallbackVerificationError, ConfigurationError, RuxaError
from ._models import TaskInfo
from ._webhook_verify import DEFAULT_MAX_BODY, check_options, parse_callback_request, utf8

if TYPE_CHECKING:
    from ._client import RuxaClient

__all__ = ["CallbackServer", "CallbackStatistics"]

log = logging.getLogger("ruxa_async")

_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,}")
_OK = {"code": 200, "message": "ok"}


@attrs.frozen(kw_only=True)
class CallbackStatistics:
    """A snapshot of what a :class:`CallbackServer` received and did.

    Attributes:
        received: POST requests that reached the callback path.
        accepted: callbacks that passed every check and were passed on.
        resolved: accepted callbacks that resolved a pending task.
        duplicates_or_late: accepted callbacks that resolved nothing: a
            duplicate, a non-terminal state after the terminal one, a task id
            the client does not track, or a repeat of a callback still being
            confirmed by query.
        rejected_token: requests with a missing or wrong URL token (404).
        rejected_signature: requests with a missing or wrong signature, or a
            stale timestamp (401).
        rejected_body: oversized (413) or malformed (400) bodies.
        unavailable: valid callbacks refused with 503 because nothing was
            attached to take them (no client and no ``on_task``).
        verify_queries: task queries sent to confirm callbacks
            (``verify_by_query``).
        verify_failures: confirmations whose query failed (the safety-net
            polling still covers the task).
    """

    received: int = 0
    accepted: int = 0
    resolved: int = 0
    duplicates_or_late: int = 0
    rejected_token: int = 0
    rejected_signature: int = 0
    rejected_body: int = 0
    unavailable: int = 0
    verify_queries: int = 0
    verify_failures: int = 0


_COUNTERS = tuple(f.name for f in attrs.fields(CallbackStatistics))


def _reply(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)


def _bound_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class CallbackServer:
    """A callback receiver: an aiohttp server (or routes in your app) for one client.

    Give it to a client, which starts and stops it::

        async with RuxaClient(callbacks=CallbackServer(port=8080,
                                                       public_url="https://me.example")) as c:
            info = await c.generate("google/nano-banana", {"prompt": "a red fox"})

    It listens on ``host:port`` (``port=0`` picks a free port). ``public_url`` is
    the base URL at which Ruxa reaches this server (your proxy or tunnel); it
    defaults to the bound address, which only suits local tests.
    :attr:`callback_url` is ``public_url + path + "/" + secret``: a request whose
    token does not match ``secret`` (a fresh random one by default) gets 404 and
    changes nothing. With ``hmac_key``, callbacks must also carry kie's
    signature headers, within ``tolerance`` seconds of now. With
    ``verify_by_query=True`` a callback's content is not trusted: it only
    prompts one ``client.get_task`` query, whose answer resolves the task.
    Bodies over ``max_body`` bytes are refused.

    Replies are small JSON objects: 200 for a valid callback (the task is
    resolved without delaying the reply), 400 malformed body, 401 bad
    signature, 404 bad token, 413 too large, 503 nothing attached yet.

    ``on_task``, if given, is called with every accepted (or, with
    ``verify_by_query``, confirmed) :class:`TaskInfo`; it must be quick and
    must not block. That also makes the server usable on its own, without a
    client: ``async with CallbackServer(on_task=sink) as server: ...``.

    To serve from an aiohttp application you already run, call
    :meth:`add_aiohttp_routes` instead of letting the server listen.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        public_url: str | None = None,
        secret: str | None = None,
        hmac_key: str | None = None,
        tolerance: float = 300.0,
        verify_by_query: bool = False,
        max_body: int = DEFAULT_MAX_BODY,
        path: str = "/ruxa/callback",
        on_task: Callable[[TaskInfo], None] | None = None,
    ) -> None:
        check_options(tolerance, max_body)
        if secret is None:
            secret = secrets.token_urlsafe(24)
        elif not _TOKEN.fullmatch(secret):
            raise ConfigurationError(
                "secret must be at least 16 URL-safe characters (A-Z a-z 0-9 . _ ~ -)"
            )
        if not path.startswith("/") or "{" in path or "}" in path:
            raise ConfigurationError(f"path must start with '/' and hold no braces, got {path!r}")
        if hmac_key is not None and not hmac_key:
            raise ConfigurationError("hmac_key must not be empty")
        self._host = host
        self._port = port
        self._public_url = public_url.rstrip("/") if public_url else None
        self._secret = secret
        self._hmac_key = hmac_key
        self._tolerance = tolerance
        self._verify_by_query = verify_by_query
        self._max_body = max_body
        self._path = path.rstrip("/") or ""
        self._on_task = on_task
        self._client: RuxaClient | None = None
        self._runner: web.AppRunner | None = None
        self._bound: str | None = None
        self._mounted = False
        self._entered = False
        self._verifying: dict[str, asyncio.Task[None]] = {}
        self._counts = dict.fromkeys(_COUNTERS, 0)

    def __repr__(self) -> str:
        if self._mounted:
            state = "mounted"
        elif self._runner is not None:
            state = "listening"
        else:
            state = "stopped"
        base = self._public_url or self._bound or f"http://{self._host}:{self._port}"
        return f"<CallbackServer {base}{self._path}/<secret> {state}>"

    # ----------------------------------------------------------------- the URL

    @property
    def callback_url(self) -> str:
        """The URL Ruxa should POST to, secret token included (treat it as a secret).

        Known once the server listens, or at once when ``public_url`` was given.
        """
        base = self._public_url or self._bound
        if base is None:
            raise ConfigurationError(
                "the callback URL is known once the server is listening "
                "(start it, or pass public_url=...)"
            )
        return f"{base}{self._path}/{self._secret}"

    @property
    def listening(self) -> bool:
        """True while the server's own socket is open."""
        return self._runner is not None

    # --------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> CallbackServer:
        await self._listen()
        self._entered = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._entered = False
        await self.aclose()

    async def start(self, client: RuxaClient) -> None:
        """Attach ``client`` and listen (if not already); a client calls this when it starts.

        Accepted callbacks then resolve the client's handles. One client at a
        time: attaching a second while one is attached is an error.
        """
        if self._client is not None and self._client is not client:
            raise ConfigurationError("this CallbackServer already serves another client")
        await self._listen()
        self._client = client

    async def aclose(self) -> None:
        """Detach the client, cancel pending confirmations and stop listening.

        Inside ``async with server:`` the server keeps listening until the
        block ends, so a client's close only detaches that client.
        """
        self._client = None
        tasks = list(self._verifying.values())
        self._verifying.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._entered:
            return
        runner, self._runner = self._runner, None
        self._bound = None
        if runner is not None:
            await runner.cleanup()
            log.debug("callback receiver stopped")

    async def _listen(self) -> None:
        if self._runner is not None or self._mounted:
            return
        app = web.Application()
        self._add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self._bound = _bound_url(self._host, int(address[1]))
        log.info("callback receiver listening on %s%s/<secret>", self._bound, self._path)

    # ----------------------------------------------------------- aiohttp mount

    def add_aiohttp_routes(self, app: web.Application) -> None:
        """Serve the callback path from your own :class:`aiohttp.web.Application`.

        This is the one place an aiohttp type appears in ruxa_async's API. The
        server then never opens a socket of its own, so ``public_url`` (where
        Ruxa reaches *your* app) is required. Note that your app's access log,
        unlike this server's, would record the secret token in each path.
        """
        if self._public_url is None:
            raise ConfigurationError("a mounted CallbackServer needs public_url=...")
        self._mounted = True
        self._add_routes(app)

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post(self._path or "/", self._handle)
        app.router.add_post(self._path + "/{token:.*}", self._handle)

    # ----------------------------------------------------------------- handling

    def statistics(self) -> CallbackStatistics:
        """A frozen snapshot of the receiver's counters."""
        return CallbackStatistics(**self._counts)

    def _count(self, name: str) -> None:
        self._counts[name] += 1

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._count("received")
        token = request.match_info.get("token", "")
        if not hmac.compare_digest(utf8(token), utf8(self._secret)):
            self._count("rejected_token")
            log.debug("callback to %s/<redacted> refused: wrong or missing token", self._path)
            return _reply(404, "not found")
        try:
            body = await self._read(request)
            info = parse_callback_request(
                body,
                request.headers,
                hmac_key=self._hmac_key,
                tolerance=self._tolerance,
                max_body=self._max_body,
            )
        except CallbackVerificationError as exc:
            self._count("rejected_signature" if exc.reason == "signature" else "rejected_body")
            log.debug("callback refused with HTTP %d: %s", exc.http_status, exc)
            return _reply(exc.http_status, "rejected")
        return self._accept(info)

    async def _read(self, request: web.Request) -> bytes:
        """The body; stops reading and raises as soon as it exceeds ``max_body``."""
        limit = self._max_body
        declared = request.content_length
        chunks: list[bytes] = []
        size = 0 if declared is None else declared
        if size <= limit:
            size = 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
        if size > limit:
            raise CallbackVerificationError(
                f"callback body exceeds the {limit}-byte limit", reason="too_large", http_status=413
            )
        return b"".join(chunks)

    def _accept(self, info: TaskInfo) -> web.Response:
        client = self._client
        if client is None and (self._on_task is None or self._verify_by_query):
            self._count("unavailable")
            log.debug("callback for task %s refused with 503: no client attached", info.task_id)
            return _reply(503, "not ready")
        self._count("accepted")
        if client is not None and self._verify_by_query:
            self._confirm_later(client, info.task_id)
            return web.json_response(_OK)
        try:
            self._deliver(client, info)
        except Exception:
            log.exception("on_task raised for the callback of task %s", info.task_id)
            return _reply(500, "handler error")
        return web.json_response(_OK)

    def _deliver(self, client: RuxaClient | None, info: TaskInfo) -> None:
        if client is not None:
            if client.feed_callback(info):
                self._count("resolved")
                log.debug("callback resolved task %s (%s)", info.task_id, info.state.value)
            else:
                self._count("duplicates_or_late")
                log.debug(
                    "callback for task %s (%s) changed nothing: duplicate, late or unknown",
                    info.task_id,
                    info.state.value,
                )
        if self._on_task is not None:
            self._on_task(info)

    def _confirm_later(self, client: RuxaClient, task_id: str) -> None:
        if task_id in self._verifying:
            self._count("duplicates_or_late")
            log.debug("callback for task %s is already being confirmed", task_id)
            return
        task = asyncio.get_running_loop().create_task(
            self._confirm(client, task_id), name="ruxa_async callback confirmation"
        )
        self._verifying[task_id] = task
        task.add_done_callback(self._confirmed)

    async def _confirm(self, client: RuxaClient, task_id: str) -> None:
        self._count("verify_queries")
        try:
            info = await client.get_task(task_id)
        except RuxaError as exc:
            self._count("verify_failures")
            log.warning("could not confirm the callback for task %s: %s", task_id, exc)
            return
        finally:
            self._verifying.pop(task_id, None)
        self._deliver(client, info)

    def _confirmed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("confirming a callback failed", exc_info=task.exception())
