"""Hostile and bad input: jobs files, job inputs, forged callbacks, account and input errors.

The wire and callback parsers have their own property tests (test_wire.py,
test_webhooks_parse.py); this file adds the jobs-file reader, the batch's
handling of inputs that cannot be sent, a concurrent barrage of forged and
broken callbacks during a real batch, and the account and input errors a user
meets, each of which must give one clear message and stop or continue the
batch exactly as the README says.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import random
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ruxa_async import (
    AuthenticationError,
    InsufficientCreditsError,
    InvalidInputError,
    Job,
    JobOutcome,
    NotSubmittedError,
    OutcomeStatus,
    PollPolicy,
    RuxaClient,
    RuxaError,
    TaskInfo,
    ValidationError,
)
from ruxa_async._jobsfile import JobsFileError, read_jobs, scan_jobs
from ruxa_async.catalog import MODELS, estimate_cost
from ruxa_async.testing import CallbackDelivery, FakeRuxa, ModelBehavior, SimConfig
from ruxa_async.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, CallbackServer

from .conftest import make_client
from .helpers_proc import FAST_CLI, NB, SimProcess, nb_job, read_results, run_cli, write_jobs

# ------------------------------------------------------------------- jobs files

_FIELD_NAMES = sorted({f.name for spec in MODELS.values() for f in spec.fields})
_FIELD_VALUES = sorted(
    {c for spec in MODELS.values() for f in spec.fields for c in (f.choices or ())}
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from([*MODELS, *_FIELD_VALUES, "", " "])
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(_FIELD_NAMES) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=15,
)
_inputs = st.dictionaries(st.sampled_from(_FIELD_NAMES) | st.text(max_size=6), _json, max_size=5)
_job_like = st.fixed_dictionaries(
    {},
    optional={
        "id": _json,
        "model": _json | st.sampled_from(list(MODELS)),
        "input": _json | _inputs,
        "metadata": _json,
        "extra": _json,
    },
)


@st.composite
def _json_lines(draw: st.DrawFn) -> bytes:
    """A jobs file of JSON-ish lines: near-miss jobs, any JSON, stray text and blank lines."""
    lines = []
    for value in draw(st.lists(_job_like | _json, max_size=6)):
        text = json.dumps(value, allow_nan=True, ensure_ascii=draw(st.booleans()))
        lines.append(draw(st.sampled_from([text, text, text[: len(text) // 2], "", "  "])))
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    bom = draw(st.sampled_from(["", "\ufeff"]))
    return (bom + ending.join(lines) + draw(st.sampled_from(["", ending]))).encode("utf-8")


def read_everything(data: bytes, *, default_model: str | None, dedupe: bool) -> None:
    """Everything the CLI does with a jobs file before sending: scan it, stream it, price it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "jobs.jsonl"
        path.write_bytes(data)
        scan_jobs(path, default_model=default_model, dedupe=dedupe)
        for job in read_jobs(path, default_model=default_model):
            job.problem()
            estimate_cost(job.model, job.input)


def _only_sdk_errors(data: bytes, default_model: str | None, dedupe: bool) -> None:
    with contextlib.suppress(JobsFileError, RuxaError):
        read_everything(data, default_model=default_model, dedupe=dedupe)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.binary(max_size=60), max_size=5).map(b"\n".join),
    default_model=st.none() | st.just(NB),
    dedupe=st.booleans(),
)
@example(data=b'{"model": "m", "input": {}}\n\xff\xfe', default_model=None, dedupe=True)
@example(data=b'\xef\xbb\xbf{"input": {"prompt": "x"}}', default_model=NB, dedupe=False)
def test_arbitrary_bytes_in_a_jobs_file_raise_only_sdk_errors(
    data: bytes, default_model: str | None, dedupe: bool
) -> None:
    """Whatever bytes a jobs file holds, reading it raises JobsFileError or a RuxaError only."""
    _only_sdk_errors(data, default_model, dedupe)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_json_lines(), default_model=st.none() | st.just(NB), dedupe=st.booleans())
