"""CallbackServer against the simulator's real callback delivery over loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ruxa_async import (
    PollPolicy,
    RetryPolicy,
    RuxaClient,
    TaskFailedError,
    TaskInfo,
    TaskState,
)
from ruxa_async._errors import ConfigurationError
from ruxa_async._handles import TaskHandle
from ruxa_async.testing import CallbackDelivery, Dialect, FakeRuxa, ModelBehavior, SimConfig
from ruxa_async.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, CallbackServer

MODEL = "google/nano-banana"
KEY = "whk-sim-key"

# Tasks take a few tenths of a second, long enough that a create's reply is
# always handled before the task's callback can arrive.
QUICK = ModelBehavior(median_seconds=0.3, sigma=0.3, min_seconds=0.15)
SLOW = ModelBehavior(median_seconds=120.0, sigma=0.0)

# Callbacks on, safety net far away: any query seen in a test is a regression.
QUIET = PollPolicy(first_check=0.3, callback_grace_factor=1.0, callback_grace=30.0)
# Callbacks on, safety net soon and frequent: for dropped or refused callbacks.
NET = PollPolicy(
    first_check=0.3,
    callback_grace_factor=1.0,
    callback_grace=0.3,
    min_interval=0.05,
    max_interval=0.3,
)
RETRY = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_time=20.0)


def sim(
    *,
    behavior: ModelBehavior = QUICK,
    fail_rate: float = 0.0,
    dialect: Dialect | None = None,
    **delivery: Any,
) -> SimConfig:
    """A simulator config with callback delivery configured by ``delivery``."""
    if fail_rate:
        behavior = ModelBehavior(
            median_seconds=behavior.median_seconds,
            sigma=behavior.sigma,
            min_seconds=behavior.min_seconds,
            fail_rate=fail_rate,
        )
    return SimConfig(
        seed=11,
        default_behavior=behavior,
        callbacks=CallbackDelivery(**delivery),
        dialect=dialect or Dialect(),
    )


@asynccontextmanager
async def running(
    config: SimConfig, server: CallbackServer, poll: PollPolicy = QUIET
) -> AsyncIterator[tuple[FakeRuxa, RuxaClient]]:
    """A simulator and a client whose callbacks go to ``server``."""
    async with (
        FakeRuxa(config) as fake,
        RuxaClient(
            fake.api_key, base_url=fake.url, callbacks=server, poll=poll, retry=RETRY
        ) as client,
    ):
        yield fake, client


async def submit_many(client: RuxaClient, n: int) -> list[TaskHandle]:
    """Submit ``n`` distinct tasks concurrently."""
    return list(
        await asyncio.gather(*(client.submit(MODEL, {"prompt": f"fox {i}"}) for i in range(n)))
    )


async def outcomes(handles: list[TaskHandle]) -> list[TaskInfo]:
    """Every handle's terminal snapshot, failures included."""
    return list(await asyncio.gather(*(h.wait(raise_on_failure=False) for h in handles)))


def kie_body(task_id: str, state: str = "success") -> bytes:
    """A kie-style callback envelope for ``task_id``."""
    data = {
        "taskId": task_id,
        "state": state,
        "resultJson": json.dumps({"resultUrls": ["https://cdn.example/forged.png"]}),
    }
    return json.dumps({"code": 200, "msg": "done", "data": data}).encode()


def signature(task_id: str, stamp: int, key: str = KEY) -> dict[str, str]:
    """kie's signature headers."""
    digest = hmac.new(key.encode(), f"{task_id}.{stamp}".encode(), hashlib.sha256).digest()
    return {TIMESTAMP_HEADER: str(stamp), SIGNATURE_HEADER: base64.b64encode(digest).decode()}


