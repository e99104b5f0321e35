"""Callback delivery: one dispatcher coroutine over a heap of due POSTs.

A task with a ``callBackUrl`` gets one heap entry when it is created, due when
it ends plus the configured delay. The dispatcher sleeps until the earliest
entry is due, then posts through one :class:`aiohttp.ClientSession` with a
bounded number of POSTs in flight. No coroutine or timer exists per task.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import heapq
import hmac
import logging
import random
import time
from collections.abc import Callable

import aiohttp

from ._config import CallbackDelivery
from ._records import TaskRecord, note_callback
from ._stats import Counters

__all__ = ["CallbackDispatcher", "sign"]

_log = logging.getLogger("ruxa_async.testing")


def sign(key: str, task_id: str, timestamp: str) -> str:
    """kie.ai's signature: base64(HMAC-SHA256(key, f"{task_id}.{timestamp}"))."""
    digest = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class CallbackDispatcher:
    """Delivers completion callbacks when they fall due; started and closed by its owner."""

    def __init__(
        self,
        *,
        settings: Callable[[], CallbackDelivery],
        lookup: Callable[[str], TaskRecord | None],
        payload: Callable[[TaskRecord], bytes],
        counters: Counters,
        rng: random.Random,
    ) -> None:
        self._settings = settings
        self._lookup = lookup
        self._payload = payload
        self._counters = counters
        self._rng = rng
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = 0
        self._wakeup = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None

    def reseed(self, seed: str | None) -> None:
        """Restart the drop and duplicate draws from ``seed``."""
        self._rng.seed(seed)

    def clear(self) -> None:
        """Forget every delivery not yet due (POSTs in flight finish)."""
        self._heap.clear()

    @property
    def pending(self) -> int:
        """Deliveries waiting to fall due."""
        return len(self._heap)

    def start(self) -> None:
        """Open the session and start the dispatcher coroutine."""
        limit = self._settings().concurrency
        self._slots = asyncio.Semaphore(limit)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit), raise_for_status=False
        )
        self._runner = asyncio.create_task(self._run(), name="ruxa-sim-callbacks")

    async def aclose(self) -> None:
        """Stop dispatching, cancel POSTs in flight and close the session."""
        tasks = [t for t in (self._runner, *self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def schedule(self, due: float, task_id: str, attempt: int = 0) -> None:
        """Deliver ``task_id``'s callback at monotonic time ``due``."""
        self._seq += 1
        heap = self._heap
        if not heap or due < heap[0][0]:
            self._wakeup.set()
        heapq.heappush(heap, (due, self._seq, task_id, attempt))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        slots = self._slots
        assert slots is not None
        while True:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _due, _seq, task_id, attempt = heapq.heappop(heap)
                await slots.acquire()
                task = asyncio.create_task(self._deliver(task_id, attempt))
                self._inflight.add(task)
                task.add_done_callback(self._finished)
                now = time.monotonic()
            self._wakeup.clear()
            if not heap:
                await self._wakeup.wait()
                continue
            timer = loop.call_later(heap[0][0] - now, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if self._slots is not None:
            self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            _log.error("callback delivery crashed", exc_info=task.exception())

    async def _deliver(self, task_id: str, attempt: int) -> None:
        record = self._lookup(task_id)
        url = record.callback_url if record is not None else None
        if record is None or url is None:
            return
        settings = self._settings()
        counters = self._counters
        copies = 1
        if attempt == 0:
            if settings.drop and self._rng.random() < settings.drop:
                counters.callbacks_dropped += 1
                return
            if settings.duplicate and self._rng.random() < settings.duplicate:
                counters.callbacks_duplicated += 1
                copies = 2
        body = self._payload(record)
        ok = await self._post(url, record, body, settings)
        if ok and copies == 2:
            await self._post(url, record, body, settings)
        if ok:
            return
        if attempt < settings.retries:
            delay = settings.retry_interval * 2**attempt
            self.schedule(time.monotonic() + delay, task_id, attempt + 1)
        else:
            counters.callbacks_failed += 1

    async def _post(
        self, url: str, record: TaskRecord, body: bytes, settings: CallbackDelivery
    ) -> bool:
        assert self._session is not None
        headers = {"Content-Type": "application/json"}
        if settings.hmac_key is not None:
            stamp = str(int(time.time()))
            headers["X-Webhook-Timestamp"] = stamp
            headers["X-Webhook-Signature"] = sign(settings.hmac_key, record.task_id, stamp)
        self._counters.callbacks_sent += 1
        timeout = aiohttp.ClientTimeout(total=settings.timeout)
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=timeout
            ) as reply:
                await reply.read()
                ok = 200 <= reply.status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            _log.debug("callback for %s to %s failed: %r", record.task_id, _redact(url), exc)
            return False
        if ok:
            self._counters.callbacks_delivered += 1
            note_callback(record)
        else:
            _log.debug(
                "callback for %s to %s got HTTP %d", record.task_id, _redact(url), reply.status
            )
        return ok


def _redact(url: str | None) -> str:
    """The callback URL without its path and query, which may carry a secret token."""
    if not url:
        return "?"
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/<redacted>"
