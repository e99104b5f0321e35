"""Outages end to end: the simulator goes down and comes back, the client waits it out.

Counts come from the simulator's counters (``outages``, ``outage_requests``,
``duplicate_creates``) and the client's ``statistics().outage``. Sizes are
scaled down for CI; ``benchmarks/outage.py`` runs the issue's full-size figures.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import attrs
import pytest

from ruxa_async import (
    APIConnectionError,
    Job,
    JobOutcome,
    NotSubmittedError,
    OutagePolicy,
    OutcomeStatus,
    ProgressEvent,
    RateLimits,
    RetryPolicy,
    RuxaClient,
    ServiceUnavailableError,
)
from ruxa_async._run import RunEnd, run_jobs
from ruxa_async.cli._options import run_options
from ruxa_async.cli._parser import build_parser
from ruxa_async.testing import FakeRuxa, Faults, ModelBehavior, SimConfig
from tests.conftest import FAST_POLL, make_client
from tests.helpers_proc import FAST_CLI, ROOT, child_env, cli, nb_job, write_jobs

NB = "google/nano-banana"
QUICK = SimConfig(seed=3, default_behavior=ModelBehavior(median_seconds=0.2, sigma=0.3))


def jobs(count: int, tag: str = "j") -> list[Job]:
    return [Job(model=NB, input={"prompt": f"{tag} {i}"}, key=f"{tag}{i}") for i in range(count)]


@pytest.fixture
async def quick() -> AsyncIterator[FakeRuxa]:
    """A simulator whose tasks finish in a fraction of a second."""
    async with FakeRuxa(QUICK) as sim:
        yield sim


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def refused(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        _reader, writer = await asyncio.open_connection(host, int(port))
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


def when_submitted(count: int, action: asyncio.Event) -> tuple[list[int], object]:
    """An ``on_event`` that sets ``action`` once ``count`` jobs were submitted."""
    seen = [0]

    def on_event(event: ProgressEvent) -> None:
        if event.kind == "submitted":
            seen[0] += 1
            if seen[0] == count:
                action.set()

    return seen, on_event


def by_status(outcomes: list[JobOutcome]) -> Counter[OutcomeStatus]:
    return Counter(o.status for o in outcomes)


# ------------------------------------------------------------------ the switch


async def test_refuse_outage_refuses_then_serves_the_same_tasks(quick: FakeRuxa) -> None:
    """A "refuse" outage closes the port; afterwards the same port serves the same tasks."""
    async with make_client(quick) as client:
        task_id = await client.create_task(NB, {"prompt": "before"})
        await quick.outage("refuse")
        assert await refused(quick.url)
        assert quick.down == "refuse"
        await quick.restore()
        assert not await refused(quick.url)
        info = await client.get_task(task_id)
    assert info.task_id == task_id
    assert quick.stats().outages == 1


async def test_drop_outage_counts_requests_and_keeps_admin_up(quick: FakeRuxa) -> None:
    """Over /_sim/outage: "drop" answers nothing but counts requests; admin still works."""
    async with aiohttp.ClientSession() as http:
        async with http.post(quick.url + "/_sim/outage", json={"mode": "drop"}) as reply:
            assert reply.status == 200
        create = {"model": NB, "input": {"prompt": "lost"}}
        auth = {"Authorization": f"Bearer {quick.api_key}"}
        with pytest.raises(aiohttp.ClientError):  # a POST: aiohttp never re-sends it by itself
            async with http.post(
                quick.url + "/api/v1/tasks/create", json=create, headers=auth
            ) as reply:
                await reply.read()
        async with http.get(quick.url + "/_sim/stats") as reply:
            stats = await reply.json()
        assert (stats["outages"], stats["outage_requests"], stats["creates"]) == (1, 1, 0)
        async with http.post(quick.url + "/_sim/outage", json={"mode": "up"}) as reply:
            assert (await reply.json())["mode"] is None
        async with http.get(quick.url + "/api/v1/tasks/query/x", headers=auth) as reply:
            assert reply.status == 404


async def test_admin_refuse_outage_must_say_how_long(quick: FakeRuxa) -> None:
    """A "refuse" outage over HTTP closes the admin port too, so it needs ``seconds``."""
    async with aiohttp.ClientSession() as http:
        async with http.post(quick.url + "/_sim/outage", json={"mode": "refuse"}) as reply:
            assert reply.status == 400
        body = json.dumps({"mode": "refuse", "seconds": 0.3})
        async with http.post(quick.url + "/_sim/outage", data=body) as reply:
            assert (await reply.json())["mode"] == "refuse"
    assert await refused(quick.url)
    await quick.serving()  # the outage ends by itself
    assert not await refused(quick.url)


# ---------------------------------------------------------------- first contact


async def test_unreachable_service_fails_fast_with_few_requests(closed_port: int) -> None:
    """A wrong URL: a few requests in all, every job NOT_SUBMITTED with one shared error."""
    url = f"http://127.0.0.1:{closed_port}"
    policy = OutagePolicy(first_contact=1.0)  # the CLI test below runs the default
    async with RuxaClient("sk-test", base_url=url, poll=FAST_POLL, outage=policy) as client:
        report = await client.run_batch(jobs(200))
        stats = client.statistics()
    assert by_status(list(report.outcomes)) == {OutcomeStatus.NOT_SUBMITTED: 200}
    assert stats.requests_sent <= 10
    assert stats.outage.gave_up == 1
    errors = {o.error.cause for o in report.outcomes if isinstance(o.error, NotSubmittedError)}
    assert len(errors) == 1
    (error,) = errors
    assert isinstance(error, ServiceUnavailableError)
    assert url in str(error)
    assert "Connection refused" in str(error)


def test_cli_wrong_url_exits_3_with_one_line_naming_the_url(
    tmp_path: Path, closed_port: int
) -> None:
    """`ruxa-async run` against a closed port: exit 3, and the URL on exactly one line."""
    url = f"http://127.0.0.1:{closed_port}"
    path = write_jobs(tmp_path / "jobs.jsonl", [nb_job(f"j{i}", f"p{i}") for i in range(50)])
    done = subprocess.run(
        cli("run", str(path), "--out", str(tmp_path / "out"), *FAST_CLI),
        capture_output=True,
        text=True,
        env=child_env("sk-test", RUXA_BASE_URL=url),
        cwd=ROOT,
        timeout=50,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    naming = [line for line in done.stderr.splitlines() if url in line]
    assert len(naming) == 1, done.stderr
    assert "Connection refused" in naming[0]


async def test_cli_max_outage_stops_the_run_with_one_line(
    tmp_path: Path, quick: FakeRuxa, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run --max-outage 0.5`: down that long after a first create, the run stops naming the URL."""
    path = write_jobs(tmp_path / "jobs.jsonl", [nb_job(f"j{i}", f"p{i}") for i in range(30)])
    argv = ["run", str(path), "--out", str(tmp_path / "out"), "--base-url", quick.url]
    monkeypatch.setenv("RUXA_API_KEY", quick.api_key)
    options = run_options(build_parser().parse_args([*argv, *FAST_CLI, "--max-outage", "0.5"]))
    assert options.outage == OutagePolicy(max_outage=0.5)
    assert run_options(build_parser().parse_args(argv)).outage == OutagePolicy()

    async def down_after_the_first_create() -> None:
        while quick.stats().tasks_created == 0:  # noqa: ASYNC110 - a counter, no event
            await asyncio.sleep(0.01)
        await quick.outage("refuse")

    side = asyncio.create_task(down_after_the_first_create())
    result = await run_jobs(attrs.evolve(options, progress="none"))
    await side
    assert result.end is RunEnd.STOPPED
    assert result.message is not None
    assert quick.url in result.message  # well before the default max_outage of 300 s