async def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """POST ``body`` to ``url`` with a real client; the status and the reply text."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as reply,
    ):
        return reply.status, await reply.text()


def base_of(server: CallbackServer) -> str:
    """The callback URL without its token."""
    return server.callback_url.rsplit("/", 1)[0]


async def pending_handle(client: RuxaClient) -> TaskHandle:
    """A handle for a task that will not finish during the test."""
    handle = await client.submit(MODEL, {"prompt": "slow"})
    await asyncio.sleep(0.05)
    assert not handle.done()
    return handle


# ------------------------------------------------------------------ the happy path


async def test_callbacks_replace_polling() -> None:
    """With callbacks delivered, every task resolves and almost no query is sent."""
    n = 60
    server = CallbackServer()
    async with running(sim(), server) as (fake, client):
        infos = await outcomes(await submit_many(client, n))
        stats = fake.stats()
        sched = client.statistics().scheduler
    assert all(info.succeeded for info in infos)
    assert stats.creates == n
    assert stats.queries <= 0.1 * n
    assert sched.resolved_by_callback == n
    assert server.statistics().resolved == n
    assert server.statistics().accepted == server.statistics().received == n


@pytest.mark.parametrize(
    ("style", "message_field"),
    [("kie", "msg"), ("kie", "message"), ("flat", "message")],
)
async def test_payload_styles_resolve_successes_and_failures(
    style: str, message_field: str
) -> None:
    """kie (msg or message) and flat callbacks resolve handles with the task's true outcome."""
    dialect = Dialect(callback_style=style, message_field=message_field)  # type: ignore[arg-type]
    server = CallbackServer()
    async with running(sim(fail_rate=0.4, dialect=dialect), server) as (fake, client):
        handles = await submit_many(client, 30)
        infos = await outcomes(handles)
        expected = {h.task_id: fake.task(h.task_id).outcome for h in handles}  # type: ignore[union-attr]
        with pytest.raises(TaskFailedError):
            await next(h for h in handles if expected[h.task_id] == "fail")
        assert fake.stats().queries == 0
    assert {i.task_id: ("success" if i.succeeded else "fail") for i in infos} == expected
    assert all(i.result_urls for i in infos if i.succeeded)
    assert server.statistics().resolved == 30


async def test_signed_callbacks_are_accepted() -> None:
    """Callbacks signed with the shared HMAC key resolve their tasks."""
    server = CallbackServer(hmac_key=KEY)
    async with running(sim(hmac_key=KEY), server) as (fake, client):
        infos = await outcomes(await submit_many(client, 20))
        assert fake.stats().queries == 0
    assert all(i.succeeded for i in infos)
    assert server.statistics().resolved == 20
    assert server.statistics().rejected_signature == 0


# --------------------------------------------------------------- lost callbacks


@pytest.mark.parametrize(("drop", "n"), [(0.1, 60), (1.0, 20)])
async def test_dropped_callbacks_are_covered_by_polling(drop: float, n: int) -> None:
    """Tasks whose callback never comes still resolve through the safety-net polling."""
    server = CallbackServer()
    async with running(sim(drop=drop), server, NET) as (fake, client):
        infos = await outcomes(await submit_many(client, n))
        stats = fake.stats()
        sched = client.statistics().scheduler
    assert len(infos) == n
    assert all(i.succeeded for i in infos)
    assert stats.callbacks_dropped > 0
    assert sched.resolved_by_poll >= stats.callbacks_dropped
    assert sched.resolved_by_poll + sched.resolved_by_callback == n
    if drop == 1.0:
        assert server.statistics().received == 0


async def test_lost_callbacks_cost_a_few_durations_once_timing_is_learned() -> None:
    """With the default safety net, lost callbacks are found at the learned callback pace."""
    poll = PollPolicy()  # the default grace: 3 x the prior + 30 s until callbacks are learned
    server = CallbackServer()
    async with running(sim(drop=0.1), server, poll) as (fake, client):
        infos = await outcomes(await submit_many(client, 100))
        stats = fake.stats()
        sched = client.statistics().scheduler
    assert all(i.succeeded for i in infos)
    assert stats.callbacks_dropped > 0
    learned = sched.safety_net_seconds[MODEL]
    assert learned < poll.callback_grace
    assert sched.resolved_by_poll >= stats.callbacks_dropped
    # A lost callback costs one or two checks; a delivered one almost never a check.
    assert stats.queries <= 2 * stats.callbacks_dropped + 10


