"""The Ruxa simulator, exercised over real loopback sockets with a raw aiohttp client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

import ruxa_async.testing as testing
from ruxa_async.testing import (
    CallbackDelivery,
    Dialect,
    FakeRuxa,
    Faults,
    ModelBehavior,
    RateLimit,
    SimConfig,
    SimStats,
)

NANO = "google/nano-banana"
PROMPT = {"prompt": "a cat in a hat"}
FAST = ModelBehavior(median_seconds=0.05, sigma=0.0)
SLOWISH = ModelBehavior(median_seconds=30.0, sigma=0.0)
TASK_ID = re.compile(r"^task_(?P<upstream>.+)_(?P<ms>\d{13})_(?P<hex>[0-9a-f]{8})$")
ROOT = Path(__file__).resolve().parent.parent

MakeSim = Callable[..., Awaitable[FakeRuxa]]


@pytest.fixture
async def sim() -> AsyncIterator[MakeSim]:
    """A factory of started simulators (``await sim(**SimConfig fields)``), closed afterwards."""
    started: list[FakeRuxa] = []

    async def make(**fields: Any) -> FakeRuxa:
        fields.setdefault("default_behavior", FAST)
        fake = FakeRuxa(SimConfig(**fields))
        await fake.start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session."""
    async with aiohttp.ClientSession() as session:
        yield session


class Receiver:
    """A loopback callback endpoint recording what it is sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append((time.monotonic(), dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok")

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, _, body in self.calls]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A running callback receiver on 127.0.0.1."""
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    recv.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    yield recv
    await runner.cleanup()


def auth(fake: FakeRuxa) -> dict[str, str]:
    return {"Authorization": f"Bearer {fake.api_key}"}