# ------------------------------------------------------------------ mid-batch


async def test_batch_rides_out_a_refuse_outage(quick: FakeRuxa) -> None:
    """A 1.5 s outage mid-batch: every job succeeds, nothing ends in a connection error."""
    go = asyncio.Event()
    _seen, on_event = when_submitted(60, go)

    async def outage() -> None:
        await go.wait()
        await quick.outage("refuse", 1.5)

    limits = RateLimits(create_per_second=100.0, query_per_second=200.0)
    async with make_client(quick, rate_limits=limits) as client:
        side = asyncio.create_task(outage())
        report = await client.run_batch(jobs(200), on_event=on_event)  # type: ignore[arg-type]
        await side
        stats = client.statistics()
    assert by_status(list(report.outcomes)) == {OutcomeStatus.SUCCEEDED: 200}
    assert stats.outage.outages >= 1
    assert stats.outage.probes <= 2 * 1.5 + 2  # one probe at a time, 2 per second at most
    assert quick.stats().duplicate_creates == 0


async def test_requests_while_dropped_are_bounded(quick: FakeRuxa) -> None:
    """During a 2 s "drop" outage the service sees the in-flight requests plus the probes."""
    go = asyncio.Event()
    _seen, on_event = when_submitted(60, go)
    limits = RateLimits(create_per_second=100.0, query_per_second=200.0, max_in_flight=16)

    async def outage() -> None:
        await go.wait()
        await quick.outage("drop", 2.0)

    async with make_client(quick, rate_limits=limits) as client:
        side = asyncio.create_task(outage())
        report = await client.run_batch(jobs(200), on_event=on_event)  # type: ignore[arg-type]
        await side
        stats = client.statistics()
    sim = quick.stats()
    assert by_status(list(report.outcomes)) == {OutcomeStatus.SUCCEEDED: 200}
    # in flight when it began (aiohttp re-sends a GET once on a dropped connection), the
    # ones sent before the third failure closed the gate, then only the probes
    assert sim.outage_requests <= 2 * (16 + 3) + 2 * stats.outage.probes
    assert stats.outage.probes <= 2 * 2.0 + 2
    assert sim.duplicate_creates <= stats.ambiguous_create_retries


