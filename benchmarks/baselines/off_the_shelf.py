"""B2, "off the shelf": aiometer for creates, aiolimiter for status GETs, stamina for retries.

Creates run through ``aiometer.amap(create, jobs, max_at_once=100,
max_per_second=R_c)``; as each task id arrives a poll coroutine starts for it
(sleep 5 s, GET, repeat), and every GET attempt takes a slot from one shared
``aiolimiter.AsyncLimiter(R_q, 1)``. Creates and GETs are wrapped in
``stamina.retry`` (its defaults: 10 attempts, 45 s) with an ``on=`` hook that
returns ``Retry-After`` for a 429 (stamina then waits exactly that long) and
retries 5xx and connection errors with stamina's jittered backoff. Only the
creates are metered by aiometer: putting a task's whole life under
``max_at_once`` would cap pending tasks at 100.

Time compression: the 5 s poll, ``Retry-After``, stamina's waits and timeout,
and the limiter's period are divided by ``spec.k``; rates are already
multiplied by ``k`` (so the limiter's burst stays R_q requests).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import aiometer
import stamina
from aiolimiter import AsyncLimiter

from .._client import ERROR, FAILED, SUCCEEDED, Job, Recorder, RunSpec
from . import _wire

POLL_SECONDS = 5.0
MAX_AT_ONCE = 100
# what ends a create or a poll once stamina has given up retrying it
_GAVE_UP = (
    _wire.RateLimited,
    _wire.ServerError,
    _wire.RequestFailed,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    KeyError,
)


def prepare(jobs: list[Job], spec: RunSpec) -> list[tuple[int, dict[str, Any]]]:
    """(index, request body) pairs: aiometer.amap wants a sequence."""
    return [(i, _wire.create_body(job.model, job.input)) for i, job in enumerate(jobs)]


class _Client:
    def __init__(self, spec: RunSpec, session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self.session = session
        # AsyncLimiter(R_q, 1) at real scale: R_q per second, bursts of R_q. Compressed,
        # the period shrinks to 1/k s, so the rate is R_q * k and the burst still R_q.
        k = spec.k
        self.limiter = AsyncLimiter(spec.query_rate / k, 1 / k) if spec.query_rate else None
        self.requests = 0
        self.retries = 0  # failed attempts stamina chose to retry (or to give up on)

        def retry_on(exc: Exception) -> bool | float:
            if isinstance(exc, _wire.RateLimited):
                self.retries += 1
                return True if exc.retry_after is None else exc.retry_after / k
            retry = isinstance(
                exc, (_wire.ServerError, aiohttp.ClientConnectionError, asyncio.TimeoutError)
            )
            self.retries += retry
            return retry

        retry = stamina.retry(
            on=retry_on,
            attempts=10,
            timeout=45.0 / k,
            wait_initial=0.1 / k,
            wait_max=5.0 / k,
            wait_jitter=1.0 / k,
        )
        self.create = retry(self._create)
        self.query = retry(self._query)

    async def _create(self, body: dict[str, Any]) -> str:
        self.requests += 1
        async with self.session.post(self.spec.base_url + _wire.CREATE_PATH, json=body) as resp:
            data = await _wire.checked_json(resp)
        task_id: str = data["data"]["taskId"]
        return task_id

    async def _query(self, task_id: str) -> str:
        if self.limiter is not None:
            await self.limiter.acquire()
        self.requests += 1
        url = self.spec.base_url + _wire.QUERY_PATH + task_id
        async with self.session.get(url) as resp:
            data = await _wire.checked_json(resp)
        state: str = data["data"]["state"]
        return state


async def run(
    prepared: list[tuple[int, dict[str, Any]]], spec: RunSpec, recorder: Recorder
) -> None:
    """Creates through aiometer, one poll coroutine per created task."""
    pollers: set[asyncio.Task[None]] = set()
    poll_every = POLL_SECONDS / spec.k

    async with aiohttp.ClientSession(headers=_wire.headers(spec.api_key)) as session:
        client = _Client(spec, session)

        async def poll(index: int, task_id: str) -> None:
            try:
                while True:
                    await asyncio.sleep(poll_every)
                    state = await client.query(task_id)
                    if state in _wire.TERMINAL:
                        status = SUCCEEDED if state == "success" else FAILED
                        recorder.on_resolved(index, task_id, status)
                        return
            except _GAVE_UP:
                recorder.on_resolved(index, task_id, ERROR)

        async def start(item: tuple[int, dict[str, Any]]) -> None:
            index, body = item
            try:
                task_id = await client.create(body)
            except _GAVE_UP:
                recorder.on_resolved(index, None, ERROR)
                return
            recorder.on_created(index, task_id)
            task = asyncio.create_task(poll(index, task_id))
            pollers.add(task)
            task.add_done_callback(pollers.discard)

        try:
            async with aiometer.amap(
                start, prepared, max_at_once=MAX_AT_ONCE, max_per_second=spec.create_rate
            ) as results:
                async for _ in results:
                    pass
            while pollers:
                await asyncio.gather(*list(pollers))
        finally:
            for task in list(pollers):
                task.cancel()
            recorder.counters.update(requests_sent=client.requests, retries=client.retries)