@example(data=b'{"model": "x", "input": {}, "id": 1.5}', default_model=None, dedupe=True)
@example(data=b'{"id": "a", "model": "x", "input": {}}\n' * 2, default_model=None, dedupe=True)
@example(data=b'{"input": {"prompt": ["a"], "image_size": {}}}', default_model=NB, dedupe=True)
def test_arbitrary_json_lines_raise_only_sdk_errors(
    data: bytes, default_model: str | None, dedupe: bool
) -> None:
    """Near-miss jobs and any JSON: never a KeyError, TypeError or JSONDecodeError."""
    _only_sdk_errors(data, default_model, dedupe)


# JSON text that json.loads accepts but that cannot be a job (each once escaped as a non-SDK error).
_DEEP = '{"model": "m", "input": {"x": ' + "[" * 5000 + "]" * 5000 + "}}"
_SURROGATE = '{"model": "google/nano-banana", "input": {"prompt": "\\ud800"}}'
_HUGE_NUMBER = '{"model": "m", "input": {"seed": 1e400}}'
_ESCAPING_LINES = [
    pytest.param(_DEEP, id="deep-nesting"),
    pytest.param(_SURROGATE, id="lone-surrogate"),
    pytest.param(_HUGE_NUMBER, id="number-beyond-float"),
]


@pytest.mark.parametrize("line", _ESCAPING_LINES)
def test_valid_json_the_reader_cannot_use_is_a_jobs_file_error(line: str, tmp_path: Path) -> None:
    """JSON that parses but cannot be a job is reported as JobsFileError naming its line."""
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps(nb_job("ok", "fine")) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(JobsFileError) as caught:
        scan_jobs(path)
    assert caught.value.line == 2


CLI_KEY = "sk-hostile-cli-0123456789"


@pytest.fixture(scope="module")
def quiet_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """A standalone simulator for CLI runs that compare its counters before and after."""
    sim = SimProcess(tmp_path_factory.mktemp("hostile-sim"), key=CLI_KEY)
    yield sim
    sim.close()


@pytest.mark.parametrize("line", _ESCAPING_LINES)
def test_cli_reports_an_unusable_line_in_one_message_and_sends_nothing(
    line: str, tmp_path: Path, quiet_sim: SimProcess
) -> None:
    """`run` on such a file exits 2 with one line naming the line number, sending nothing."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps(nb_job("ok", "fine")) + "\n" + line + "\n", encoding="utf-8")
    before = quiet_sim.stats()["requests"]
    out = tmp_path / "out"
    done = run_cli("run", str(jobs), "--out", str(out), "--base-url", quiet_sim.url, key=CLI_KEY)
    assert "Traceback" not in done.stderr
    assert done.returncode == 2, done.stderr[-500:]
    assert "line 2" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert quiet_sim.stats()["requests"] == before


# ---------------------------------------------------- inputs that cannot be sent


async def run_to_the_end(client: RuxaClient, jobs: list[Job]) -> dict[str, JobOutcome]:
    """Every job's outcome by key; fails if the batch stalls while the client has nothing to do.

    A batch that owes outcomes while the client has had nothing pending, in
    flight or waiting for a while has lost a job: it would wait forever.
    """
    outcomes: dict[str, JobOutcome] = {}
    async with client.as_completed(jobs) as batch:
        iterator = batch.__aiter__()
        while len(outcomes) < len(jobs):
            step = asyncio.ensure_future(iterator.__anext__())
            idle = 0
            while not step.done():
                await asyncio.wait({step}, timeout=0.05)
                s = client.statistics()
                quiet = s.pending == 0 and s.rate.in_flight == 0 and s.rate.waiting == 0
                idle = idle + 1 if quiet and not step.done() else 0
                if idle >= 40:
                    step.cancel()
                    missing = {j.key for j in jobs} - set(outcomes)
                    raise AssertionError(f"the batch stalled without an outcome for {missing}")
            outcome = step.result()
            assert outcome.key not in outcomes, f"two outcomes for {outcome.key}"
            outcomes[outcome.key] = outcome
    return outcomes


async def test_a_job_that_cannot_be_encoded_gets_one_error_and_the_batch_goes_on(
    fake: FakeRuxa,
) -> None:
    """An input that cannot be sent as JSON fails its own job with an SDK error; others finish."""
    jobs = [
        Job(model=NB, input={"prompt": "before"}, key="before"),
        Job(model=NB, input={"prompt": "x", "mask": b"\x89PNG"}, key="bytes-value"),
        Job(model=NB, input={"prompt": "\ud800"}, key="lone-surrogate"),
        Job(model=NB, input={"prompt": "after"}, key="after"),
    ]
    async with make_client(fake) as client:
        by_key = await run_to_the_end(client, jobs)
    assert by_key["before"].ok
    assert by_key["after"].ok
    for key in ("bytes-value", "lone-surrogate"):
        assert isinstance(by_key[key].error, RuxaError), by_key[key]
    assert fake.stats().creates == 2


async def test_bodies_over_a_megabyte_are_sent_or_refused_without_a_warning(
    any_model_fake: FakeRuxa,
) -> None:
    """A 1 MB prompt to a model the catalogue does not know is sent; 9 MB gets the service's 413."""
    fake = any_model_fake
    jobs = [
        Job(model="acme/any", input={"prompt": "z" * 1_000_000}, key="1mb"),
        Job(model="acme/any", input={"prompt": "x" * 9_000_000}, key="9mb"),
        Job(model=NB, input={"prompt": "small"}, key="small"),
    ]
    async with make_client(fake) as client:
        by_key = await run_to_the_end(client, jobs)
        retries = client.statistics().retries
    assert by_key["1mb"].ok
    assert by_key["small"].ok
    assert by_key["9mb"].task_id is None
    _one_clear_line(by_key["9mb"].error, "413")
    assert (fake.stats().creates, retries) == (3, 0)


