"""The download pipeline of a batch run: a bounded queue of result files and a few workers.

Files are queued as their tasks succeed (and, on a resume, when a finished
job's file is missing). ``put`` waits while the queue is full, so a slow disk
or host holds back the batch instead of piling up work in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio.to_thread
import attrs

from ._client import RuxaClient
from ._download import file_name
from ._errors import DownloadError
from ._journal import FileRecord
from ._progress import BatchCounters

__all__ = ["DownloadPipeline", "FileWanted"]

log = logging.getLogger("ruxa_async")


@attrs.frozen(kw_only=True)
class FileWanted:
    """Result file ``index`` of job ``key``, to be saved as ``dest``."""

    key: str
    index: int
    url: str
    dest: Path


def wanted(out: Path, key: str, urls: Sequence[str]) -> list[FileWanted]:
    """Every result file of a job, named in ``out``."""
    return [
        FileWanted(key=key, index=i, url=url, dest=out / file_name(key, i, url))
        for i, url in enumerate(urls)
    ]


def _size_of(path: Path) -> int:
    return path.stat().st_size


class DownloadPipeline:
    """``workers`` downloads at a time from a queue of ``2 x workers``; an async context manager.

    Leaving the context waits for every queued file (see :meth:`finish`).
    """

    def __init__(
        self,
        client: RuxaClient,
        counters: BatchCounters,
        record: Callable[[FileRecord], None],
        *,
        workers: int = 8,
        attempts: int = 4,
        timeout: float = 300.0,
    ) -> None:
        self._client = client
        self._counters = counters
        self._record = record
        self._attempts = attempts
        self._timeout = timeout
        self._count = workers
        self._queue: asyncio.Queue[FileWanted] = asyncio.Queue(maxsize=2 * workers)
        self._workers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> DownloadPipeline:
        self._workers = [
            asyncio.create_task(self._work(), name=f"ruxa-async download {i}")
            for i in range(self._count)
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.finish(cancel=exc_info[0] is not None)

    async def put(self, file: FileWanted) -> None:
        """Queue a file (waits while the queue is full)."""
        await self._queue.put(file)

    async def finish(self, *, cancel: bool) -> None:
        """Wait for every queued file, or with ``cancel`` drop them and stop at once.

        A worker that died of an unexpected error re-raises it here.
        """
        if not cancel and self._workers:
            joined = asyncio.create_task(self._queue.join())
            await asyncio.wait({joined, *self._workers}, return_when=asyncio.FIRST_COMPLETED)
            joined.cancel()
        failed = [w for w in self._workers if w.done() and not w.cancelled() and w.exception()]
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers = []
        if failed:
            raise failed[0].exception()  # type: ignore[misc]

    async def _work(self) -> None:
        while True:
            file = await self._queue.get()
            try:
                await self._fetch(file)
            finally:
                self._queue.task_done()

    async def _fetch(self, file: FileWanted) -> None:
        c = self._counters
        c.downloads_running += 1
        try:
            await self._client.download(
                file.url, file.dest, attempts=self._attempts, timeout=self._timeout
            )
            size = await anyio.to_thread.run_sync(_size_of, file.dest)
        except (DownloadError, OSError) as exc:
            c.downloads_failed += 1
            log.warning("could not download result %d of job %s: %s", file.index, file.key, exc)
            self._record(_record(file, "failed", error=str(exc)))
            return
        finally:
            c.downloads_running -= 1
        c.downloads_done += 1
        self._record(_record(file, "done", size=size))


def _record(
    file: FileWanted, state: str, *, size: int | None = None, error: str | None = None
) -> FileRecord:
    return FileRecord(
        key=file.key,
        index=file.index,
        url=file.url,
        path=file.dest.name,
        state=state,
        size=size,
        error=error,
    )