async def test_callbacks_signed_with_another_key_are_refused() -> None:
    """With the wrong HMAC key every callback gets 401, and polling resolves the tasks."""
    server = CallbackServer(hmac_key=KEY)
    async with running(sim(hmac_key="some-other-key"), server, NET) as (fake, client):
        infos = await outcomes(await submit_many(client, 10))
        sent = fake.stats().callbacks_sent
    assert all(i.succeeded for i in infos)
    assert client.statistics().scheduler.resolved_by_poll == 10
    assert server.statistics().rejected_signature == sent >= 1
    assert server.statistics().accepted == 0


# --------------------------------------------------------- duplicates and order


async def test_duplicates_and_out_of_order_deliveries_change_nothing() -> None:
    """Every callback sent twice, in shuffled order: one resolution each, the rest counted."""
    n = 30
    arrivals: list[str] = []
    all_arrived = asyncio.Event()

    def sink(info: TaskInfo) -> None:
        arrivals.append(info.task_id)
        if len(arrivals) == 2 * n:
            all_arrived.set()

    server = CallbackServer(on_task=sink)
    config = sim(duplicate=1.0, delay_min=0.0, delay_max=0.5)
    async with running(config, server) as (fake, client):
        handles = await submit_many(client, n)
        infos = await outcomes(handles)
        await all_arrived.wait()
        stats = fake.stats()
        by_completion = sorted(
            {h.task_id for h in handles},
            key=lambda t: fake.task(t).completes_at,  # type: ignore[union-attr]
        )
    first_arrivals = list(dict.fromkeys(arrivals))
    assert first_arrivals != by_completion  # the deliveries really were reordered
    assert [i.task_id for i in infos] == [h.task_id for h in handles]
    assert all(i.succeeded for i in infos)
    assert stats.callbacks_duplicated == n
    counts = server.statistics()
    assert counts.resolved == n
    assert counts.duplicates_or_late == n
    assert client.statistics().scheduler.callbacks_ignored == n


async def test_late_non_terminal_callback_after_terminal_changes_nothing() -> None:
    """A 'generating' callback after the task resolved is counted and ignored."""
    server = CallbackServer()
    async with running(sim(), server) as (_fake, client):
        handle = await client.submit(MODEL, {"prompt": "fox"})
        info = await handle
        status, _ = await post(server.callback_url, kie_body(handle.task_id, "generating"))
        assert status == 200
        assert handle.info == info
        assert handle.state is TaskState.SUCCESS
    assert server.statistics().duplicates_or_late == 1
    assert server.statistics().resolved == 1


async def test_callback_for_unknown_task_is_counted() -> None:
    """A valid callback for a task id the client never created resolves nothing."""
    server = CallbackServer()
    async with running(sim(), server) as _:
        status, _text = await post(server.callback_url, kie_body("task_nobody_knows"))
    assert status == 200
    counts = server.statistics()
    assert (counts.accepted, counts.resolved, counts.duplicates_or_late) == (1, 0, 1)


# ------------------------------------------------------------------- forgeries


async def test_wrong_or_missing_token_gets_404_and_changes_nothing() -> None:
    """Without the secret path token a callback is refused with 404 and ignored."""
    server = CallbackServer()
    async with running(sim(behavior=SLOW), server) as (_fake, client):
        handle = await pending_handle(client)
        body = kie_body(handle.task_id)
        base = base_of(server)
        for url in (f"{base}/wrong-token-wrong-token", base, f"{base}/", f"{base}/a/b"):
            status, text = await post(url, body)
            assert status == 404
            assert "Traceback" not in text
        await asyncio.sleep(0.05)
        assert not handle.done()
        status, _ = await post(server.callback_url, body)
        assert status == 200
        assert (await handle).result_urls == ("https://cdn.example/forged.png",)
    counts = server.statistics()
    assert counts.rejected_token == 4
    assert counts.resolved == 1