# ------------------------------------------------------ a barrage of callbacks

HMAC_KEY = "barrage-hmac-key-0123456789"


def _signature(task_id: str, stamp: int, key: str = HMAC_KEY) -> dict[str, str]:
    digest = hmac.new(key.encode(), f"{task_id}.{stamp}".encode(), hashlib.sha256).digest()
    return {TIMESTAMP_HEADER: str(stamp), SIGNATURE_HEADER: base64.b64encode(digest).decode()}


def _claim(task_id: str, state: str) -> bytes:
    data: dict[str, Any] = {"taskId": task_id, "state": state}
    if state == "success":
        data["resultJson"] = json.dumps({"resultUrls": ["https://evil.example/forged.png"]})
    if state == "fail":
        data.update(failCode="500", failMsg="forged failure")
    return json.dumps({"code": 200, "msg": "ok", "data": data}).encode()


@attrs.frozen
class Attack:
    """One hostile request: where it goes, what it carries, what it must get."""

    kind: str
    path: str  # "good" (the secret URL), "wrong" or "none" (no token)
    body: bytes
    headers: dict[str, str]
    status: int
    counter: str  # the receiver counter it must land in


def attacks(task_id: str, now: int) -> list[Attack]:
    """Every kind of bad callback, aimed at one (probably still pending) task."""
    signed = _signature(task_id, now)
    return [
        Attack("wrong token", "wrong", _claim(task_id, "success"), signed, 404, "rejected_token"),
        Attack("no token", "none", _claim(task_id, "success"), signed, 404, "rejected_token"),
        Attack(
            "forged signature",
            "good",
            _claim(task_id, "success"),
            _signature(task_id, now, key="guessed-key"),
            401,
            "rejected_signature",
        ),
        Attack("unsigned", "good", _claim(task_id, "fail"), {}, 401, "rejected_signature"),
        Attack(
            "stale timestamp",
            "good",
            _claim(task_id, "success"),
            _signature(task_id, now - 3600),
            401,
            "rejected_signature",
        ),
        Attack(
            "signature of another task",
            "good",
            _claim(task_id, "success"),
            _signature("task_other", now),
            401,
            "rejected_signature",
        ),
        Attack(
            "oversized", "good", b" " * 5000 + _claim(task_id, "fail"), signed, 413, "rejected_body"
        ),
        Attack("not json", "good", b"{'taskId': " + task_id.encode(), signed, 400, "rejected_body"),
        Attack(
            "no task id",
            "good",
            b'{"code": 200, "data": {"state": "success"}}',
            signed,
            400,
            "rejected_body",
        ),
        Attack(
            "unknown task",
            "good",
            _claim(f"task_unknown_{task_id[-8:]}", "success"),
            _signature(f"task_unknown_{task_id[-8:]}", now),
            200,
            "duplicates_or_late",
        ),
        Attack(
            "state regression",
            "good",
            _claim(task_id, "generating"),
            signed,
            200,
            "duplicates_or_late",
        ),
    ]