async def create(
    http: aiohttp.ClientSession,
    fake: FakeRuxa,
    model: str = NANO,
    input: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> tuple[int, dict[str, Any]]:
    body = {"model": model, "input": PROMPT if input is None else input, **extra}
    async with http.post(
        fake.url + "/api/v1/tasks/create",
        json=body,
        headers=auth(fake) if headers is None else headers,
    ) as reply:
        return reply.status, await reply.json()


async def query(
    http: aiohttp.ClientSession, fake: FakeRuxa, task_id: str
) -> tuple[int, dict[str, Any]]:
    async with http.get(fake.url + "/api/v1/tasks/query/" + task_id, headers=auth(fake)) as reply:
        return reply.status, await reply.json()


async def created_id(http: aiohttp.ClientSession, fake: FakeRuxa, **kwargs: Any) -> str:
    status, body = await create(http, fake, **kwargs)
    assert (status, body["code"]) == (200, 200), body
    task_id: str = body["data"]["taskId"]
    return task_id


async def finished(http: aiohttp.ClientSession, fake: FakeRuxa, task_id: str) -> dict[str, Any]:
    record = fake.task(task_id)
    assert record is not None
    await asyncio.sleep(max(0.0, record.completes_at - time.monotonic()))
    _, body = await query(http, fake, task_id)
    data: dict[str, Any] = body["data"]
    return data


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# -- happy path ------------------------------------------------------------------------


async def test_create_replies_with_task_id_envelope(sim: MakeSim, http: aiohttp.ClientSession):
    """A valid create answers HTTP 200 {code: 200, message: success, data: {taskId}}."""
    fake = await sim()
    status, body = await create(http, fake)
    assert status == 200
    assert body["code"] == 200
    assert body["message"] == "success"
    assert set(body["data"]) == {"taskId"}
    assert fake.stats().tasks_created == 1


async def test_task_ids_have_the_documented_shape(sim: MakeSim, http: aiohttp.ClientSession):
    """Ids are task_<upstream>_<13-digit ms>_<8 hex>, upstream per model family."""
    fake = await sim(accept_models="any")
    expected = {
        NANO: "gemini-2.5-flash-image",
        "google/nano-banana-pro": "gemini-2.5-flash-image",
        "sora-2-hd": "sora-2",
        "Veo 3.1/fast": "veo-3.1-fast",
    }
    for model, upstream in expected.items():
        task_id = await created_id(http, fake, model=model)
        match = TASK_ID.match(task_id)
        assert match is not None, task_id
        assert match["upstream"] == upstream
        assert abs(int(match["ms"]) / 1000 - time.time()) < 3600


async def test_state_walks_waiting_queuing_generating_success(sim: MakeSim):
    """The state is computed from the clock: waiting, queuing, generating, then success."""
    fake = await sim(default_behavior=ModelBehavior(median_seconds=10.0, sigma=0.0))
    async with aiohttp.ClientSession() as http:
        task_id = await created_id(http, fake)
    record = fake.task(task_id)
    assert record is not None
    start, span = record.created_at, record.duration
    assert span == pytest.approx(10.0)
    walk = [record.state_at(start + span * share) for share in (0.0, 0.05, 0.2, 0.5, 0.99, 1.0)]
    assert walk == ["waiting", "waiting", "queuing", "generating", "generating", "success"]


async def test_query_reports_pending_then_success(sim: MakeSim, http: aiohttp.ClientSession):
    """A query shows a pending state without completeTime, then success with completeTime."""
    fake = await sim(default_behavior=ModelBehavior(median_seconds=0.3, sigma=0.0))
    task_id = await created_id(http, fake)
    status, body = await query(http, fake, task_id)
    data = body["data"]
    assert (status, body["code"]) == (200, 200)
    assert data["state"] in ("waiting", "queuing", "generating")
    assert data["completeTime"] is None
    assert data["resultJson"] == ""
    done = await finished(http, fake, task_id)
    assert done["state"] == "success"
    assert done["completeTime"] >= done["createTime"]
    assert done["failCode"] == ""


async def test_query_data_has_the_kie_task_fields(sim: MakeSim, http: aiohttp.ClientSession):
    """The task object carries taskId, model, state, param and the ms timestamps."""
    fake = await sim()
    task_id = await created_id(http, fake, callBackUrl="http://127.0.0.1:9/hook")
    data = await finished(http, fake, task_id)
    assert set(data) >= {
        "taskId",
        "model",
        "state",
        "param",
        "resultJson",
        "failCode",
        "failMsg",
        "costTime",
        "createTime",
        "updateTime",
        "completeTime",
    }
    assert data["taskId"] == task_id
    assert data["model"] == NANO
    assert json.loads(data["param"]) == {
        "model": NANO,
        "input": PROMPT,
        "callBackUrl": "http://127.0.0.1:9/hook",
    }
    assert abs(data["createTime"] / 1000 - time.time()) < 3600


async def test_result_json_is_a_string_and_its_url_serves_bytes(
    sim: MakeSim, http: aiohttp.ClientSession
):
    """resultJson is a JSON string of resultUrls whose file is served with its length."""
    fake = await sim(file_size=4096)
    task_id = await created_id(http, fake)
    data = await finished(http, fake, task_id)
    assert isinstance(data["resultJson"], str)
    urls = json.loads(data["resultJson"])["resultUrls"]
    assert urls == [f"{fake.url}/files/{task_id}/0.png"]
    async with http.get(urls[0]) as reply:
        payload = await reply.read()
        assert reply.status == 200
        assert reply.headers["Content-Type"] == "image/png"
        assert int(reply.headers["Content-Length"]) == 4096
    assert payload.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(payload) == 4096
    assert fake.stats().downloads == 1


async def test_video_models_return_mp4_files(sim: MakeSim, http: aiohttp.ClientSession):
    """A documented video model's result URL ends in .mp4 and serves an MP4 box stream."""
    fake = await sim()
    task_id = await created_id(http, fake, model="sora-2", input={"prompt": "waves"})
    data = await finished(http, fake, task_id)
    (url,) = json.loads(data["resultJson"])["resultUrls"]
    assert url.endswith("/0.mp4")
    async with http.get(url) as reply:
        assert reply.headers["Content-Type"] == "video/mp4"
        assert (await reply.read())[4:8] == b"ftyp"


async def test_result_files_expire_after_ttl(sim: MakeSim, http: aiohttp.ClientSession):
    """After result_ttl seconds past completion the result file answers 404."""
    fake = await sim(result_ttl=0.0)
    task_id = await created_id(http, fake)
    await finished(http, fake, task_id)
    async with http.get(f"{fake.url}/files/{task_id}/0.png") as reply:
        assert reply.status == 404


async def test_failed_task_reports_fail_code_and_message(sim: MakeSim, http: aiohttp.ClientSession):
    """A failing task ends in state fail with failCode, failMsg and an empty resultJson."""
    fake = await sim(default_behavior=attrs.evolve(FAST, fail_rate=1.0, fail_msg="flagged"))
    task_id = await created_id(http, fake)
    data = await finished(http, fake, task_id)
    assert data["state"] == "fail"
    assert data["failCode"] == "500"
    assert data["failMsg"] == "flagged"
    assert data["resultJson"] == ""
    async with http.get(f"{fake.url}/files/{task_id}/0.png") as reply:
        assert reply.status == 404


async def test_record_tracks_queries_and_first_terminal_reply(
    sim: MakeSim, http: aiohttp.ClientSession
):
    """The record counts queries and stamps the first reply that revealed the end."""
    fake = await sim()
    task_id = await created_id(http, fake)
    await finished(http, fake, task_id)
    record = fake.task(task_id)
    assert record is not None
    first = record.first_terminal_served_at
    assert first is not None
    assert first >= record.completes_at
    await query(http, fake, task_id)
    assert record.query_count == 2
    assert record.first_terminal_served_at == first


async def test_same_seed_draws_the_same_tasks(sim: MakeSim, http: aiohttp.ClientSession):
    """Two simulators with one seed draw the same durations and outcomes."""
    behavior = ModelBehavior(median_seconds=5.0, sigma=0.8, fail_rate=0.5)
    draws = []
    for _ in range(2):
        fake = await sim(seed=7, default_behavior=behavior)
        for _ in range(5):
            await created_id(http, fake)
        draws.append([(round(r.duration, 9), r.outcome) for r in fake.tasks()])
    assert draws[0] == draws[1]


# -- errors ----------------------------------------------------------------------------


async def test_missing_key_is_401(sim: MakeSim, http: aiohttp.ClientSession):
    """A request without Authorization gets 401 and creates nothing."""
    fake = await sim()
    status, body = await create(http, fake, headers={})
    assert (status, body["code"], body["data"]) == (401, 401, None)
    assert body["message"] == "You do not have access permissions"
    assert fake.stats().tasks_created == 0
    assert fake.stats().unauthorized == 1


async def test_wrong_key_is_401(sim: MakeSim, http: aiohttp.ClientSession):
    """A wrong bearer key gets 401 on queries too."""
    fake = await sim()
    async with http.get(
        fake.url + "/api/v1/tasks/query/task_x", headers={"Authorization": "Bearer sk-wrong"}
    ) as reply:
        assert reply.status == 401
        assert (await reply.json())["code"] == 401


async def test_insufficient_credits_is_402_with_balance(sim: MakeSim, http: aiohttp.ClientSession):
    """A create the balance cannot pay gets 402 naming price and balance; paid ones charge."""
    fake = await sim(credits=6.0)
    await created_id(http, fake)
    status, body = await create(http, fake)
    assert (status, body["code"]) == (402, 402)
    assert body["message"] == "Insufficient credits: need 4.00, balance 2.00"
    stats = fake.stats()
    assert (stats.tasks_created, stats.insufficient_credits) == (1, 1)
    assert (stats.credits_spent, stats.credits_balance) == (4.0, 2.0)


async def test_prices_override_and_set_credits(sim: MakeSim, http: aiohttp.ClientSession):
    """prices= overrides the documented price and set_credits resets the balance."""
    fake = await sim(credits=0.0, prices={NANO: 1.5})
    status, _ = await create(http, fake)
    assert status == 402
    fake.set_credits(3.0)
    await created_id(http, fake)
    assert fake.stats().credits_balance == 1.5


async def test_unknown_model_is_422(sim: MakeSim, http: aiohttp.ClientSession):
    """A model neither documented nor configured gets 422."""
    fake = await sim()
    status, body = await create(http, fake, model="gpt-image-1")
    assert (status, body["code"]) == (422, 422)
    assert "gpt-image-1" in body["message"]


async def test_configured_models_are_accepted(sim: MakeSim, http: aiohttp.ClientSession):
    """A model named in models= is accepted with its behaviour."""
    fake = await sim(models={"gpt-image-1": ModelBehavior(median_seconds=0.0)})
    task_id = await created_id(http, fake, model="gpt-image-1")
    assert (await query(http, fake, task_id))[1]["data"]["state"] == "success"


async def test_missing_prompt_is_422(sim: MakeSim, http: aiohttp.ClientSession):
    """A missing required input field gets 422 naming the field."""
    fake = await sim()
    status, body = await create(http, fake, input={"output_format": "png"})
    assert (status, body["code"]) == (422, 422)
    assert "input.prompt is required" in body["message"]


async def test_bad_enum_value_is_422(sim: MakeSim, http: aiohttp.ClientSession):
    """A value outside a field's allowed list gets 422."""
    fake = await sim()
    status, body = await create(http, fake, input={"prompt": "x", "output_format": "gif"})
    assert (status, body["code"]) == (422, 422)
    assert "output_format" in body["message"]


async def test_malformed_bodies_are_422(sim: MakeSim, http: aiohttp.ClientSession):
    """A non-object body, a missing model or a non-object input get 422."""
    fake = await sim()
    for payload in (b"[1]", b"not json", b'{"input": {"prompt": "x"}}', b'{"model": "%s"}'):
        data = payload.replace(b"%s", NANO.encode())
        async with http.post(
            fake.url + "/api/v1/tasks/create", data=data, headers=auth(fake)
        ) as reply:
            assert reply.status == 422
    assert fake.stats().validation_errors == 4
    assert fake.stats().tasks_created == 0


async def test_unknown_task_is_404(sim: MakeSim, http: aiohttp.ClientSession):
    """Querying an unknown task id gets 404 by default."""
    fake = await sim()
    status, body = await query(http, fake, "task_nope_1766304530229_cf4dafd2")
    assert (status, body["code"], body["data"]) == (404, 404, None)


async def test_unknown_task_422_dialect(sim: MakeSim, http: aiohttp.ClientSession):
    """With unknown_task="422" and msg, an unknown id gets kie's recordInfo is null."""
    fake = await sim(dialect=Dialect(unknown_task="422", message_field="msg"))
    status, body = await query(http, fake, "task_nope")
    assert status == 422
    assert body == {"code": 422, "msg": "recordInfo is null", "data": None}


# -- dialects --------------------------------------------------------------------------


async def test_envelope_dialect_sends_errors_as_http_200(sim: MakeSim, http: aiohttp.ClientSession):
    """errors="envelope" answers HTTP 200 with the error code in the envelope."""
    fake = await sim(dialect=Dialect(errors="envelope"))
    status, body = await create(http, fake, headers={})
    assert (status, body["code"]) == (200, 401)
    status, body = await create(http, fake, model="nope")
    assert (status, body["code"]) == (200, 422)


async def test_msg_dialect_spells_the_text_field_msg(sim: MakeSim, http: aiohttp.ClientSession):
    """message_field="msg" replaces message with msg in every envelope."""
    fake = await sim(dialect=Dialect(message_field="msg"))
    _, body = await create(http, fake)
    assert body["msg"] == "success"
    assert "message" not in body


async def test_completed_dialect_success_word(sim: MakeSim, http: aiohttp.ClientSession):
    """success_state="completed" reports finished tasks as completed."""
    fake = await sim(dialect=Dialect(success_state="completed"))
    task_id = await created_id(http, fake)
    assert (await finished(http, fake, task_id))["state"] == "completed"


async def test_result_json_object_dialect(sim: MakeSim, http: aiohttp.ClientSession):
    """result_json="object" sends resultJson as an object holding resultUrls."""
    fake = await sim(dialect=Dialect(result_json="object"))
    task_id = await created_id(http, fake)
    data = await finished(http, fake, task_id)
    assert data["resultJson"] == {"resultUrls": [f"{fake.url}/files/{task_id}/0.png"]}


async def test_reconfigure_switches_dialect_live(sim: MakeSim, http: aiohttp.ClientSession):
    """reconfigure() changes the dialect of the very next reply."""
    fake = await sim()
    fake.reconfigure(dialect=Dialect(errors="envelope", message_field="msg"))
    status, body = await create(http, fake, headers={})
    assert (status, body["code"]) == (200, 401)
    assert "msg" in body


# -- rate limits -----------------------------------------------------------------------


async def test_create_rate_limit_429_with_retry_after(sim: MakeSim, http: aiohttp.ClientSession):
    """Past the burst a create gets 429 with an integer Retry-After of at least 1."""
    fake = await sim(create_limit=RateLimit(per_second=0.01, burst=2))
    for _ in range(2):
        await created_id(http, fake)
    async with http.post(
        fake.url + "/api/v1/tasks/create", json={"model": NANO, "input": PROMPT}, headers=auth(fake)
    ) as reply:
        assert reply.status == 429
        assert (await reply.json())["code"] == 429
        assert int(reply.headers["Retry-After"]) >= 1
    stats = fake.stats()
    assert (stats.rate_limited_create, stats.rate_limited_query, stats.tasks_created) == (1, 0, 2)


async def test_429_without_retry_after_dialect(sim: MakeSim, http: aiohttp.ClientSession):
    """With retry_after=False the 429 has no Retry-After and sets no deadline."""
    fake = await sim(
        query_limit=RateLimit(per_second=0.01, burst=1), dialect=Dialect(retry_after=False)
    )
    await query(http, fake, "task_a")
    for _ in range(2):
        async with http.get(fake.url + "/api/v1/tasks/query/task_a", headers=auth(fake)) as reply:
            assert reply.status == 429
            assert "Retry-After" not in reply.headers
    assert fake.stats().rate_limited_query == 2
    assert fake.stats().early_requests == 0


async def test_requests_before_retry_after_deadline_are_early(
    sim: MakeSim, http: aiohttp.ClientSession
):
    """Requests of a class arriving before its issued Retry-After deadline count as early."""
    fake = await sim(create_limit=RateLimit(per_second=0.01, burst=1))
    await created_id(http, fake)
    for _ in range(3):
        status, _ = await create(http, fake)
        assert status == 429
    await query(http, fake, "task_other_class")
    assert fake.stats().early_requests == 2


async def test_query_and_create_limits_are_separate(sim: MakeSim, http: aiohttp.ClientSession):
    """An exhausted create bucket does not limit queries."""
    fake = await sim(create_limit=RateLimit(per_second=0.01, burst=1))
    task_id = await created_id(http, fake)
    assert (await create(http, fake))[0] == 429
    assert (await query(http, fake, task_id))[0] == 200


async def test_reconfigure_replaces_a_rate_limit(sim: MakeSim, http: aiohttp.ClientSession):
    """Lifting a limit with reconfigure lets the next request through."""
    fake = await sim(create_limit=RateLimit(per_second=0.01, burst=1))
    await created_id(http, fake)
    assert (await create(http, fake))[0] == 429
    fake.reconfigure(create_limit=None)
    await created_id(http, fake)


# -- faults ----------------------------------------------------------------------------


async def test_error_500_before_creates_nothing(sim: MakeSim, http: aiohttp.ClientSession):
    """error_500_before answers 500 without creating or charging a task."""
    fake = await sim(credits=10.0, faults=Faults(error_500_before=1.0))
    status, body = await create(http, fake)
    assert (status, body["code"]) == (500, 500)
    stats = fake.stats()
    assert (stats.tasks_created, stats.credits_spent, stats.ambiguous_created) == (0, 0.0, 0)
    assert stats.faults["error_500_before"] == 1


async def test_error_500_after_create_is_ambiguous(sim: MakeSim, http: aiohttp.ClientSession):
    """error_500_after_create answers 500 but the task exists and was charged."""
    fake = await sim(credits=10.0, faults=Faults(error_500_after_create=1.0))
    status, _ = await create(http, fake)
    assert status == 500
    stats = fake.stats()
    assert (stats.tasks_created, stats.ambiguous_created, stats.credits_spent) == (1, 1, 4.0)
    assert stats.by_status[500] == 1


async def test_faults_apply_to_queries(sim: MakeSim, http: aiohttp.ClientSession):
    """error_500_before also strikes queries."""
    fake = await sim()
    task_id = await created_id(http, fake)
    fake.reconfigure(faults=Faults(error_500_before=1.0))
    assert (await query(http, fake, task_id))[0] == 500


async def test_drop_before_closes_without_reply(sim: MakeSim):
    """drop_before closes the connection with no reply and creates nothing."""
    fake = await sim(faults=Faults(drop_before=1.0))
    async with aiohttp.ClientSession() as http:
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await create(http, fake)
    stats = fake.stats()
    assert (stats.tasks_created, stats.faults["drop_before"]) == (0, 1)
    assert sum(stats.by_status.values()) == 0


async def test_drop_after_create_leaves_a_task(sim: MakeSim):
    """drop_after_create closes the connection with no reply after creating the task."""
    fake = await sim(faults=Faults(drop_after_create=1.0))
    async with aiohttp.ClientSession() as http:
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await create(http, fake)
    stats = fake.stats()
    assert (stats.tasks_created, stats.ambiguous_created) == (1, 1)
    assert stats.faults["drop_after_create"] == 1


async def test_slow_reply_outlasts_a_client_timeout(sim: MakeSim, http: aiohttp.ClientSession):
    """A slow create times the client out, yet the task exists and counts as ambiguous."""
    fake = await sim(faults=Faults(slow_reply=1.0, slow_seconds=0.3))
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            fake.url + "/api/v1/tasks/create",
            json={"model": NANO, "input": PROMPT},
            headers=auth(fake),
            timeout=aiohttp.ClientTimeout(total=0.05),
        ):
            pass
    assert fake.stats().tasks_created == 1
    await eventually(lambda: fake.stats().ambiguous_created == 1)
    assert fake.stats().faults["slow_reply"] == 1


