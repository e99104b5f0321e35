"""The client's life (new, open, closing, closed), one validation story, and Job's signature."""

from __future__ import annotations

import asyncio
import gc
import tempfile
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ruxa_async import (
    ClientClosedError,
    ClientNotStartedError,
    InvalidInputError,
    Job,
    OutcomeStatus,
    RequestEvent,
    RuxaClient,
    ValidationError,
)
from ruxa_async.testing import FakeRuxa

from .conftest import make_client

MODEL = "google/nano-banana"
PROMPT = {"prompt": "a lighthouse at dusk"}
BAD = {"prompt": "x", "image_size": "7:1"}  # not one of nano-banana's sizes

Call = Callable[[RuxaClient], Awaitable[object]]


async def _attach(client: RuxaClient) -> object:
    return client.attach("task_x")


async def _batch(client: RuxaClient) -> object:
    return await client.run_batch([Job(MODEL, PROMPT)])


async def _download(client: RuxaClient) -> object:
    with tempfile.TemporaryDirectory() as folder:
        return await client.download("http://127.0.0.1:9/f.png", Path(folder) / "f.png")


CALLS: dict[str, Call] = {
    "create_task": lambda c: c.create_task(MODEL, PROMPT),
    "get_task": lambda c: c.get_task("task_x"),
    "submit": lambda c: c.submit(MODEL, PROMPT),
    "generate": lambda c: c.generate(MODEL, PROMPT),
    "wait": lambda c: c.wait("task_x"),
    "attach": _attach,
    "download": _download,
    "run_batch": _batch,
}


@pytest.mark.parametrize("name", list(CALLS))
async def test_a_new_client_is_not_started_by_any_call(fake: FakeRuxa, name: str) -> None:
    """Nothing auto-starts: every call on a client never opened says how to open it."""
    client = make_client(fake)
    with pytest.raises(ClientNotStartedError, match="async with RuxaClient"):
        await CALLS[name](client)
    assert client.state == "new"
    assert fake.stats().requests == 0
    await client.aclose()
    assert client.state == "closed"


@pytest.mark.parametrize("name", list(CALLS))
async def test_a_closed_client_refuses_every_call(fake: FakeRuxa, name: str) -> None:
    """After close every call raises ClientClosedError saying to create a new client."""
    async with make_client(fake) as client:
        assert client.state == "open"
    assert client.state == "closed"
    with pytest.raises(ClientClosedError, match="create a new RuxaClient"):
        await CALLS[name](client)
    assert fake.stats().requests == 0


async def test_a_closed_client_cannot_be_reopened(fake: FakeRuxa) -> None:
    """start() after aclose() raises; start() on an open client does nothing."""
    client = make_client(fake)
    await client.start()
    await client.start()
    assert client.state == "open"
    await client.aclose()
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await client.start()
    assert repr(client).endswith("closed>")


async def test_calls_during_closing_are_refused(fake: FakeRuxa) -> None:
    """While aclose() runs, the client is 'closing' and new calls raise ClientClosedError."""
    client = make_client(fake)
    await client.start()
    closing = asyncio.ensure_future(client.aclose())
    await asyncio.sleep(0)  # aclose() has begun and is waiting for the scheduler to stop
    assert client.state == "closing"
    with pytest.raises(ClientClosedError, match="closing"):
        await client.create_task(MODEL, PROMPT)
    await closing
    assert client.state == "closed"


def _collect_warnings(body: Callable[[], None]) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        body()
        gc.collect()
        for caught_warning in caught:  # a recorded source would outlive this test
            caught_warning.source = None
        gc.collect()
    return caught


def test_an_opened_client_never_closed_warns() -> None:
    """A client opened and dropped without aclose() emits a ResourceWarning naming it."""

    async def leak() -> None:
        client = RuxaClient("k", base_url="http://127.0.0.1:9")
        await client.start()

    caught = _collect_warnings(lambda: asyncio.run(leak()))
    ours = [w for w in caught if "unclosed <RuxaClient" in str(w.message)]
    assert len(ours) == 1
    assert ours[0].category is ResourceWarning


def test_a_closed_or_never_opened_client_does_not_warn() -> None:
    """Only an open client left behind warns."""

    async def tidy() -> None:
        RuxaClient("k", base_url="http://127.0.0.1:9")
        async with RuxaClient("k", base_url="http://127.0.0.1:9"):
            pass

    caught = _collect_warnings(lambda: asyncio.run(tidy()))
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


# ------------------------------------------------------------- validation


@pytest.mark.parametrize("how", ["create_task", "submit", "generate", "batch"])
async def test_a_bad_input_is_the_same_error_before_sending_everywhere(
    fake: FakeRuxa, how: str
) -> None:
    """A known model's bad input is InvalidInputError, found before any request, on every path."""
    async with make_client(fake) as client:
        if how == "batch":
            report = await client.run_batch([Job(MODEL, BAD)])
            error = report.outcomes[0].error
            assert report.outcomes[0].status is OutcomeStatus.ERROR
        else:
            call = getattr(client, how)
            with pytest.raises(InvalidInputError) as caught:
                await call(MODEL, BAD)
            error = caught.value
    assert isinstance(error, InvalidInputError)
    assert error.field == "image_size"
    assert fake.stats().requests == 0


@pytest.mark.parametrize("where", ["client", "call"])
async def test_validation_can_be_turned_off(fake: FakeRuxa, where: str) -> None:
    """validate=False (client-wide or per call) sends the input: the service's 422 answers."""
    client_wide = where == "client"
    async with make_client(fake, validate=not client_wide) as client:
        per_call = None if client_wide else False
        with pytest.raises(ValidationError):
            await client.generate(MODEL, BAD, validate=per_call)
        report = await client.run_batch([Job(MODEL, BAD)], validate=per_call)
    assert isinstance(report.outcomes[0].error, ValidationError)
    assert fake.stats().validation_errors == 2


async def test_an_unknown_model_goes_to_the_service(fake: FakeRuxa) -> None:
    """The catalogue does not know every model: unknown ones are sent unchecked."""
    async with make_client(fake) as client:
        with pytest.raises(ValidationError):
            await client.create_task("acme/unknown-model", PROMPT)
    assert fake.stats().creates == 1


# -------------------------------------------------------------------- Job


def test_job_takes_model_and_input_positionally() -> None:
    """Job(model, input) reads like generate(model, input); the rest are keywords."""
    job = Job(MODEL, PROMPT, key="fox", metadata={"row": 3}, task_id=None)
    assert job == Job(model=MODEL, input=PROMPT, key="fox")
    assert job.metadata == {"row": 3}
    with pytest.raises(TypeError):
        Job(MODEL, PROMPT, "fox")  # type: ignore[misc]


# -------------------------------------------------------------- on_request


async def test_on_request_sees_every_request_with_its_code(fake: FakeRuxa) -> None:
    """One RequestEvent per request sent, in order of replies, with the reply's code."""
    events: list[RequestEvent] = []
    async with make_client(fake, on_request=events.append) as client:
        info = await client.generate(MODEL, PROMPT)
        with pytest.raises(ValidationError):
            await client.create_task(MODEL, BAD, validate=False)
        sent = client.statistics().requests_sent
    assert len(events) == sent == fake.stats().requests
    assert events[0].kind == "create"
    assert events[0].code == 200
    assert all(e.kind == "query" for e in events[1:-1])
    assert any(info.task_id in e.path for e in events[1:-1])
    assert events[-1].code == 422
    assert all(e.sent_at <= e.replied_at for e in events)
