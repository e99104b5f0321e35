"""RuxaClient against the simulator over loopback: requests, dialects, errors, retries."""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from ruxa_async import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    ConfigurationError,
    InsufficientCreditsError,
    MalformedResponseError,
    NotFoundError,
    OutagePolicy,
    RateLimitError,
    RateLimits,
    RetryPolicy,
    RuxaClient,
    ServerError,
    ServiceUnavailableError,
    TaskState,
    Timeouts,
    ValidationError,
)
from ruxa_async.testing import Dialect, FakeRuxa, Faults, RateLimit, SimConfig

from .conftest import FAST_RETRY, make_client

PROMPT = {"prompt": "a lighthouse at dusk"}
MODEL = "google/nano-banana"


def test_missing_key_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key argument and no RUXA_API_KEY fails at construction, naming both."""
    monkeypatch.delenv("RUXA_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="RUXA_API_KEY"):
        RuxaClient()


async def test_key_and_base_url_from_environment(
    fake: FakeRuxa, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RUXA_API_KEY and RUXA_BASE_URL configure a client with no arguments."""
    monkeypatch.setenv("RUXA_API_KEY", fake.api_key)
    monkeypatch.setenv("RUXA_BASE_URL", fake.url)
    async with RuxaClient() as client:
        assert client.base_url == fake.url
        task_id = await client.create_task(MODEL, PROMPT)
    assert fake.task(task_id) is not None


async def test_create_then_get_task(client: RuxaClient, fake: FakeRuxa) -> None:
    """create_task returns the id; get_task reads the task until it succeeds."""
    task_id = await client.create_task(MODEL, PROMPT)
    assert task_id.startswith("task_")
    await client.wait(task_id)
    info = await client.get_task(task_id)
    assert info.state is TaskState.SUCCESS
    assert info.task_id == task_id
    assert info.model == MODEL
    assert len(info.result_urls) == 1
    assert info.result_urls[0].startswith(fake.url)
    assert info.create_time is not None
    assert info.complete_time is not None


@pytest.mark.parametrize("errors", ["http", "envelope"])
@pytest.mark.parametrize("message_field", ["message", "msg"])
@pytest.mark.parametrize("success_state", ["success", "completed"])
@pytest.mark.parametrize("result_json", ["string", "object"])
async def test_every_dialect_generates(
    errors: str, message_field: str, success_state: str, result_json: str
) -> None:
    """Each combination of the service's ambiguous dialects gives the same result."""
    dialect = Dialect(
        errors=errors,  # type: ignore[arg-type]
        message_field=message_field,  # type: ignore[arg-type]
        success_state=success_state,  # type: ignore[arg-type]
        result_json=result_json,  # type: ignore[arg-type]
    )
    async with FakeRuxa(SimConfig(dialect=dialect, seed=1)) as sim, make_client(sim) as client:
        info = await client.generate(MODEL, PROMPT, timeout=10)
        assert info.succeeded
        assert len(info.result_urls) == 1
        with pytest.raises(ValidationError):
            await client.create_task("no/such-model", PROMPT)


@pytest.mark.parametrize("errors", ["http", "envelope"])
async def test_wrong_key_is_401_and_never_retried(errors: str) -> None:
    """A wrong key raises AuthenticationError after exactly one request."""
    config = SimConfig(dialect=Dialect(errors=errors))  # type: ignore[arg-type]
    async with FakeRuxa(config) as sim, make_client(sim, api_key="sk-wrong") as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.create_task(MODEL, PROMPT)
        assert caught.value.code == 401
        assert caught.value.http_status == (401 if errors == "http" else 200)
        assert sim.stats().requests == 1


@pytest.mark.parametrize("errors", ["http", "envelope"])
async def test_no_credits_is_402_and_never_retried(errors: str) -> None:
    """An empty balance raises InsufficientCreditsError after one request; nothing is created."""
    config = SimConfig(credits=1.0, dialect=Dialect(errors=errors))  # type: ignore[arg-type]
    async with FakeRuxa(config) as sim, make_client(sim) as client:
        with pytest.raises(InsufficientCreditsError, match="credits"):
            await client.create_task(MODEL, PROMPT)
        assert sim.stats().creates == 1
        assert sim.stats().tasks_created == 0