async def test_outage_longer_than_max_outage_stops_and_resumes_without_duplicates(
    quick: FakeRuxa,
) -> None:
    """Past ``max_outage`` the batch stops with one error; a resume creates nothing twice."""
    go = asyncio.Event()
    _seen, on_event = when_submitted(40, go)

    async def outage() -> None:
        await go.wait()
        await quick.outage("refuse")

    limits = RateLimits(create_per_second=100.0, query_per_second=200.0)
    all_jobs = jobs(150)
    async with make_client(
        quick, rate_limits=limits, outage=OutagePolicy(max_outage=1.0), poll=FAST_POLL
    ) as client:
        side = asyncio.create_task(outage())
        report = await client.run_batch(all_jobs, on_event=on_event)  # type: ignore[arg-type]
        await side
    outcomes = list(report.outcomes)
    assert len({o.index for o in outcomes}) == 150
    assert report.stop_reason == "the Ruxa service could not be reached"
    errors = {type(o.error) for o in outcomes if o.error is not None}
    assert errors <= {ServiceUnavailableError, NotSubmittedError}
    created = {o.index: o.task_id for o in outcomes if o.task_id is not None}
    assert len(created) >= 40
    assert set(created.values()) <= {t.task_id for t in quick.tasks()}

    await quick.restore()
    resumed = [  # what a journal would replay: created tasks re-attached, the rest sent
        attrs.evolve(job, task_id=o.task_id)
        for job, o in zip(all_jobs, outcomes)
        if o.status is not OutcomeStatus.SUCCEEDED
    ]
    async with make_client(quick, rate_limits=limits) as client:
        again = await client.run_batch(resumed)
    assert by_status(list(again.outcomes)) == {OutcomeStatus.SUCCEEDED: len(resumed)}
    assert quick.stats().duplicate_creates == 0