async def _fire(session: aiohttp.ClientSession, server: CallbackServer, attack: Attack) -> int:
    base, token = server.callback_url.rsplit("/", 1)
    url = {"good": f"{base}/{token}", "wrong": f"{base}/{token[::-1]}x", "none": base}[attack.path]
    async with session.post(url, data=attack.body, headers=attack.headers) as reply:
        await reply.read()
        return reply.status


@pytest.mark.timeout(90)
async def test_hostile_barrage_during_a_batch_never_resolves_a_handle_wrongly() -> None:
    """Forged, stale, broken and unknown callbacks mixed with genuine ones: all handled right."""
    n = 150
    config = SimConfig(
        seed=31,
        default_behavior=ModelBehavior(median_seconds=0.6, sigma=0.5, fail_rate=0.25),
        callbacks=CallbackDelivery(duplicate=0.3, delay_min=0.0, delay_max=0.3, hmac_key=HMAC_KEY),
    )
    poll = PollPolicy(
        first_check=0.3, callback_grace_factor=1.0, callback_grace=2.0, min_interval=0.1
    )
    server = CallbackServer(hmac_key=HMAC_KEY, max_body=4096)
    submitted: asyncio.Queue[str | None] = asyncio.Queue()
    fired: list[tuple[Attack, int]] = []
    rng = random.Random(5)

    async def barrage(session: aiohttp.ClientSession) -> None:
        volleys = []
        while (task_id := await submitted.get()) is not None:
            chosen = [a for a in attacks(task_id, int(time.time())) if rng.random() < 0.6]
            rng.shuffle(chosen)
            volleys.append(asyncio.gather(*(volley(session, a) for a in chosen)))
        await asyncio.gather(*volleys)

    async def volley(session: aiohttp.ClientSession, attack: Attack) -> None:
        fired.append((attack, await _fire(session, server, attack)))

    def on_event(event: Any) -> None:
        if event.kind == "submitted":
            submitted.put_nowait(event.task_id)

    jobs = (Job(model=NB, input={"prompt": f"barrage {i}"}, key=f"b{i}") for i in range(n))
    async with (
        FakeRuxa(config) as fake,
        RuxaClient(fake.api_key, base_url=fake.url, callbacks=server, poll=poll) as client,
        aiohttp.ClientSession() as session,
    ):
        attacker = asyncio.create_task(barrage(session))
        outcomes: list[JobOutcome] = [
            o async for o in client.as_completed(jobs, max_pending=40, on_event=on_event)
        ]
        submitted.put_nowait(None)
        await attacker
        await _settled(fake, server, len(fired))
        stats = fake.stats()
        sched = client.statistics().scheduler

    # Every handle resolved to the service's truth, never to a forgery.
    assert sorted(o.index for o in outcomes) == list(range(n))
    for o in outcomes:
        record = fake.task(o.task_id or "")
        assert record is not None, o
        if record.outcome == "success":
            assert o.status is OutcomeStatus.SUCCEEDED, o
            assert isinstance(o.info, TaskInfo)
            assert all(u.startswith(fake.url) for u in o.info.result_urls), o.info.result_urls
        else:
            assert o.status is OutcomeStatus.FAILED, o
            assert o.info is not None
            assert o.info.fail_msg != "forged failure"
    assert sched.resolved_by_callback + sched.resolved_by_poll == n

    # Every request got the answer its kind deserves, and the counters add up.
    wrong = [(a.kind, got) for a, got in fired if got != a.status]
    assert not wrong, wrong
    assert len({a.kind for a, _ in fired}) == len(attacks("t", 0)), "some attack never fired"
    expected = Counter(a.counter for a, _ in fired)
    got = server.statistics()
    assert got.rejected_token == expected["rejected_token"]
    assert got.rejected_signature == expected["rejected_signature"]
    assert got.rejected_body == expected["rejected_body"]
    assert got.received == len(fired) + stats.callbacks_sent
    assert got.accepted == stats.callbacks_sent + expected["duplicates_or_late"]
    assert got.resolved + got.duplicates_or_late == got.accepted
    assert got.duplicates_or_late >= expected["duplicates_or_late"] + stats.callbacks_duplicated
    assert sched.resolved_by_callback == got.resolved + sched.callbacks_early