@pytest.mark.parametrize(
    ("model", "input_", "field"),
    [
        ("no/such-model", PROMPT, "model"),
        (MODEL, {"output_format": "png"}, "prompt"),
        (MODEL, {"prompt": "x", "image_size": "7:1"}, "image_size"),
    ],
)
@pytest.mark.parametrize("errors", ["http", "envelope"])
async def test_invalid_requests_are_422_and_never_retried(
    model: str, input_: dict[str, str], field: str, errors: str
) -> None:
    """Sent unchecked: unknown model, missing prompt, bad enum are a 422 after one request."""
    config = SimConfig(dialect=Dialect(errors=errors))  # type: ignore[arg-type]
    async with FakeRuxa(config) as sim, make_client(sim) as client:
        with pytest.raises(ValidationError) as caught:
            await client.create_task(model, input_, validate=False)
        assert caught.value.code == 422
        assert sim.stats().requests == 1


@pytest.mark.parametrize("unknown_task", ["404", "422"])
@pytest.mark.parametrize("errors", ["http", "envelope"])
async def test_unknown_task_is_not_found(unknown_task: str, errors: str) -> None:
    """An unknown task id is NotFoundError in both the 404 and 'recordInfo is null' dialects."""
    dialect = Dialect(errors=errors, unknown_task=unknown_task)  # type: ignore[arg-type]
    async with FakeRuxa(SimConfig(dialect=dialect)) as sim, make_client(sim) as client:
        with pytest.raises(NotFoundError):
            await client.get_task("task_gemini-2.5-flash-image_1766304530229_00000000")
        assert sim.stats().queries == 1


@pytest.mark.parametrize("retry_after", [True, False])
async def test_429_is_retried_after_the_shared_pause(retry_after: bool) -> None:
    """A rate-limited create waits at the gate and then succeeds; nothing is sent early."""
    config = SimConfig(
        create_limit=RateLimit(per_second=5, burst=1),
        dialect=Dialect(retry_after=retry_after),
    )
    limits = RateLimits(pause_without_retry_after=0.2)
    async with FakeRuxa(config) as sim, make_client(sim, rate_limits=limits) as client:
        ids = await asyncio.gather(*(client.create_task(MODEL, PROMPT) for _ in range(4)))
        stats = client.statistics()
    assert len(set(ids)) == 4
    assert sim.stats().rate_limited_create >= 1
    assert stats.rate_limited == sim.stats().rate_limited_create
    assert stats.rate.sent_while_gated == 0
    assert sim.stats().tasks_created == 4
    assert sim.stats().duplicate_creates == 4 - 1  # same input four times, on purpose


async def test_429_gives_up_after_max_attempts() -> None:
    """With retries exhausted, the RateLimitError reaches the caller with retry_after."""
    config = SimConfig(query_limit=RateLimit(per_second=0.01, burst=1))
    retry = RetryPolicy(max_attempts=2, initial_delay=0.01, max_delay=0.01)
    limits = RateLimits(max_pause=0.05)
    async with FakeRuxa(config) as sim, make_client(sim, retry=retry, rate_limits=limits) as client:
        with pytest.raises(NotFoundError):  # the one token of the bucket
            await client.get_task("task_x_1_00000000")
        with pytest.raises(RateLimitError) as caught:
            await client.get_task("task_x_1_00000000")
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1
    assert sim.stats().rate_limited_query == 2
    assert sim.stats().queries == 3


async def test_queries_retry_on_server_errors(fake: FakeRuxa) -> None:
    """A query that meets 500s is retried until it gets an answer."""
    async with make_client(fake) as client:
        task_id = await client.create_task(MODEL, PROMPT)
        fake.reconfigure(faults=Faults(error_500_before=0.6), seed=3)
        info = await client.get_task(task_id)
        retries = client.statistics().retries
    assert info.task_id == task_id
    assert fake.stats().faults["error_500_before"] == retries
    assert fake.stats().queries == retries + 1


async def test_ambiguous_create_is_retried_and_counted_by_default(
    fake: FakeRuxa, caplog: pytest.LogCaptureFixture
) -> None:
    """A 500 after the task was created is retried, counted, warned about, seen as a duplicate."""
    fake.reconfigure(faults=Faults(error_500_after_create=1.0))
    async with make_client(fake, retry=RetryPolicy(max_attempts=3, initial_delay=0.01)) as client:
        with pytest.raises(ServerError):
            await client.create_task(MODEL, PROMPT)
        stats = client.statistics()
    assert stats.ambiguous_create_retries == 2
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "ruxa_async"]
    assert len(warned) == 2
    assert fake.stats().ambiguous_created == 3
    assert fake.stats().duplicate_creates == 2


