"""``out/index.html`` opened in a real headless Chromium: every image of the run loads."""

from __future__ import annotations

import json
from pathlib import Path

from playwright.async_api import async_playwright

from ruxa_async import PollPolicy
from ruxa_async._run import RunEnd, RunOptions, run_jobs
from ruxa_async.testing import FakeRuxa

from .services import CHROMIUM_ARGS, chromium_path

NB = "google/nano-banana"


async def test_every_image_of_the_gallery_loads_in_chromium(tmp_path: Path, fake: FakeRuxa) -> None:
    """The contact sheet shows one tile per job, and each image decodes (naturalWidth > 0)."""
    jobs = tmp_path / "jobs.jsonl"
    lines = [
        {"id": f"img-{i}", "model": NB, "input": {"prompt": f"a <b>fox</b> #{i}"}} for i in range(5)
    ]
    lines.append({"id": "bad", "model": NB, "input": {"prompt": "x", "image_size": "7:7"}})
    jobs.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    out = tmp_path / "out"
    options = RunOptions(
        jobs=jobs,
        out=out,
        journal=out / "journal.sqlite",
        api_key=fake.api_key,
        base_url=fake.url,
        poll=PollPolicy(first_check=0.05, min_interval=0.05, max_interval=0.2),
        progress="none",
    )
    assert (await run_jobs(options)).end is RunEnd.PARTIAL

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto((out / "index.html").as_uri())
            await page.wait_for_load_state("load")
            widths = await page.eval_on_selector_all(
                "img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : -1)"
            )
            tiles = await page.locator("figure").count()
            prompt = await page.locator("figure .prompt").first.inner_text()
            error = await page.locator("figure.status-invalid .error").inner_text()
        finally:
            await browser.close()
    assert tiles == 6
    assert len(widths) == 5
    assert all(w > 0 for w in widths), widths
    assert prompt == "a <b>fox</b> #0"
    assert "image_size" in error