async def _settled(fake: FakeRuxa, server: CallbackServer, hostile: int) -> None:
    """Wait until every task's genuine callback was sent and taken in by the receiver."""
    for _ in range(200):
        s = fake.stats()
        sent_all = s.callbacks_sent - s.callbacks_duplicated == s.tasks_created
        if sent_all and server.statistics().received - hostile == s.callbacks_sent:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"genuine callbacks never settled: {fake.stats()}")


# --------------------------------------------------------- account and input errors


def _one_clear_line(error: BaseException | None, *needles: str) -> str:
    """The error's text: one short line naming the problem, nothing else."""
    assert error is not None
    text = str(error)
    assert "\n" not in text
    assert len(text) < 300, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


@pytest.fixture
async def any_model_fake() -> AsyncIterator[FakeRuxa]:
    """A simulator that accepts models outside the catalogue (the service is the judge)."""
    async with FakeRuxa(SimConfig(seed=8, accept_models={*MODELS, "acme/any"})) as sim:
        yield sim


async def test_bad_inputs_fail_only_their_own_job_with_one_clear_message(
    any_model_fake: FakeRuxa,
) -> None:
    """Unknown model, bad enum, 5,001-char and 1 MB prompts: one clear error each, no stop.

    The bad enum is refused before sending; the unknown model and kie.ai's
    prompt limit (which Ruxa does not document) are left to the service.
    """
    fake = any_model_fake
    bad = {
        "unknown-model": Job(model="acme/unknown", input={"prompt": "x"}),
        "bad-enum": Job(model=NB, input={"prompt": "x", "image_size": "7:7"}),
        "prompt-5001": Job(model=NB, input={"prompt": "x" * 5001}),
        "prompt-1mb": Job(model=NB, input={"prompt": "x" * 1_000_000}),
    }
    good = {
        "prompt-5000": Job(model=NB, input={"prompt": "y" * 5000}),
        **{f"ok-{i}": Job(model=NB, input={"prompt": f"fine {i}"}) for i in range(8)},
    }
    keyed = {k: attrs.evolve(j, key=k) for k, j in {**bad, **good}.items()}
    async with make_client(fake) as client:
        report = await client.run_batch(list(keyed.values()))
        retries = client.statistics().retries
    by_key = {o.key: o for o in report.outcomes}
    assert report.stop_reason is None
    assert all(by_key[k].ok for k in good), [by_key[k] for k in good if not by_key[k].ok]
    for key, needle in [
        ("unknown-model", "acme/unknown"),
        ("prompt-5001", "5001 characters"),
        ("prompt-1mb", "1000000 characters"),
    ]:
        assert isinstance(by_key[key].error, ValidationError), (key, by_key[key].error)
        assert _one_clear_line(by_key[key].error, "422", needle)
    error = by_key["bad-enum"].error
    assert isinstance(error, InvalidInputError), error
    assert error.field == "image_size"
    _one_clear_line(error, "image_size", "7:7")
    assert all(by_key[k].task_id is None for k in bad)
    # The bad enum was not sent; what the service refused was sent once and never retried.
    stats = fake.stats()
    assert stats.creates == len(good) + 3
    assert stats.tasks_created == len(good)
    assert retries == 0