async def test_bad_signatures_and_stale_timestamps_get_401() -> None:
    """A wrong key, missing headers or an old timestamp are refused; a good signature works."""
    server = CallbackServer(hmac_key=KEY)
    async with running(sim(behavior=SLOW), server) as (_fake, client):
        handle = await pending_handle(client)
        tid = handle.task_id
        now = int(time.time())
        forged: list[dict[str, str]] = [
            {},
            signature(tid, now, key="guessed-key"),
            signature(tid, now - 3600),
            signature("task_other", now),
            {**signature(tid, now), SIGNATURE_HEADER: "AAAA"},
        ]
        for headers in forged:
            status, text = await post(server.callback_url, kie_body(tid), headers)
            assert status == 401
            assert "Traceback" not in text
        assert not handle.done()
        status, _ = await post(server.callback_url, kie_body(tid), signature(tid, now))
        assert status == 200
        await handle
    counts = server.statistics()
    assert counts.rejected_signature == len(forged)
    assert counts.resolved == 1


async def test_oversized_and_malformed_bodies_are_refused() -> None:
    """413 for a body over max_body (declared or streamed), 400 for bad JSON; nothing resolves."""
    server = CallbackServer(max_body=1024)
    async with running(sim(behavior=SLOW), server) as (_fake, client):
        handle = await pending_handle(client)
        url = server.callback_url
        padded = json.dumps(
            {"code": 200, "data": {"taskId": handle.task_id, "state": "success"}, "pad": "x" * 2000}
        ).encode()

        async def streamed() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield padded[:512]

        assert (await post(url, padded))[0] == 413
        assert (await post(url, streamed()))[0] == 413
        assert (await post(url, b"{not json"))[0] == 400
        assert (await post(url, b'{"code": 200, "data": {"state": "success"}}'))[0] == 400
        assert (await post(url, b"[]"))[0] == 400
        assert not handle.done()
    counts = server.statistics()
    assert counts.rejected_body == 5
    assert counts.accepted == 0


# ---------------------------------------------------------------- verify by query


async def test_verify_by_query_confirms_each_callback_with_one_get() -> None:
    """With verify_by_query each callback costs exactly one GET, and every task resolves."""
    n = 20
    server = CallbackServer(verify_by_query=True)
    async with running(sim(), server) as (fake, client):
        infos = await outcomes(await submit_many(client, n))
        stats = fake.stats()
    assert all(i.succeeded for i in infos)
    counts = server.statistics()
    assert counts.accepted == n
    assert counts.verify_queries == n
    assert stats.queries == n
    assert counts.resolved == n
    assert client.statistics().scheduler.resolved_by_callback == n


async def test_verify_by_query_ignores_the_callbacks_claim() -> None:
    """A callback claiming success for a running task is checked, found false, and ignored."""
    confirmed: asyncio.Queue[TaskInfo] = asyncio.Queue()
    server = CallbackServer(verify_by_query=True, on_task=confirmed.put_nowait)
    async with running(sim(behavior=SLOW), server) as (fake, client):
        handle = await pending_handle(client)
        status, _ = await post(server.callback_url, kie_body(handle.task_id))
        assert status == 200
        answer = await confirmed.get()
        assert answer.task_id == handle.task_id
        assert not answer.is_terminal
        assert fake.stats().queries == 1
        assert not handle.done()
        assert handle.state is not TaskState.SUCCESS
    counts = server.statistics()
    assert counts.verify_queries == 1
    assert counts.resolved == 0
    assert counts.duplicates_or_late == 1


# -------------------------------------------------------------------- secrecy


