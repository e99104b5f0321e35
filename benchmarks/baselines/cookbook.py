"""B1, "cookbook": the OpenAI cookbook's ``api_request_parallel_processor.py``, ported.

Kept as in the original: one main loop that sleeps 1 ms per pass; continuously
refilled buckets that start full with a minute's worth of requests, set to
75 % of the known limit (the docstring's advice); at most one launch per pass
(here one per request kind, since creates and status GETs have separate
buckets); failed requests go back on a retry queue and are retried at once,
ahead of new work, up to 5 attempts; after any rate-limit error the main loop
pauses 15 s (a global pause of new launches). A rate-limit error is recognised
by its code (429), as in the cookbook variant that compares ``error.code``;
``Retry-After`` is never read.

Added for a task API: a create that succeeds schedules a status GET 5 s later;
each non-terminal GET schedules the next one 5 s later. GETs go through their
own bucket (75 % of the query limit) and the same retry rules.

Time compression: the 15 s pause and the 5 s poll interval are divided by
``spec.k``; a bucket's capacity stays "one minute of requests" (rate * 60 s /
``k`` in compressed time, the same count). The 1 ms loop is not compressed.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import aiohttp

from .._client import ERROR, FAILED, SUCCEEDED, Job, Recorder, RunSpec
from . import _wire

HEADROOM = 0.75
SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR = 15.0
SECONDS_TO_SLEEP_EACH_LOOP = 0.001
MAX_ATTEMPTS = 5
POLL_SECONDS = 5.0
UNLIMITED = 1e9


def prepare(jobs: list[Job], spec: RunSpec) -> list[dict[str, Any]]:
    """Request bodies, one per job."""
    return [_wire.create_body(job.model, job.input) for job in jobs]


class _Request:
    __slots__ = ("attempts_left", "body", "index", "kind", "task_id")

    def __init__(self, kind: str, index: int, body: Any = None, task_id: str | None = None):
        self.kind = kind
        self.index = index
        self.body = body
        self.task_id = task_id
        self.attempts_left = MAX_ATTEMPTS


class _Bucket:
    """The cookbook's capacity counter: refilled continuously, capped at one minute's worth."""

    def __init__(self, per_second: float, k: float) -> None:
        self.per_second = per_second
        self.capacity = per_second * 60.0 / k
        self.available = self.capacity
        self.updated = time.monotonic()

    def refill(self, now: float) -> None:
        self.available = min(self.available + self.per_second * (now - self.updated), self.capacity)
        self.updated = now


class _Processor:
    def __init__(self, spec: RunSpec, recorder: Recorder, session: aiohttp.ClientSession):
        self.spec = spec
        self.recorder = recorder
        self.session = session
        k = spec.k
        create_rate = spec.create_rate or UNLIMITED
        query_rate = spec.query_rate or UNLIMITED
        self.buckets = {
            "create": _Bucket(HEADROOM * create_rate, k),
            "query": _Bucket(HEADROOM * query_rate, k),
        }
        self.retry = {"create": collections.deque[_Request](), "query": collections.deque()}
        self.polls_due: collections.deque[_Request] = collections.deque()
        self.in_progress = 0
        self.time_of_last_rate_limit_error = float("-inf")
        self.rate_limit_errors = 0
        self.retries = 0
        self.launched: set[asyncio.Task[None]] = set()

    async def main_loop(self, bodies: list[dict[str, Any]]) -> None:
        spec = self.spec
        pause = SECONDS_TO_PAUSE_AFTER_RATE_LIMIT_ERROR / spec.k
        jobs = iter(enumerate(bodies))
        not_finished = True
        pending: dict[str, _Request | None] = {"create": None, "query": None}
        while True:
            if pending["create"] is None:
                if self.retry["create"]:
                    pending["create"] = self.retry["create"].popleft()
                elif not_finished:
                    try:
                        index, body = next(jobs)
                    except StopIteration:
                        not_finished = False
                    else:
                        pending["create"] = _Request("create", index, body)
                        self.in_progress += 1
            if pending["query"] is None:
                if self.retry["query"]:
                    pending["query"] = self.retry["query"].popleft()
                elif self.polls_due:
                    pending["query"] = self.polls_due.popleft()
            now = time.monotonic()
            for kind, request in pending.items():
                bucket = self.buckets[kind]
                bucket.refill(now)
                if request is not None and bucket.available >= 1:
                    bucket.available -= 1
                    request.attempts_left -= 1
                    task = asyncio.create_task(self.call_api(request))
                    self.launched.add(task)
                    task.add_done_callback(self.launched.discard)
                    pending[kind] = None
            if self.in_progress == 0:
                break
            await asyncio.sleep(SECONDS_TO_SLEEP_EACH_LOOP)
            since = time.monotonic() - self.time_of_last_rate_limit_error
            if since < pause:
                await asyncio.sleep(pause - since)

    async def call_api(self, request: _Request) -> None:
        spec, session = self.spec, self.session
        try:
            if request.kind == "create":
                url = spec.base_url + _wire.CREATE_PATH
                async with session.post(url, json=request.body) as resp:
                    data = await _wire.checked_json(resp)
            else:
                url = spec.base_url + _wire.QUERY_PATH + str(request.task_id)
                async with session.get(url) as resp:
                    data = await _wire.checked_json(resp)
        except (
            _wire.RateLimited,
            _wire.ServerError,
            aiohttp.ClientError,
            asyncio.TimeoutError,
        ) as e:
            if isinstance(e, _wire.RateLimited):
                self.time_of_last_rate_limit_error = time.monotonic()
                self.rate_limit_errors += 1
            if request.attempts_left:
                self.retries += 1
                self.retry[request.kind].append(request)
            else:
                self.finish(request, ERROR)
            return
        except (_wire.RequestFailed, ValueError):
            self.finish(request, ERROR)
            return
        if request.kind == "create":
            task_id = data["data"]["taskId"]
            self.recorder.on_created(request.index, task_id)
            self.schedule_poll(_Request("query", request.index, task_id=task_id))
            return
        state = data["data"]["state"]
        if state in _wire.TERMINAL:
            self.finish(request, SUCCEEDED if state == "success" else FAILED)
        else:
            self.schedule_poll(_Request("query", request.index, task_id=request.task_id))

    def schedule_poll(self, request: _Request) -> None:
        delay = POLL_SECONDS / self.spec.k
        asyncio.get_running_loop().call_later(delay, self.polls_due.append, request)

    def finish(self, request: _Request, status: int) -> None:
        self.in_progress -= 1
        self.recorder.on_resolved(request.index, request.task_id, status)


async def run(prepared: list[dict[str, Any]], spec: RunSpec, recorder: Recorder) -> None:
    """The main loop, until no task is in progress."""
    async with aiohttp.ClientSession(headers=_wire.headers(spec.api_key)) as session:
        processor = _Processor(spec, recorder, session)
        try:
            await processor.main_loop(prepared)
        finally:
            recorder.counters.update(
                retries=processor.retries, rate_limit_errors=processor.rate_limit_errors
            )
            for task in list(processor.launched):
                task.cancel()