async def test_slow_reply_still_answers(sim: MakeSim, http: aiohttp.ClientSession):
    """A patient client gets the slow reply, and it is not ambiguous."""
    fake = await sim(faults=Faults(slow_reply=1.0, slow_seconds=0.05))
    await created_id(http, fake)
    assert fake.stats().ambiguous_created == 0


async def test_file_faults_need_files_flag(sim: MakeSim, http: aiohttp.ClientSession):
    """Faults strike downloads only when Faults.files is set."""
    fake = await sim()
    task_id = await created_id(http, fake)
    await finished(http, fake, task_id)
    url = f"{fake.url}/files/{task_id}/0.png"
    fake.reconfigure(faults=Faults(error_500_before=1.0))
    async with http.get(url) as reply:
        assert reply.status == 200
    fake.reconfigure(faults=Faults(error_500_before=1.0, files=True))
    async with http.get(url) as reply:
        assert reply.status == 500


async def test_duplicate_creates_are_counted(sim: MakeSim, http: aiohttp.ClientSession):
    """A create repeating an earlier model and input (any key order) counts as duplicate."""
    fake = await sim()
    await created_id(http, fake, input={"prompt": "x", "output_format": "png"})
    await created_id(http, fake, input={"output_format": "png", "prompt": "x"})
    await created_id(http, fake, input={"prompt": "y"})
    await created_id(http, fake, model="google/nano-banana-pro", input={"prompt": "x"})
    assert fake.stats().duplicate_creates == 1
    assert fake.stats().tasks_created == 4


