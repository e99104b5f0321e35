"""Result files to disk: streamed to a temporary name, renamed when complete, retried.

Used by :meth:`RuxaClient.download`. The file is written off the event loop
(chunks are gathered into blocks of ``block_size`` bytes and each block is
written in a worker thread); a partial file never carries the final name. A
final file that already exists (with the expected size, when one is known) is
not fetched again. Connection errors, timeouts, truncated bodies, 429 and 5xx
replies are retried with exponential backoff; any other status (an expired URL
answers 403, 404 or 410) fails at once with :class:`DownloadError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import unquote, urlsplit

import anyio.to_thread

from ._errors import APIConnectionError, DownloadError

__all__ = ["DownloadError", "download_to_file", "file_name"]

log = logging.getLogger("ruxa_async")

DEFAULT_ATTEMPTS = 4
DEFAULT_TIMEOUT = 300.0
DEFAULT_CHUNK_SIZE = 64 * 1024
DEFAULT_BLOCK_SIZE = 1024 * 1024
_BACKOFF_BASE = 0.5
_BACKOFF_MAX = 10.0


class _Stream(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def chunks(self) -> Callable[[int], AsyncIterator[bytes]]: ...


class StreamingTransport(Protocol):
    """What :func:`download_to_file` needs: a streamed GET of an absolute URL."""

    def stream(
        self, url: str, *, timeout: float | None = None
    ) -> AbstractAsyncContextManager[_Stream]:
        """Open ``url`` and yield its status, announced length and chunks."""
        ...


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_EXTENSION = re.compile(r"\.([A-Za-z0-9]{1,8})$")


def file_name(key: str, index: int, url: str) -> str:
    """A safe local file name for result ``index`` of job ``key``: ``<key>_<index>.<ext>``.

    The key is reduced to letters, digits, ``.``, ``_`` and ``-``; when that
    changes it, a short digest of the original key is added so distinct keys
    never share a name. The extension comes from the URL's path (``bin``
    when it has none).
    """
    safe = _UNSAFE.sub("_", key).strip("._-")[:80] or "job"
    if safe != key:
        safe += "~" + hashlib.blake2b(key.encode(), digest_size=4).hexdigest()
    path = unquote(urlsplit(url).path)
    match = _EXTENSION.search(path.rsplit("/", 1)[-1])
    ext = match.group(1).lower() if match else "bin"
    return f"{safe}_{index}.{ext}"


def _existing_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _open_part(path: Path) -> IO[bytes]:
    return path.open("wb")


def _finish(handle: IO[bytes], part: Path, dest: Path, fsync: bool) -> None:
    try:
        handle.flush()
        if fsync:
            os.fsync(handle.fileno())
    finally:
        handle.close()
    os.replace(part, dest)


def _discard(handle: IO[bytes] | None, part: Path) -> None:
    if handle is not None:
        handle.close()
    with contextlib.suppress(FileNotFoundError):
        part.unlink()


def _describe(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else "the URL"


async def _fetch_once(
    transport: StreamingTransport,
    url: str,
    dest: Path,
    part: Path,
    *,
    attempt_timeout: float,
    chunk_size: int,
    block_size: int,
    fsync: bool,
) -> int:
    """One attempt; returns the size written. Raises DownloadError or APIConnectionError."""
    async with transport.stream(url, timeout=attempt_timeout) as stream:
        status = stream.status
        if status != 200:
            retryable = status == 429 or status >= 500
            raise DownloadError(
                f"HTTP {status} for {_describe(url)}",
                url=url,
                http_status=status,
                retryable=retryable,
            )
        handle: IO[bytes] | None = await anyio.to_thread.run_sync(_open_part, part)
        assert handle is not None
        written = 0
        try:
            block: list[bytes] = []
            pending = 0
            async for chunk in stream.chunks(chunk_size):
                block.append(chunk)
                pending += len(chunk)
                if pending >= block_size:
                    await anyio.to_thread.run_sync(handle.write, b"".join(block))
                    written += pending
                    block, pending = [], 0
            if block:
                await anyio.to_thread.run_sync(handle.write, b"".join(block))
                written += pending
            expected = stream.content_length
            if expected is not None and written != expected:
                raise DownloadError(
                    f"truncated body for {_describe(url)}: {written} of {expected} bytes",
                    url=url,
                    http_status=status,
                    retryable=True,
                )
            await anyio.to_thread.run_sync(_finish, handle, part, dest, fsync)
            handle = None
        finally:
            if handle is not None:
                # Also reached on cancellation: closing and unlinking one file is quick.
                _discard(handle, part)
    return written


async def download_to_file(
    transport: StreamingTransport,
    url: str,
    dest: Path,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - per attempt, enforced by the transport
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_size: int = DEFAULT_BLOCK_SIZE,
    expected_size: int | None = None,
    fsync: bool = False,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    The body streams into ``.<name>.part`` in the same folder, which is renamed
    to ``dest`` once complete (``fsync=True`` also flushes it to disk first).
    If ``dest`` already exists, and has ``expected_size`` bytes when that is
    given, nothing is fetched. Up to ``attempts`` tries, each bounded by
    ``timeout`` seconds. Raises :class:`DownloadError` when the file cannot be
    had; the caller bounds how many downloads run at once.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    size = await anyio.to_thread.run_sync(_existing_size, dest)
    if size is not None and (expected_size is None or size == expected_size):
        log.debug("%s already exists; not downloading it again", dest)
        return dest
    part = dest.with_name(f".{dest.name}.part")
    last: DownloadError | None = None
    for attempt in range(1, attempts + 1):
        try:
            written = await _fetch_once(
                transport,
                url,
                dest,
                part,
                attempt_timeout=timeout,
                chunk_size=chunk_size,
                block_size=block_size,
                fsync=fsync,
            )
        except DownloadError as exc:
            if not exc.retryable:
                raise
            last = exc
        except APIConnectionError as exc:
            last = DownloadError(
                f"{_describe(url)}: {exc}", url=url, http_status=None, retryable=True
            )
            last.__cause__ = exc
        except OSError as exc:
            raise DownloadError(
                f"cannot write {dest}: {exc.strerror or exc}", url=url, retryable=False
            ) from exc
        else:
            log.debug("downloaded %s (%d bytes)", dest, written)
            return dest
        if attempt < attempts:
            delay = random.uniform(0, min(_BACKOFF_MAX, _BACKOFF_BASE * 2 ** (attempt - 1)))
            log.info(
                "download of %s failed (%s); retry %d of %d in %.1f s",
                dest.name,
                last,
                attempt,
                attempts - 1,
                delay,
            )
            await asyncio.sleep(delay)
    assert last is not None
    raise DownloadError(
        f"{last} (gave up after {attempts} attempts)",
        url=url,
        http_status=last.http_status,
        retryable=True,
    ) from last
