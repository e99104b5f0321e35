"""Await a generation inside a web handler (aiohttp.web here; FastAPI looks the same).

One RuxaClient lives as long as the app and is shared by every request; each
handler simply awaits ``client.generate(...)``. Runs against the built-in
simulator: ``python examples/web_handler.py``. For the real service, create
the client with ``RuxaClient()`` (key from RUXA_API_KEY) instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from ruxa_async import RuxaClient, TaskFailedError, TaskTimeoutError
from ruxa_async.testing import FakeRuxa, ModelBehavior, SimConfig

CLIENT = web.AppKey("ruxa_client", RuxaClient)


async def generate_image(request: web.Request) -> web.Response:
    """POST /images {"prompt": ...} -> {"task_id": ..., "urls": [...]}."""
    body = await request.json()
    client = request.app[CLIENT]
    try:
        info = await client.generate("google/nano-banana", {"prompt": body["prompt"]}, timeout=60)
    except TaskFailedError as exc:
        return web.json_response({"error": exc.fail_msg, "task_id": exc.task_id}, status=502)
    except TaskTimeoutError as exc:
        return web.json_response({"error": "still running", "task_id": exc.task_id}, status=202)
    return web.json_response({"task_id": info.task_id, "urls": list(info.result_urls)})


def make_app(api_key: str, base_url: str) -> web.Application:
    """The app owns one client for its whole life (a cleanup context opens and closes it)."""
    app = web.Application()

    async def ruxa_client(app: web.Application) -> AsyncIterator[None]:
        async with RuxaClient(api_key, base_url=base_url) as client:
            app[CLIENT] = client
            yield

    app.cleanup_ctx.append(ruxa_client)
    app.router.add_post("/images", generate_image)
    return app


async def main() -> None:
    sim = SimConfig(default_behavior=ModelBehavior(median_seconds=1.0, sigma=0.3))
    async with FakeRuxa(sim) as fake:
        runner = web.AppRunner(make_app(fake.api_key, fake.url))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as http:
                prompts = ["a red fox", "a blue whale", "a green parrot"]
                replies = await asyncio.gather(
                    *(
                        http.post(f"http://127.0.0.1:{port}/images", json={"prompt": p})
                        for p in prompts
                    )
                )
                for prompt, reply in zip(prompts, replies, strict=True):
                    print(f"{prompt!r}: HTTP {reply.status} {await reply.json()}")
        finally:
            await runner.cleanup()
        print(f"simulator saw {fake.stats().requests} requests for {len(prompts)} images")


if __name__ == "__main__":
    asyncio.run(main())