# -- callbacks -------------------------------------------------------------------------


async def test_kie_callback_reports_success(
    sim: MakeSim, http: aiohttp.ClientSession, receiver: Receiver
):
    """A finished task POSTs the kie envelope {code: 200, msg, data: task} to callBackUrl."""
    fake = await sim(dialect=Dialect(message_field="msg"), credits=100.0)
    task_id = await created_id(http, fake, callBackUrl=receiver.url)
    await eventually(lambda: len(receiver.calls) == 1)
    (body,) = receiver.bodies()
    assert body["code"] == 200
    assert "msg" in body
    data = body["data"]
    assert (data["taskId"], data["state"], data["model"]) == (task_id, "success", NANO)
    assert json.loads(data["resultJson"])["resultUrls"][0].endswith("/0.png")
    assert (data["consumeCredits"], data["remainedCredits"]) == (4.0, 96.0)
    record = fake.task(task_id)
    assert record is not None
    assert receiver.calls[0][0] >= record.completes_at
    await eventually(lambda: fake.stats().callbacks_delivered == 1)
    assert record.callbacks_delivered == 1


async def test_kie_callback_reports_failure_as_501(
    sim: MakeSim, http: aiohttp.ClientSession, receiver: Receiver
):
    """A failed task's kie callback has code 501, state fail and failMsg."""
    fake = await sim(default_behavior=attrs.evolve(FAST, fail_rate=1.0))
    await created_id(http, fake, callBackUrl=receiver.url)
    await eventually(lambda: len(receiver.calls) == 1)
    (body,) = receiver.bodies()
    assert body["code"] == 501
    assert (body["data"]["state"], body["data"]["failMsg"]) == ("fail", "Internal server error")