async def test_creates_refused_during_an_outage_are_not_left_in_flight(quick: FakeRuxa) -> None:
    """Every create refused while the gate is closed is told ``on_unsent``: a kill now is safe."""
    in_flight: set[str | None] = set()
    marks = [0]

    async def on_send(job: Job) -> None:
        marks[0] += 1
        in_flight.add(job.key)

    def on_unsent(job: Job) -> None:
        in_flight.discard(job.key)

    limits = RateLimits(create_per_second=100.0, query_per_second=200.0)
    policy = OutagePolicy(probe_initial=0.1, probe_max=0.2)
    async with make_client(quick, rate_limits=limits, outage=policy) as client:
        await client.create_task(NB, {"prompt": "contact"})
        await quick.outage("refuse")
        batch = asyncio.ensure_future(
            client.run_batch(jobs(40), on_send=on_send, on_unsent=on_unsent)
        )
        while True:  # until the gate is closed and has been probed (no event to await)
            if client.statistics().outage.probes >= 2:
                break
            await asyncio.sleep(0.01)
        assert marks[0] >= 3  # the attempts that closed the gate (the last one waits at it)
        assert in_flight == set()  # what a journal would report ambiguous after a kill here
        await quick.restore()
        report = await batch
    assert by_status(list(report.outcomes)) == {OutcomeStatus.SUCCEEDED: 40}
    assert quick.stats().duplicate_creates == 0


# ------------------------------------------------------------------- one call


async def test_generate_honours_its_timeout_during_a_refuse_outage(quick: FakeRuxa) -> None:
    """A lone generate() gives up at its own timeout; the create provably never arrived."""
    await quick.outage("refuse")
    async with make_client(quick, outage=OutagePolicy(first_contact=30.0)) as client:
        started = time.monotonic()
        with pytest.raises(APIConnectionError) as caught:
            await client.generate(NB, {"prompt": "during"}, timeout=1.0)
        waited = time.monotonic() - started
    assert isinstance(caught.value, ServiceUnavailableError)
    assert caught.value.request_sent is False
    assert "timeout" in str(caught.value)
    assert waited < OutagePolicy().max_outage


async def test_generate_says_request_sent_when_the_create_was_dropped(quick: FakeRuxa) -> None:
    """When the create was dropped unanswered, the error says it may have arrived."""
    async with make_client(quick, retry=RetryPolicy(initial_delay=0.01, max_delay=0.05)) as client:
        await client.create_task(NB, {"prompt": "contact"})
        await quick.outage("drop")
        with pytest.raises(APIConnectionError) as caught:
            await client.generate(NB, {"prompt": "during"}, timeout=1.0)
    assert caught.value.request_sent is True
    assert quick.stats().outage_requests >= 1


# ------------------------------------------------------------- repeated + chaos


async def test_repeated_short_outages_under_chaos_every_job_one_outcome() -> None:
    """Down 0.3 s every 1.2 s, with faults: every job gets exactly one outcome, none lost."""
    faults = Faults(drop_before=0.02, error_500_before=0.02, error_500_after_create=0.01)
    config = SimConfig(
        seed=11, faults=faults, default_behavior=ModelBehavior(median_seconds=0.3, sigma=0.3)
    )
    limits = RateLimits(create_per_second=100.0, query_per_second=200.0)
    async with FakeRuxa(config) as sim, make_client(sim, rate_limits=limits) as client:
        stop = asyncio.Event()

        async def flapping() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.9)
                await sim.outage("refuse", 0.3)

        side = asyncio.create_task(flapping())
        try:
            report = await client.run_batch(jobs(300, "c"))
        finally:
            stop.set()
            side.cancel()
            await asyncio.gather(side, return_exceptions=True)
        stats = client.statistics()
    outcomes = list(report.outcomes)
    assert sorted(o.index for o in outcomes) == list(range(300))
    assert stats.pending == 0
    assert sim.stats().outages >= 2
    statuses = by_status(outcomes)
    assert statuses[OutcomeStatus.NOT_SUBMITTED] == 0
    mine = {o.task_id for o in outcomes if o.task_id is not None}
    ambiguous = sum(1 for o in outcomes if o.task_id is None)
    assert (
        len({t.task_id for t in sim.tasks()} - mine) <= stats.ambiguous_create_retries + ambiguous
    )
