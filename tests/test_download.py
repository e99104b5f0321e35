"""Result downloads over loopback from the simulator: atomic, skipped when present, retried."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ruxa_async import DownloadError, PollPolicy, RuxaClient
from ruxa_async._download import file_name
from ruxa_async.testing import FakeRuxa, Faults, ModelBehavior, SimConfig

FILE_SIZE = 300_000


@pytest.fixture
async def fake() -> AsyncIterator[FakeRuxa]:
    config = SimConfig(
        default_behavior=ModelBehavior(median_seconds=0.0), file_size=FILE_SIZE, seed=7
    )
    async with FakeRuxa(config) as sim:
        yield sim


@pytest.fixture
async def client(fake: FakeRuxa) -> AsyncIterator[RuxaClient]:
    poll = PollPolicy(first_check=0.05, min_interval=0.05)
    async with RuxaClient(api_key=fake.api_key, base_url=fake.url, poll=poll) as c:
        yield c


async def _result_url(client: RuxaClient) -> str:
    info = await client.generate("google/nano-banana", {"prompt": "a red fox"})
    return info.result_urls[0]


async def test_download_streams_the_whole_file(client: RuxaClient, tmp_path: Path) -> None:
    """The file arrives complete under its final name and no partial file is left."""
    url = await _result_url(client)
    dest = tmp_path / "fox_0.png"
    path = await client.download(url, dest, chunk_size=4096, block_size=65536)
    assert path == dest
    assert dest.stat().st_size == FILE_SIZE
    assert dest.read_bytes().startswith(b"\x89PNG")
    assert os.listdir(tmp_path) == ["fox_0.png"]


async def test_existing_file_is_not_fetched_again(
    fake: FakeRuxa, client: RuxaClient, tmp_path: Path
) -> None:
    """A final file already on disk (with the expected size) is not requested again."""
    url = await _result_url(client)
    dest = tmp_path / "fox_0.png"
    await client.download(url, dest)
    before = fake.stats().downloads
    await client.download(url, dest, expected_size=FILE_SIZE)
    await client.download(url, dest)
    assert fake.stats().downloads == before


async def test_wrong_size_file_is_fetched_again(
    fake: FakeRuxa, client: RuxaClient, tmp_path: Path
) -> None:
    """A file with another size than expected is replaced."""
    url = await _result_url(client)
    dest = tmp_path / "fox_0.png"
    dest.write_bytes(b"stale")
    await client.download(url, dest, expected_size=FILE_SIZE)
    assert dest.stat().st_size == FILE_SIZE
    assert fake.stats().downloads == 1


async def test_transient_errors_are_retried(
    fake: FakeRuxa, client: RuxaClient, tmp_path: Path
) -> None:
    """500s and dropped connections on the file are retried until the file arrives."""
    url = await _result_url(client)
    fake.reconfigure(faults=Faults(error_500_before=0.4, drop_before=0.3, files=True))
    dests = [tmp_path / f"fox_{i}.png" for i in range(6)]
    for dest in dests:
        await client.download(url, dest, attempts=30)
    assert all(d.stat().st_size == FILE_SIZE for d in dests)
    stats = fake.stats()
    assert stats.downloads > len(dests)
    assert stats.faults["error_500_before"] + stats.faults["drop_before"] > 0


async def test_gives_up_after_the_attempts(
    fake: FakeRuxa, client: RuxaClient, tmp_path: Path
) -> None:
    """When every attempt fails, DownloadError says so, is retryable and leaves no file."""
    url = await _result_url(client)
    fake.reconfigure(faults=Faults(error_500_before=1.0, files=True))
    before = fake.stats().downloads
    with pytest.raises(DownloadError) as info:
        await client.download(url, tmp_path / "fox_0.png", attempts=3)
    assert info.value.retryable
    assert info.value.http_status == 500
    assert "after 3 attempts" in str(info.value)
    assert fake.stats().downloads - before == 3
    assert os.listdir(tmp_path) == []


async def test_expired_url_fails_at_once(
    fake: FakeRuxa, client: RuxaClient, tmp_path: Path
) -> None:
    """A refused URL (404: the result expired) is not retried."""
    url = await _result_url(client)
    fake.reconfigure(result_ttl=0.0)
    before = fake.stats().downloads
    with pytest.raises(DownloadError) as info:
        await client.download(url, tmp_path / "fox_0.png", attempts=5)
    assert (info.value.http_status, info.value.retryable) == (404, False)
    assert fake.stats().downloads - before == 1


async def test_unreachable_host_is_a_download_error(client: RuxaClient, tmp_path: Path) -> None:
    """A connection that cannot be opened ends as DownloadError after the attempts."""
    with pytest.raises(DownloadError, match="after 2 attempts"):
        await client.download("http://127.0.0.1:9/files/x/0.png", tmp_path / "x.png", attempts=2)


@pytest.mark.parametrize(
    ("key", "url", "expected"),
    [
        ("fox-1", "https://cdn.example.com/a/b/image.PNG?sig=1", "fox-1_0.png"),
        ("clip", "https://cdn.example.com/v/clip.mp4", "clip_0.mp4"),
        ("noext", "https://cdn.example.com/v/blob", "noext_0.bin"),
    ],
)
def test_file_name_keeps_safe_keys(key: str, url: str, expected: str) -> None:
    """Safe keys are kept as they are, with the index and the URL's extension."""
    assert file_name(key, 0, url) == expected


def test_file_name_sanitises_unsafe_keys() -> None:
    """Unsafe keys are reduced to safe characters plus a digest, so distinct keys stay distinct."""
    a = file_name("../etc/pass wd", 1, "http://x/y.png")
    b = file_name("../etc/pass_wd", 1, "http://x/y.png")
    assert "/" not in a
    assert not a.startswith(".")
    assert a.endswith("_1.png")
    assert a != b