async def test_flat_callback_style(sim: MakeSim, http: aiohttp.ClientSession, receiver: Receiver):
    """callback_style="flat" POSTs {taskId, state, resultUrls, failMsg}."""
    fake = await sim(dialect=Dialect(callback_style="flat"))
    task_id = await created_id(http, fake, callBackUrl=receiver.url)
    await eventually(lambda: len(receiver.calls) == 1)
    (body,) = receiver.bodies()
    assert body == {
        "taskId": task_id,
        "state": "success",
        "resultUrls": [f"{fake.url}/files/{task_id}/0.png"],
        "failMsg": "",
    }


async def test_callback_waits_for_its_delay(
    sim: MakeSim, http: aiohttp.ClientSession, receiver: Receiver
):
    """A callback is not sent before completion plus delay_min."""
    fake = await sim(callbacks=CallbackDelivery(delay_min=0.2, delay_max=0.3))
    task_id = await created_id(http, fake, callBackUrl=receiver.url)
    await eventually(lambda: len(receiver.calls) == 1)
    record = fake.task(task_id)
    assert record is not None
    assert receiver.calls[0][0] >= record.completes_at + 0.2


async def test_dropped_callback_is_never_sent(
    sim: MakeSim, http: aiohttp.ClientSession, receiver: Receiver
):
    """drop=1 counts the callback as dropped and sends nothing."""
    fake = await sim(callbacks=CallbackDelivery(drop=1.0))
    await created_id(http, fake, callBackUrl=receiver.url)
    await eventually(lambda: fake.stats().callbacks_dropped == 1)
    assert receiver.calls == []
    assert fake.stats().callbacks_sent == 0


