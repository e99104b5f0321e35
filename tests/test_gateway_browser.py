"""A real browser uses the demo page: sign in, prompt, see the image; the key never reaches it."""

from __future__ import annotations

import asyncio

import attrs
from playwright.async_api import Request, Response, async_playwright

from ruxa_async.testing import FakeRuxa, ModelBehavior, SimConfig
from tests.helpers_gateway import SECRET, config_for, running
from tests.services import CHROMIUM_ARGS, chromium_path

UPSTREAM_KEY = "sk-upstream-browser-test-5f4e3d2c1b0a"


async def test_the_demo_page_generates_an_image_without_the_key() -> None:
    """Chromium signs in, prompts, renders the image; no key in page, network or console."""
    behavior = ModelBehavior(median_seconds=0.5, sigma=0)
    async with FakeRuxa(SimConfig(seed=12, api_key=UPSTREAM_KEY, default_behavior=behavior)) as sim:
        config = attrs.evolve(config_for(sim), demo=True)
        async with running(config) as gw, async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                console: list[str] = []
                bodies: list[str] = []
                pending: list[asyncio.Task[None]] = []
                sent: list[str] = []

                async def keep(response: Response) -> None:
                    headers = await response.all_headers()
                    bodies.append(repr(headers))
                    if "image" not in headers.get("content-type", ""):
                        bodies.append((await response.body()).decode("utf-8", "replace"))

                def on_request(request: Request) -> None:
                    sent.append(repr(request.headers) + request.url + (request.post_data or ""))

                page.on("console", lambda msg: console.append(msg.text))
                page.on("request", on_request)
                page.on("response", lambda r: pending.append(asyncio.ensure_future(keep(r))))
                await page.goto(f"{gw.url}/demo/")
                await page.fill("#user", "ada")
                await page.click("#signin")
                await page.wait_for_selector("#generate:not([hidden])")
                await page.fill("#prompt", "a lighthouse at dusk")
                await page.click("#go")
                await page.wait_for_function(
                    "() => { const i = document.getElementById('image');"
                    " return i !== null && i.complete && i.naturalWidth > 0; }",
                    timeout=30_000,
                )
                width = await page.eval_on_selector("#image", "i => i.naturalWidth")
                html = await page.content()
                storage = await page.evaluate("() => JSON.stringify(localStorage)")
                await asyncio.gather(*pending)
            finally:
                await browser.close()
    assert width > 0
    assert sim.stats().tasks_created == 1
    everything = "\n".join([html, storage, *console, *bodies, *sent])
    assert "rxs1." in everything  # the short-lived token did travel (it is meant to)
    assert UPSTREAM_KEY not in everything
    assert SECRET not in everything
