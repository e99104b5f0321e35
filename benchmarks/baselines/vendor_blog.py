"""B0, "vendor blog": the fan-out most tutorials show, ported as written.

One coroutine per task, every create fired at once with ``asyncio.gather`` (no
limiter), then a fixed 5-second poll loop of at most 60 attempts. Each request
is tried 3 times: on a 429 it sleeps ``Retry-After`` (or ``2**attempt`` s when
absent), on a 5xx or a connection error ``2**attempt`` s; after the third
failure the job errors out. One shared ``aiohttp.ClientSession`` with default
settings.

Time compression: every sleep is divided by ``spec.k``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from .._client import ERROR, FAILED, SUCCEEDED, Job, Recorder, RunSpec
from . import _wire

MAX_ATTEMPTS = 3
MAX_POLLS = 60
POLL_SECONDS = 5.0


def prepare(jobs: list[Job], spec: RunSpec) -> list[dict[str, Any]]:
    """Request bodies, one per job."""
    return [_wire.create_body(job.model, job.input) for job in jobs]


class _Counters:
    def __init__(self) -> None:
        self.retries = 0
        self.gave_up = 0


async def _request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    k: float,
    counters: _Counters,
    **kwargs: Any,
) -> dict[str, Any]:
    for attempt in range(MAX_ATTEMPTS):
        try:
            async with session.request(method, url, **kwargs) as resp:
                if resp.status == 429:
                    wait = _wire.retry_after(resp)
                    delay = wait if wait is not None else 2**attempt
                elif resp.status >= 500:
                    delay = 2**attempt
                else:
                    resp.raise_for_status()
                    data: dict[str, Any] = await resp.json()
                    return data
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
            delay = 2**attempt
        if attempt + 1 < MAX_ATTEMPTS:
            counters.retries += 1
            await asyncio.sleep(delay / k)
    counters.gave_up += 1
    raise RuntimeError(f"{method} {url}: max retries exceeded")


async def _generate(
    session: aiohttp.ClientSession,
    spec: RunSpec,
    index: int,
    body: dict[str, Any],
    recorder: Recorder,
    counters: _Counters,
) -> None:
    base, k = spec.base_url, spec.k
    task_id: str | None = None
    try:
        created = await _request(session, "POST", base + _wire.CREATE_PATH, k, counters, json=body)
        task_id = created["data"]["taskId"]
        recorder.on_created(index, task_id)
        for _ in range(MAX_POLLS):
            await asyncio.sleep(POLL_SECONDS / k)
            info = await _request(session, "GET", base + _wire.QUERY_PATH + task_id, k, counters)
            state = info["data"]["state"]
            if state == "success":
                recorder.on_resolved(index, task_id, SUCCEEDED)
                return
            if state == "fail":
                recorder.on_resolved(index, task_id, FAILED)
                return
        raise TimeoutError(f"task {task_id} still running after {MAX_POLLS} polls")
    except (RuntimeError, aiohttp.ClientError, TimeoutError, KeyError, TypeError):
        recorder.on_resolved(index, task_id, ERROR)


async def run(prepared: list[dict[str, Any]], spec: RunSpec, recorder: Recorder) -> None:
    """``asyncio.gather`` over one coroutine per job."""
    counters = _Counters()
    try:
        async with aiohttp.ClientSession(headers=_wire.headers(spec.api_key)) as session:
            await asyncio.gather(
                *(
                    _generate(session, spec, i, body, recorder, counters)
                    for i, body in enumerate(prepared)
                )
            )
    finally:
        recorder.counters.update(retries=counters.retries, gave_up=counters.gave_up)