async def test_duplicated_callback_is_sent_twice(
    sim: MakeSim, http: aiohttp.ClientSession, receiver: Receiver
):
    """duplicate=1 sends the same callback body twice."""
    fake = await sim(callbacks=CallbackDelivery(duplicate=1.0))
    await created_id(http, fake, callBackUrl=receiver.url)
    await eventually(lambda: len(receiver.calls) == 2)
    assert receiver.calls[0][2] == receiver.calls[1][2]
    stats = fake.stats()
    assert (stats.callbacks_duplicated, stats.callbacks_sent) == (1, 2)


async def test_signed_callback_verifies_with_the_key(
    sim: MakeSim, http: aiohttp.ClientSession, receiver: Receiver
):
    """With hmac_key the signature is base64(HMAC-SHA256(key, taskId.timestamp))."""
    fake = await sim(callbacks=CallbackDelivery(hmac_key="whsec-test"))
    task_id = await created_id(http, fake, callBackUrl=receiver.url)
    await eventually(lambda: len(receiver.calls) == 1)
    headers = receiver.calls[0][1]
    stamp = headers["X-Webhook-Timestamp"]
    assert abs(int(stamp) - time.time()) < 60
    expected = base64.b64encode(
        hmac.new(b"whsec-test", f"{task_id}.{stamp}".encode(), hashlib.sha256).digest()
    ).decode()
    assert hmac.compare_digest(headers["X-Webhook-Signature"], expected)