async def test_ambiguous_create_raises_at_once_when_asked(fake: FakeRuxa) -> None:
    """With ambiguous_creates='raise', a 500 after create is raised after one request."""
    fake.reconfigure(faults=Faults(error_500_after_create=1.0))
    retry = RetryPolicy(ambiguous_creates="raise")
    async with make_client(fake, retry=retry) as client:
        with pytest.raises(ServerError):
            await client.create_task(MODEL, PROMPT)
        assert client.statistics().ambiguous_create_retries == 0
    assert fake.stats().creates == 1
    assert fake.stats().duplicate_creates == 0


async def test_500_before_create_is_ambiguous_too(fake: FakeRuxa) -> None:
    """The client cannot tell a 500 before from one after: both count as ambiguous."""
    fake.reconfigure(faults=Faults(error_500_before=1.0))
    async with make_client(fake, retry=RetryPolicy(max_attempts=2, initial_delay=0.01)) as c:
        with pytest.raises(ServerError):
            await c.create_task(MODEL, PROMPT)
        assert c.statistics().ambiguous_create_retries == 1
    assert fake.stats().tasks_created == 0


async def test_dropped_connection_on_query_is_retried(fake: FakeRuxa) -> None:
    """A query whose connection drops without a reply is sent again and answered.

    (aiohttp itself re-sends an idempotent GET once on a dropped keep-alive
    connection; the SDK's retries cover the rest.)
    """
    async with make_client(fake) as client:
        task_id = await client.create_task(MODEL, PROMPT)
        fake.reconfigure(faults=Faults(drop_before=0.5), seed=11)
        infos = [await client.get_task(task_id) for _ in range(8)]
    drops = fake.stats().faults["drop_before"]
    assert drops > 0
    assert all(info.task_id == task_id for info in infos)
    assert fake.stats().queries == len(infos) + drops


async def test_dropped_create_without_retry_raises_connection_error(fake: FakeRuxa) -> None:
    """A create dropped after the task was made surfaces as APIConnectionError (request_sent)."""
    fake.reconfigure(faults=Faults(drop_after_create=1.0))
    async with make_client(fake, retry=RetryPolicy(ambiguous_creates="raise")) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.create_task(MODEL, PROMPT)
    assert caught.value.request_sent is True
    assert fake.stats().tasks_created == 1


