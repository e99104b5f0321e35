"""Resolve task handles from callbacks that arrive at a web route you already own.

When your service already runs a web framework (FastAPI, Starlette, Django,
aiohttp...), you do not need ruxa_async's own CallbackServer: give each task
your route's URL, and in the route hand the raw body and headers to
``parse_callback_request`` and the result to ``client.feed_callback``. The
waiting handle resolves at once; the client's polling stays a slow safety net
for callbacks that never arrive.

``ruxa_callback`` below is that route's whole body, independent of any
framework. Here it is wired to a plain aiohttp.web route, and the script runs
end to end against the local simulator (FakeRuxa) with signed, delayed and
sometimes duplicated callbacks::

    python examples/callbacks_fastapi_style.py

The same function drops into FastAPI (not installed here) like this::

    @app.post("/ruxa/callback/{token}")
    async def callback(token: str, request: Request) -> dict[str, Any]:
        if not secrets.compare_digest(token, TOKEN):
            raise HTTPException(status_code=404)
        try:
            return await ruxa_callback(await request.body(), request.headers)
        except CallbackVerificationError as exc:
            raise HTTPException(status_code=exc.http_status) from None

with the RuxaClient opened in the app's ``lifespan`` and stored in ``state``.
Starlette's ``request.headers`` is case-insensitive; a plain dict of headers
works too. Cap the request size in your server or proxy as well
(``parse_callback_request`` refuses bodies over ``max_body`` once read).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ruxa_async import CallbackVerificationError, PollPolicy, RuxaClient, TaskInfo
from ruxa_async.testing import CallbackDelivery, FakeRuxa, SimConfig
from ruxa_async.webhooks import parse_callback_request

HMAC_KEY = "demo-webhook-hmac-key"  # in production: the key from the dashboard, from the env
TOKEN = secrets.token_urlsafe(24)  # the secret path segment that keeps strangers out
PROMPTS = ["a red fox", "a blue whale", "a green parrot", "a golden retriever", "a black cat"]


class AppState:
    """What the web app owns; FastAPI would keep this in ``app.state``."""

    client: RuxaClient | None = None


state = AppState()


async def ruxa_callback(body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """Verify one callback, resolve its task's handle, and return the reply body.

    Raises CallbackVerificationError for a forged, stale or malformed request.
    """
    info = parse_callback_request(body, headers, hmac_key=HMAC_KEY)
    if state.client is not None:
        state.client.feed_callback(info)  # False for duplicates and unknown tasks: fine
    return {"code": 200, "message": "ok"}


async def aiohttp_route(request: web.Request) -> web.Response:
    """The framework glue: check the path token, map errors to HTTP statuses."""
    if not secrets.compare_digest(request.match_info["token"], TOKEN):
        return web.json_response({"code": 404, "message": "not found"}, status=404)
    try:
        reply = await ruxa_callback(await request.read(), request.headers)
    except CallbackVerificationError as exc:
        status = exc.http_status
        return web.json_response({"code": status, "message": "rejected"}, status=status)
    return web.json_response(reply)


def describe(info: TaskInfo) -> str:
    """One line about a finished task."""
    if info.succeeded:
        return f"{info.task_id}: {', '.join(info.result_urls)}"
    return f"{info.task_id}: failed ({info.fail_msg})"


async def main() -> int:
    """Run five generations whose results arrive by callback; 0 when all succeeded."""
    delivery = CallbackDelivery(delay_min=0.05, delay_max=0.4, duplicate=0.3, hmac_key=HMAC_KEY)
    async with FakeRuxa(SimConfig(seed=3, callbacks=delivery)) as fake:
        app = web.Application(client_max_size=256 * 1024)
        app.router.add_post("/ruxa/callback/{token}", aiohttp_route)
        runner = web.AppRunner(app, access_log=None)  # an access log would record the token
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            port = runner.addresses[0][1]
            callback_url = f"http://127.0.0.1:{port}/ruxa/callback/{TOKEN}"
            async with RuxaClient(
                fake.api_key, base_url=fake.url, poll=PollPolicy(callback_grace=10.0)
            ) as client:
                state.client = client
                handles = [
                    await client.submit(
                        "google/nano-banana", {"prompt": p}, callback_url=callback_url
                    )
                    for p in PROMPTS
                ]
                infos = await asyncio.gather(*(h.wait(raise_on_failure=False) for h in handles))
                for prompt, info in zip(PROMPTS, infos, strict=True):
                    print(f"{prompt:>20}  {describe(info)}")
                scheduler = client.statistics().scheduler
                state.client = None
        finally:
            await runner.cleanup()
        sim = fake.stats()
    print(
        f"\n{sim.creates} creates, {sim.queries} queries "
        f"({(sim.creates + sim.queries) / len(PROMPTS):.1f} requests per task); "
        f"{sim.callbacks_sent} callbacks sent ({sim.callbacks_duplicated} duplicated), "
        f"{scheduler.resolved_by_callback} tasks resolved by callback, "
        f"{scheduler.resolved_by_poll} by polling"
    )
    return 0 if all(info.succeeded for info in infos) else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