async def test_unsigned_callback_has_no_signature(
    sim: MakeSim, http: aiohttp.ClientSession, receiver: Receiver
):
    """Without hmac_key no signature headers are sent."""
    fake = await sim()
    await created_id(http, fake, callBackUrl=receiver.url)
    await eventually(lambda: len(receiver.calls) == 1)
    assert "X-Webhook-Signature" not in receiver.calls[0][1]


async def test_failed_callback_is_retried(
    sim: MakeSim, http: aiohttp.ClientSession, receiver: Receiver
):
    """A non-2xx reply is retried and the retry is delivered."""
    receiver.statuses = [500]
    fake = await sim(callbacks=CallbackDelivery(retries=2, retry_interval=0.01))
    await created_id(http, fake, callBackUrl=receiver.url)
    await eventually(lambda: fake.stats().callbacks_delivered == 1)
    stats = fake.stats()
    assert (stats.callbacks_sent, stats.callbacks_failed) == (2, 0)


async def test_callback_fails_after_retries(
    sim: MakeSim, http: aiohttp.ClientSession, receiver: Receiver
):
    """A callback refused more times than its retries counts as failed."""
    receiver.statuses = [503, 503]
    fake = await sim(callbacks=CallbackDelivery(retries=1, retry_interval=0.01))
    await created_id(http, fake, callBackUrl=receiver.url)
    await eventually(lambda: fake.stats().callbacks_failed == 1)
    assert fake.stats().callbacks_sent == 2
    assert fake.stats().callbacks_delivered == 0