@pytest.mark.parametrize("case", ["rejected-key", "no-credits-mid-batch"])
async def test_account_errors_stop_submitting_with_one_clear_message(case: str) -> None:
    """401 stops at once, 402 stops submitting but keeps what was paid; one clear reason each."""
    n, paid = 60, 12
    config = SimConfig(seed=4, credits=4.0 * paid if case == "no-credits-mid-batch" else None)
    async with FakeRuxa(config) as fake:
        key = "sk-not-the-right-key" if case == "rejected-key" else fake.api_key
        async with make_client(fake, api_key=key) as client:
            report = await client.run_batch(
                Job(model=NB, input={"prompt": f"p{i}"}, key=f"j{i}") for i in range(n)
            )
            pending = client.statistics().pending
        stats = fake.stats()
    assert pending == 0
    unsent = [o for o in report.outcomes if o.status is OutcomeStatus.NOT_SUBMITTED]
    assert all(isinstance(o.error, NotSubmittedError) for o in unsent)
    assert report.stop_reason is not None
    if case == "rejected-key":
        assert stats.requests == 1
        assert len(unsent) == n
        cause = unsent[0].error.cause  # type: ignore[union-attr]
        assert isinstance(cause, AuthenticationError)
        _one_clear_line(cause, "401", "API key")
        _one_clear_line(unsent[-1].error, "not submitted", "API key was rejected (401)")
        assert "sk-not-the-right-key" not in repr(report)
    else:
        assert report.succeeded == paid == stats.tasks_created
        assert len(unsent) == n - paid
        assert all(o.task_id is None for o in unsent)
        causes = {type(o.error.cause) for o in unsent}  # type: ignore[union-attr]
        assert causes == {InsufficientCreditsError}
        _one_clear_line(unsent[0].error.cause, "402", "credits")  # type: ignore[union-attr]
        _one_clear_line(unsent[-1].error, "not submitted", "insufficient credits (402)")
        assert stats.insufficient_credits <= client.rate_limits.max_in_flight


def test_cli_no_credits_mid_batch_exits_3_then_resumes_after_a_top_up(tmp_path: Path) -> None:
    """The CLI stops on 402 with exit 3, keeps the paid tasks' files, and resumes the rest."""
    paid = 3
    sim = SimProcess(
        tmp_path, key=CLI_KEY, credits=4.0 * paid, default_behavior={"median_seconds": 0.2}
    )
    try:
        keys = [f"c{i}" for i in range(8)]
        jobs = write_jobs(tmp_path / "jobs.jsonl", [nb_job(k, f"credit {k}") for k in keys])
        out = tmp_path / "out"
        args = ("run", str(jobs), "--out", str(out), "--base-url", sim.url, *FAST_CLI)
        first = run_cli(*args, "--concurrency", "1", key=CLI_KEY)
        assert first.returncode == 3, first.stderr
        errors = [line for line in first.stderr.splitlines() if "ruxa-async: error:" in line]
        assert len(errors) == 1, first.stderr
        assert "402" in errors[0]
        assert "credits" in errors[0]
        assert "Traceback" not in first.stderr
        results = read_results(out)
        statuses = Counter(r["status"] for r in results)
        assert statuses == {"succeeded": paid, "not_submitted": len(keys) - paid}
        assert all((out / r["files"][0]).exists() for r in results if r["status"] == "succeeded")
        assert all("402" in r["error"] for r in results if r["status"] == "not_submitted")

        sim.configure(credits=1000.0)
        second = run_cli(*args, key=CLI_KEY)
        assert second.returncode == 0, second.stderr
        assert {r["status"] for r in read_results(out)} == {"succeeded"}
        stats = sim.stats()
        assert (stats["tasks_created"], stats["duplicate_creates"]) == (len(keys), 0)
    finally:
        sim.close()