async def test_connection_refused_waits_at_the_outage_gate_as_never_sent() -> None:
    """No server listening: the create waits while the gate probes, then fails as never sent."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    retry = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.01)
    outage = OutagePolicy(first_contact=0.5, probe_initial=0.1)
    url = f"http://127.0.0.1:{port}"
    async with RuxaClient("sk-x", base_url=url, retry=retry, outage=outage) as client:
        with pytest.raises(ServiceUnavailableError) as caught:
            await client.create_task(MODEL, PROMPT)
        stats = client.statistics()
    assert caught.value.request_sent is False
    assert url in str(caught.value)
    assert (stats.retries, stats.ambiguous_create_retries) == (0, 0)
    assert stats.outage.probes == stats.requests_sent - 1


async def test_slow_reply_times_out(fake: FakeRuxa) -> None:
    """A reply slower than the read timeout raises APITimeoutError after the retries.

    (Too few timeouts in a row to close the outage gate: see test_outage.py for that.)
    """
    retry = RetryPolicy(max_attempts=2, initial_delay=0.01, ambiguous_creates="raise")
    timeouts = Timeouts(read=0.2, total=1.0)
    outage = OutagePolicy(failures=10)
    async with make_client(fake, retry=retry, timeouts=timeouts, outage=outage) as client:
        with pytest.raises(NotFoundError):  # the service answered once
            await client.get_task("task_a_1_00000000")
        fake.reconfigure(faults=Faults(slow_reply=1.0, slow_seconds=2.0))
        with pytest.raises(APITimeoutError) as caught:
            await client.create_task(MODEL, PROMPT)
        assert caught.value.request_sent is True
        with pytest.raises(APITimeoutError):
            await client.get_task("task_a_1_00000000")
    assert fake.stats().creates == 1
    assert fake.stats().queries == 3


@pytest.fixture
async def junk_server() -> AsyncIterator[str]:
    """A loopback server answering every request with the body the path names."""

    async def handler(request: web.Request) -> web.Response:
        kind = request.path.rsplit("/", 1)[-1]
        bodies = {
            "html": (200, "<html>maintenance</html>"),
            "list": (200, "[1, 2, 3]"),
            "nodata": (200, '{"code": 200, "message": "success", "data": null}'),
            "bad-gateway": (502, "<html>bad gateway</html>"),
        }
        status, text = bodies.get(kind, (200, ""))
        return web.Response(status=status, text=text)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("task_id", "error"),
    [
        ("html", MalformedResponseError),
        ("list", MalformedResponseError),
        ("nodata", MalformedResponseError),
        ("bad-gateway", ServerError),
    ],
)
async def test_malformed_replies_are_clear_errors(
    junk_server: str, task_id: str, error: type[Exception]
) -> None:
    """Non-JSON, wrong-shape and proxy error replies raise SDK errors, never KeyError."""
    retry = RetryPolicy(max_attempts=1)
    async with RuxaClient("sk-x", base_url=junk_server, retry=retry) as client:
        with pytest.raises(error):
            await client.get_task(task_id)


async def test_create_with_no_task_id_is_malformed(junk_server: str) -> None:
    """A create answered 200 without data.taskId raises MalformedResponseError."""
    retry = RetryPolicy(max_attempts=1)
    async with RuxaClient("sk-x", base_url=junk_server + "/nodata", retry=retry) as client:
        with pytest.raises(MalformedResponseError):
            await client.create_task(MODEL, PROMPT)


async def test_key_provider_is_called_per_request(fake: FakeRuxa) -> None:
    """A callable key is read on every request, so a key can rotate without a restart."""
    keys = iter(["sk-old-and-revoked", fake.api_key])
    current = {"key": next(keys)}
    async with RuxaClient(lambda: current["key"], base_url=fake.url, retry=FAST_RETRY) as client:
        with pytest.raises(AuthenticationError):
            await client.create_task(MODEL, PROMPT)
        current["key"] = next(keys)
        assert await client.create_task(MODEL, PROMPT)


async def test_the_key_never_appears_in_logs_reprs_or_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The API key stays out of DEBUG logs, reprs, messages and tracebacks."""
    secret = "sk-live-" + "s3cr3t" * 6
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    async with FakeRuxa(SimConfig(api_key=secret, credits=8.0)) as sim:
        async with make_client(sim) as client:
            texts.append(repr(client))
            await client.generate(MODEL, PROMPT, timeout=10)
            for call in (
                client.create_task("bad/model", PROMPT),
                client.generate(MODEL, PROMPT),
                client.generate(MODEL, PROMPT),
            ):
                try:
                    await call
                except Exception as exc:
                    texts.append(repr(exc))
                    texts.append("".join(traceback.format_exception(exc)))
            texts.append(repr(client.statistics()))
        async with make_client(sim, api_key=secret + "-wrong") as client:
            with pytest.raises(AuthenticationError) as caught:
                await client.create_task(MODEL, PROMPT)
            texts.append("".join(traceback.format_exception(caught.value)))
    texts.append(caplog.text)
    assert len(texts) >= 6
    for text in texts:
        assert "s3cr3t" not in text


async def test_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY is honoured: requests for a host only the proxy knows go through it."""
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        return web.json_response({"code": 200, "message": "success", "data": {"taskId": "t1"}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{runner.addresses[0][1]}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        async with RuxaClient("sk-x", base_url="http://ruxa.test", retry=FAST_RETRY) as client:
            assert await client.create_task(MODEL, PROMPT) == "t1"
            assert await client.create_task(MODEL, PROMPT) == "t1"
    finally:
        await runner.cleanup()
    assert seen == ["http://ruxa.test/api/v1/tasks/create"] * 2


async def test_loopback_never_goes_through_a_proxy(
    fake: FakeRuxa, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy set in the environment is bypassed for loopback hosts like the simulator's."""
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with make_client(fake) as client:
        task_id = await client.create_task(MODEL, PROMPT)
    assert fake.task(task_id) is not None