# -- admin, stats, process -------------------------------------------------------------


async def test_admin_stats_and_tasks(sim: MakeSim, http: aiohttp.ClientSession):
    """/_sim/stats?series=1 mirrors stats() and /_sim/tasks lists timing records."""
    fake = await sim()
    task_id = await created_id(http, fake)
    await finished(http, fake, task_id)
    async with http.get(fake.url + "/_sim/stats?series=1") as reply:
        stats = SimStats.from_dict(await reply.json())
    assert stats == fake.stats()
    assert stats.by_status == {200: 2}
    async with http.get(fake.url + "/_sim/tasks") as reply:
        (row,) = await reply.json()
    assert row["task_id"] == task_id
    assert row["query_count"] == 1
    assert row["outcome"] == "success"
    assert row["first_terminal_served_at"] >= row["completes_at"] > row["created_at"]


async def test_admin_config_applies_changes(sim: MakeSim, http: aiohttp.ClientSession):
    """POST /_sim/config patches limits, faults, dialect and credits live."""
    fake = await sim()
    patch = {
        "create_limit": {"per_second": 0.01, "burst": 1},
        "faults": {"slow_seconds": 1.0},
        "dialect": {"message_field": "msg"},
        "credits": 5.0,
    }
    async with http.post(fake.url + "/_sim/config", json=patch) as reply:
        assert reply.status == 200
        view = await reply.json()
    assert view["credits_balance"] == 5.0
    assert "api_key" not in view
    assert fake.config.create_limit == RateLimit(per_second=0.01, burst=1)
    assert fake.config.faults.slow_seconds == 1.0
    await created_id(http, fake)
    status, body = await create(http, fake)
    assert status == 429
    assert "msg" in body
    async with http.post(fake.url + "/_sim/config", json={"bogus": 1}) as reply:
        assert reply.status == 400


async def test_stats_round_trip_through_json():
    """SimStats.to_dict() is JSON-serialisable and from_dict() restores it."""
    stats = SimStats(requests=3, by_status={200: 2, 429: 1}, faults={"drop_before": 1})
    assert SimStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats


def test_public_names_are_exported_sorted():
    """testing.__all__ is sorted and names every public object."""
    assert testing.__all__ == sorted(testing.__all__)
    for name in testing.__all__:
        assert getattr(testing, name).__module__.startswith("ruxa_async.testing")


async def test_module_runs_as_a_process_until_terminated():
    """python -m ruxa_async.testing prints its URL and key, serves, and exits on SIGTERM."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ruxa_async.testing",
        "--port",
        "0",
        "--api-key",
        "sk-proc",
        "--median-seconds",
        "0",
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        match = re.match(r"Ruxa simulator at (http://\S+) \(api key (\S+)\)", line)
        assert match is not None, line
        url, key = match.groups()
        assert key == "sk-proc"
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                url + "/api/v1/tasks/create",
                json={"model": NANO, "input": PROMPT},
                headers={"Authorization": f"Bearer {key}"},
            ) as reply,
        ):
            assert (await reply.json())["code"] == 200
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 15)
    assert code == 0
