"""Calibration: what one request costs a bare aiohttp loop on this machine, in this run.

One shared ``aiohttp.ClientSession`` (default connector: keep-alive, 100
connections) sends ``spec.n`` GETs to the simulator's query endpoint for one
existing task, reading each body and nothing more (no JSON parsing, no
retries, no SDK logic). Two shapes, CPU measured separately:

* ``gather``: all ``n`` GETs started at once with ``asyncio.gather`` (the
  reference: ``c_req``);
* ``workers``: 64 coroutines each sending GETs back to back (no per-request
  coroutine; a lower floor, reported for context).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from ._client import Job, Recorder, RunSpec
from .baselines import _wire

WORKERS = 64


async def back_to_back_gets(
    session: aiohttp.ClientSession, url: str, n: int, workers: int = WORKERS
) -> None:
    """``n`` GETs of ``url``, bodies read, from ``workers`` coroutines sending back to back."""
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            async with session.get(url) as resp:
                await resp.read()

    await asyncio.gather(*(worker() for _ in range(workers)))


def prepare(jobs: list[Job], spec: RunSpec) -> None:
    """Nothing to prepare."""


async def run(prepared: Any, spec: RunSpec, recorder: Recorder) -> None:
    """Both shapes, one after the other; CPU and wall time of each in ``recorder.counters``."""
    n = spec.n
    async with aiohttp.ClientSession(headers=_wire.headers(spec.api_key)) as session:
        body = _wire.create_body(spec.models[0], {"prompt": "calibration"})
        async with session.post(spec.base_url + _wire.CREATE_PATH, json=body) as resp:
            task_id = (await _wire.checked_json(resp))["data"]["taskId"]
        url = spec.base_url + _wire.QUERY_PATH + task_id

        async def get() -> None:
            async with session.get(url) as resp:
                await resp.read()

        await asyncio.gather(*(get() for _ in range(min(n, 1000))))  # warm the pool
        gathered = max(1, n // 5)
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.gather(*(get() for _ in range(gathered)))
        gather_cpu, gather_wall = time.process_time() - cpu, time.monotonic() - wall

        cpu, wall = time.process_time(), time.monotonic()
        await back_to_back_gets(session, url, n)
        workers_cpu, workers_wall = time.process_time() - cpu, time.monotonic() - wall
    recorder.counters.update(
        requests=n,
        gathered=gathered,
        gather_cpu_s=gather_cpu,
        gather_wall_s=gather_wall,
        workers_cpu_s=workers_cpu,
        workers_wall_s=workers_wall,
    )