async def test_secret_and_key_never_reach_logs_or_reprs(caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG, nothing the SDK logs or shows contains the URL token or the HMAC key."""
    caplog.set_level(logging.DEBUG)
    secret = "s3cret-token-0123456789abcdef"
    server = CallbackServer(secret=secret, hmac_key=KEY)
    async with running(sim(hmac_key=KEY), server) as (_fake, client):
        handles = await submit_many(client, 5)
        await outcomes(handles)
        shown = [repr(server), repr(client), repr(handles[0]), repr(server.statistics())]
        await post(base_of(server) + "/nope-nope-nope-nope", b"{}")
        await post(server.callback_url, kie_body(handles[0].task_id), {})
        await post(server.callback_url, b"{broken")
    shown.append(repr(server))
    # The simulator plays the remote service, which knows the URL; only our side must not tell.
    ours = [r for r in caplog.records if not r.name.startswith("ruxa_async.testing")]
    assert ours
    for text in [r.getMessage() for r in ours] + shown:
        assert secret not in text
        assert KEY not in text


# ------------------------------------------------------------------ lifecycle


async def test_standalone_server_feeds_its_sink() -> None:
    """Without a client, `async with CallbackServer(on_task=...)` hands callbacks to the sink."""
    seen: list[TaskInfo] = []
    async with CallbackServer(on_task=seen.append) as server:
        assert server.listening
        status, text = await post(server.callback_url, kie_body("task_a"))
    assert status == 200
    assert json.loads(text) == {"code": 200, "message": "ok"}
    assert [i.task_id for i in seen] == ["task_a"]
    assert not server.listening


async def test_standalone_server_without_sink_answers_503() -> None:
    """A valid callback with nowhere to go gets 503, so the sender may retry."""
    async with CallbackServer() as server:
        status, _ = await post(server.callback_url, kie_body("task_a"))
    assert status == 503
    assert server.statistics().unavailable == 1


async def test_failing_sink_answers_500_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sink that raises makes the reply a plain 500 and logs the error on our side."""

    def sink(info: TaskInfo) -> None:
        raise RuntimeError("sink broke")

    async with CallbackServer(on_task=sink) as server:
        status, text = await post(server.callback_url, kie_body("task_a"))
    assert status == 500
    assert "sink broke" not in text
    assert "Traceback" not in text
    assert any("on_task raised" in r.getMessage() for r in caplog.records)


async def test_client_starts_and_stops_the_server() -> None:
    """The client opens the server's socket when it starts and closes it when it closes."""
    server = CallbackServer()
    async with FakeRuxa(sim()) as fake:
        client = RuxaClient(fake.api_key, base_url=fake.url, callbacks=server)
        assert not server.listening
        with pytest.raises(ConfigurationError):
            _ = server.callback_url
        async with client:
            assert server.listening
            assert client.callback_url == server.callback_url
        assert not server.listening


async def test_server_outlives_a_client_inside_its_own_block() -> None:
    """Inside `async with server`, closing a client only detaches it."""
    async with FakeRuxa(sim()) as fake, CallbackServer() as server:
        url = server.callback_url
        async with RuxaClient(fake.api_key, base_url=fake.url, callbacks=server, poll=QUIET) as c:
            await (await c.submit(MODEL, {"prompt": "one"}))
        assert server.listening
        assert server.callback_url == url
        async with RuxaClient(fake.api_key, base_url=fake.url, callbacks=server, poll=QUIET) as c:
            await (await c.submit(MODEL, {"prompt": "two"}))
        assert server.statistics().resolved == 2


async def test_routes_mounted_in_a_users_aiohttp_app() -> None:
    """add_aiohttp_routes serves callbacks from the user's own application."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = CallbackServer(public_url=f"http://127.0.0.1:{port}/", path="/hooks/ruxa")
    app = web.Application()
    server.add_aiohttp_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        async with running(sim(), server) as (fake, client):
            assert not server.listening
            assert client.callback_url is not None
            assert client.callback_url.startswith(f"http://127.0.0.1:{port}/hooks/ruxa/")
            infos = await outcomes(await submit_many(client, 10))
            assert fake.stats().queries == 0
        assert all(i.succeeded for i in infos)
        assert server.statistics().resolved == 10
    finally:
        await runner.cleanup()


def test_mounting_needs_a_public_url() -> None:
    """A mounted server cannot guess where Ruxa reaches the user's app."""
    with pytest.raises(ConfigurationError):
        CallbackServer().add_aiohttp_routes(web.Application())


@pytest.mark.parametrize(
    "options",
    [
        {"secret": "short"},
        {"secret": "has/slash/in/it/long"},
        {"path": "no-slash"},
        {"max_body": 0},
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, Any]) -> None:
    """Unusable settings fail at construction, not at the first callback."""
    with pytest.raises(ConfigurationError):
        CallbackServer(**options)
