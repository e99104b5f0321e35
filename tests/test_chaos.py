"""Chaos: thousands of jobs per fault mix, and every promise checked from both sides.

Each run pushes a few thousand jobs through ``as_completed`` against the
simulator with one mix of faults (5xx before and after create, dropped
connections, replies slower than the request timeout, 429 storms with and
without Retry-After, failing tasks, dropped, duplicated and reordered
callbacks), then checks, from the client's outcomes and the simulator's own
records and counters:

* every job has exactly one outcome, and each created task's outcome is the
  service's truth for that task;
* nothing is left pending or in flight when the batch returns;
* every task the service created (and charged) is either some job's task or a
  job reported as ambiguous: a later task for the same job (counted as an
  ambiguous retry) or an error saying the create may have reached the service;
* duplicate creates only where an after-create fault struck, never more than
  the ambiguous retries, none with ``ambiguous_creates="raise"``;
* no request sent while a 429 pause was running: the rate controller's own
  ``sent_while_gated``, an independent check on the client's request events
  (``RuxaClient(on_request=...)``: no request is let go within the shortest
  pause after a 429 reply of its kind, or of any kind under
  ``gate_scope="client"``), and on the server side every request that
  arrived inside a Retry-After window overlapped a 429'd request of its kind
  that the client had not yet heard back about.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import Counter
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from ruxa_async import (
    ClientStatistics,
    Job,
    JobOutcome,
    OutcomeStatus,
    PollPolicy,
    RateLimits,
    RequestEvent,
    RetryPolicy,
    RuxaClient,
    RuxaError,
    TaskInfo,
    Timeouts,
)
from ruxa_async._retry import is_ambiguous_create
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
from ruxa_async.webhooks import CallbackServer

MODEL = "google/nano-banana"
HMAC_KEY = "chaos-hmac-key-0123456789"
N = 2000
BEHAVIOR = ModelBehavior(median_seconds=0.3, sigma=0.6, fail_rate=0.05)
POLL = PollPolicy(first_check=0.3, min_interval=0.1, max_interval=0.5, jitter=0.2)
RETRY = RetryPolicy(initial_delay=0.01, max_delay=0.1, max_attempts=8, max_time=60.0)


@attrs.frozen(kw_only=True)
class Mix:
    """One chaos scenario: what the simulator does and how the client is set up."""

    sim: SimConfig
    retry: RetryPolicy = RETRY
    limits: RateLimits = attrs.field(factory=RateLimits)
    timeouts: Timeouts | None = None
    callbacks: bool = False
    duplicates_possible: bool = False  # an after-create fault (or slow reply) can strike
    pause: float | None = None  # the shortest pause any 429 reply must cause
    jobs: int = N


def _sim(seed: int, **changes: Any) -> SimConfig:
    return SimConfig(seed=seed, default_behavior=BEHAVIOR, **changes)


# A storm sure to come whatever the machine's speed: a client that has learned nothing starts at
# 40 creates/s with a few back to back, and a bucket of two tokens refilled 50 times a second
# refuses any three creates that reach it within 40 ms. 300 jobs keep the run short at 50/s.
STORM_LIMIT = RateLimit(per_second=50, burst=2)
STORM_JOBS = 300


AFTER_CREATE = Faults(
    error_500_after_create=0.03, drop_after_create=0.02, error_500_before=0.02, drop_before=0.01
)

MIXES: dict[str, Mix] = {
    "5xx-and-drops-before-create": Mix(
        sim=_sim(21, faults=Faults(error_500_before=0.05, drop_before=0.03)),
    ),
    "5xx-and-drops-after-create": Mix(
        sim=_sim(22, faults=AFTER_CREATE),
        duplicates_possible=True,
    ),
    "after-create-faults-raise": Mix(
        sim=_sim(23, faults=AFTER_CREATE),
        retry=attrs.evolve(RETRY, ambiguous_creates="raise"),
    ),
    "replies-slower-than-timeout": Mix(
        sim=_sim(24, faults=Faults(slow_reply=0.02, slow_seconds=1.0)),
        timeouts=Timeouts(connect=5.0, read=0.3, total=0.3),
        duplicates_possible=True,
        jobs=1500,
    ),
    "429-storm-with-retry-after": Mix(
        sim=_sim(
            25,
            create_limit=STORM_LIMIT,
            query_limit=RateLimit(per_second=300, burst=30),
            faults=Faults(error_500_before=0.01),
        ),
        limits=RateLimits(gate_scope="client"),  # any 429 pauses every request
        pause=1.0,  # the simulator's Retry-After is never under 1 s
        jobs=STORM_JOBS,
    ),
    "429-storm-without-retry-after": Mix(
        sim=_sim(
            26,
            create_limit=STORM_LIMIT,
            query_limit=RateLimit(per_second=300, burst=30),
            dialect=Dialect(retry_after=False),
        ),
        limits=RateLimits(pause_without_retry_after=0.2),
        pause=0.2,
        jobs=STORM_JOBS,
    ),
    "callbacks-dropped-duplicated-reordered": Mix(
        sim=_sim(
            27,
            faults=Faults(error_500_before=0.02, error_500_after_create=0.01),
            callbacks=CallbackDelivery(
                drop=0.1, duplicate=0.2, delay_min=0.0, delay_max=0.5, hmac_key=HMAC_KEY
            ),
        ),
        callbacks=True,
        duplicates_possible=True,
    ),
}


# ------------------------------------------------------ the client's request events


def starts_inside_a_pause(
    sent: list[RequestEvent], pause: float, *, per_kind: bool
) -> list[tuple[float, str]]:
    """Requests let go less than ``pause`` seconds after some 429 reply was in hand.

    ``replied_at`` of a 429 is read before the client closes its gate, and
    ``sent_at`` when the rate controller lets a request go, both on one clock:
    a request sent after the gate closed has ``sent_at >= replied_at + pause``.
    With ``per_kind`` (``gate_scope="endpoint"``) only a 429 of the request's
    own kind (create or query) holds it back; else any 429 does.
    """
    limited = [s for s in sent if s.rate_limited]
    receipts = {
        kind: sorted(r.replied_at for r in limited if r.kind == kind or not per_kind)
        for kind in {s.kind for s in sent}
    }
    early = []
    for s in sent:
        mine = receipts[s.kind]
        i = bisect.bisect_right(mine, s.sent_at) - 1  # the last 429 in hand before it left
        if i >= 0 and s.sent_at - mine[i] < pause:
            early.append((s.sent_at - mine[i], s.path))
    return early


def possibly_early(sent: list[RequestEvent]) -> int:
    """How many requests may legitimately reach the server inside a Retry-After window.

    The server counts a request as early when it arrives before the deadline a
    429 reply R of its kind set. The client closes its gate when it reads R,
    for at least as long as R's Retry-After, so a request that arrives early
    must have been sent before the client read R, and arrived after the server
    wrote R, which is after R's request was sent: its lifetime overlaps R's.
    Each event's ``[sent_at, replied_at]`` covers the request's real lifetime,
    so this count of requests overlapping another 429'd request of the same
    kind is one the server's ``early_requests`` can never exceed.
    """
    total = 0
    for kind in ("create", "query"):
        mine = [s for s in sent if s.kind == kind]
        limited = sorted((s for s in mine if s.rate_limited), key=lambda s: s.sent_at)
        starts = [r.sent_at for r in limited]
        # best[i]: the two latest receipts among limited[:i+1], as (end, index)
        best: list[tuple[tuple[float, int], tuple[float, int]]] = []
        top = ((float("-inf"), -1), (float("-inf"), -1))
        for i, r in enumerate(limited):
            item = (r.replied_at, i)
            top = (item, top[0]) if item > top[0] else (top[0], max(top[1], item))
            best.append(top)
        index_of = {id(r): i for i, r in enumerate(limited)}
        for s in mine:
            j = bisect.bisect_left(starts, s.replied_at) - 1  # 429'd requests sent before s ended
            if j < 0:
                continue
            first, second = best[j]
            end = second[0] if first[1] == index_of.get(id(s), -2) else first[0]
            if end > s.sent_at:
                total += 1
    return total


# ---------------------------------------------------------------------- the run


@attrs.frozen(kw_only=True)
class Run:
    """What one chaos run produced."""

    mix: Mix
    outcomes: list[JobOutcome]
    fake: FakeRuxa
    stats: SimStats
    at_return: ClientStatistics  # the moment the batch returned
    settled: ClientStatistics  # once the last request in flight was answered
    sent: list[RequestEvent]
    receiver: CallbackServer | None
    arrivals: list[str]


def jobs(n: int, tag: str) -> Iterator[Job]:
    """Distinct jobs, generated lazily."""
    return (Job(model=MODEL, input={"prompt": f"{tag} {i}"}, key=f"{tag}-{i}") for i in range(n))


async def run_mix(name: str) -> Run:
    """Run one mix to the end and collect everything the checks need."""
    mix = MIXES[name]
    arrivals: list[str] = []
    sent: list[RequestEvent] = []
    receiver = None
    poll = POLL
    if mix.callbacks:
        receiver = CallbackServer(
            hmac_key=HMAC_KEY, on_task=lambda info: arrivals.append(info.task_id)
        )
        poll = attrs.evolve(POLL, callback_grace_factor=1.0, callback_grace=0.5)
    async with (
        FakeRuxa(mix.sim) as fake,
        RuxaClient(
            fake.api_key,
            base_url=fake.url,
            retry=mix.retry,
            rate_limits=mix.limits,
            timeouts=mix.timeouts,
            poll=poll,
            callbacks=receiver,
            on_request=sent.append,
        ) as client,
    ):
        outcomes = [o async for o in client.as_completed(jobs(mix.jobs, name), max_pending=600)]
        at_return = client.statistics()
        if mix.sim.faults.slow_reply:
            # Slow replies the client gave up on are still being held by the server;
            # let them finish so its counters are complete.
            await asyncio.sleep(mix.sim.faults.slow_seconds + 0.5)
        if receiver is not None:
            await callbacks_settled(fake, receiver)
        settled = await requests_settled(client)
        stats = fake.stats()
    return Run(
        mix=mix,
        outcomes=outcomes,
        fake=fake,
        stats=stats,
        at_return=at_return,
        settled=settled,
        sent=sent,
        receiver=receiver,
        arrivals=arrivals,
    )


async def requests_settled(client: RuxaClient) -> ClientStatistics:
    """Statistics once no request is in flight (a callback may resolve a task mid-check)."""
    for _ in range(400):
        stats = client.statistics()
        if stats.rate.in_flight == 0:
            return stats
        await asyncio.sleep(0.05)
    raise AssertionError(f"requests never settled: {client.statistics()}")


async def callbacks_settled(fake: FakeRuxa, receiver: CallbackServer) -> None:
    """Wait until every task's callback was dropped or delivered and handled by the receiver."""
    for _ in range(400):
        s = fake.stats()
        decided = s.callbacks_dropped + s.callbacks_sent - s.callbacks_duplicated
        if decided == s.tasks_created and receiver.statistics().received == s.callbacks_sent:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"callbacks never settled: {fake.stats()}, {receiver.statistics()}")


# ------------------------------------------------------------------- the checks


def check_one_true_outcome_each(run: Run) -> None:
    """Exactly one outcome per job; each created task's outcome is the service's truth."""
    n = run.mix.jobs
    indices = Counter(o.index for o in run.outcomes)
    twice = {i: c for i, c in indices.items() if c > 1}
    assert not twice, f"jobs with more than one outcome: {twice}"
    assert sorted(indices) == list(range(n))
    records = {r.task_id: r for r in run.fake.tasks()}
    for o in run.outcomes:
        if o.task_id is None:
            assert o.status is OutcomeStatus.ERROR, o
            assert isinstance(o.error, RuxaError), repr(o.error)
            continue
        record = records[o.task_id]
        assert record.input == dict(o.job.input), (o.key, o.task_id)
        truth = record.outcome
        if o.status is OutcomeStatus.SUCCEEDED:
            assert truth == "success", (o.key, o.task_id)
            assert isinstance(o.info, TaskInfo)
            assert o.info.result_urls
            assert all(
                u.startswith(f"{run.fake.url}/files/{o.task_id}/") for u in o.info.result_urls
            )
        elif o.status is OutcomeStatus.FAILED:
            assert truth == "fail", (o.key, o.task_id)
        else:
            raise AssertionError(
                f"job {o.key}: task {o.task_id} ended without its outcome: {o.error!r}"
            )
    ids = [o.task_id for o in run.outcomes if o.task_id is not None]
    assert len(ids) == len(set(ids)), "two jobs share a task"


def check_nothing_pending(run: Run) -> None:
    """When the batch returns no task is tracked; after that nothing waits for a permit."""
    stats = run.at_return
    assert stats.pending == 0
    assert stats.scheduler.pending == 0
    assert stats.rate.waiting == 0
    assert run.settled.pending == 0
    assert run.settled.rate.waiting == 0


def check_every_paid_task_reported(run: Run) -> None:
    """Each task the service created is some job's task, or its job was reported ambiguous."""
    by_prompt = {o.job.input["prompt"]: o for o in run.outcomes}
    known = {o.task_id for o in run.outcomes if o.task_id is not None}
    orphans = [r for r in run.fake.tasks() if r.task_id not in known]
    recovered = run.settled.ambiguous_recovered  # named by their attempt's callback
    if run.mix.timeouts is None:
        assert len(orphans) == run.stats.ambiguous_created - recovered
    else:
        # The client also gives up on replies the service did send, only later than the
        # timeout (a busy machine): those tasks are orphans the service cannot know about.
        errors = sum(
            1
            for o in run.outcomes
            if o.task_id is None and o.error and is_ambiguous_create(o.error)
        )
        retries = run.settled.ambiguous_create_retries
        assert run.stats.ambiguous_created - recovered <= len(orphans) <= retries + errors
    for record in orphans:
        o = by_prompt[record.input["prompt"]]
        retried = o.task_id is not None  # a later create for the same job gave it its task
        reported = o.task_id is None and o.error is not None and is_ambiguous_create(o.error)
        assert retried or reported, f"task {record.task_id} was paid for and never reported: {o}"
    per_prompt = Counter(r.input["prompt"] for r in run.fake.tasks())
    assert sum(c - 1 for c in per_prompt.values()) == run.stats.duplicate_creates


def check_duplicates_reported(run: Run) -> None:
    """Duplicate creates only after an after-create fault, each one an ambiguous retry."""
    client = run.settled
    sim = run.stats
    assert sim.duplicate_creates <= client.ambiguous_create_retries
    if run.mix.timeouts is None:  # else also after replies slower than the client's timeout
        assert sim.duplicate_creates <= sim.ambiguous_created
    if not run.mix.duplicates_possible:
        assert sim.duplicate_creates == 0
    if run.mix.retry.ambiguous_creates == "raise":
        assert client.ambiguous_create_retries == 0


def check_no_request_while_paused(run: Run) -> None:
    """No request went out while a 429 pause ran: client counter, request events, server count."""
    stats = run.settled
    assert stats.rate.sent_while_gated == 0
    sent = run.sent
    assert len(sent) == stats.requests_sent, "a request went out without its event"
    assert stats.rate_limited == run.stats.rate_limited_create + run.stats.rate_limited_query
    if run.mix.pause is not None:
        assert run.stats.rate_limited_create > 0, "the storm never happened"
        per_kind = run.mix.limits.gate_scope == "endpoint"
        inside = starts_inside_a_pause(sent, run.mix.pause, per_kind=per_kind)
        assert not inside, f"{len(inside)} requests started inside a pause, e.g. {inside[:3]}"
    if run.mix.sim.dialect.retry_after:
        assert run.stats.early_requests <= possibly_early(sent)
    else:
        assert run.stats.early_requests == 0


def check_callbacks_add_up(run: Run) -> None:
    """Genuine callbacks: all accepted; resolved plus ignored is all; polling covers the drops."""
    assert run.receiver is not None
    got = run.receiver.statistics()
    sim = run.stats
    sched = run.settled.scheduler
    assert sim.callbacks_dropped > 0
    assert sim.callbacks_duplicated > 0
    assert got.received == sim.callbacks_sent == sim.callbacks_delivered
    assert got.rejected_token == got.rejected_signature == got.rejected_body == 0
    assert got.accepted == got.received
    assert got.resolved + got.duplicates_or_late == got.accepted
    assert sched.resolved_by_callback == got.resolved + sched.callbacks_early
    created = sum(1 for o in run.outcomes if o.task_id is not None)
    assert sched.resolved_by_callback + sched.resolved_by_poll == created
    assert sched.resolved_by_poll > 0  # the dropped callbacks
    first_seen = list(dict.fromkeys(run.arrivals))
    by_end = sorted(first_seen, key=lambda t: run.fake.task(t).completes_at)  # type: ignore[union-attr]
    assert first_seen != by_end, "the deliveries were never reordered"


def check_faults_struck(run: Run) -> None:
    """The mix really injected what it promised (no vacuous passes)."""
    faults = run.mix.sim.faults
    struck = run.stats.faults
    for kind in ("error_500_before", "drop_before", "error_500_after_create", "drop_after_create"):
        if getattr(faults, kind):
            assert struck[kind] > 0, kind
    if faults.slow_reply:
        assert struck["slow_reply"] > 0
        assert run.stats.ambiguous_created > 0
    if run.mix.duplicates_possible and faults.error_500_after_create:
        assert run.stats.ambiguous_created > 0
    assert any(o.status is OutcomeStatus.FAILED for o in run.outcomes)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(MIXES))
async def test_every_job_ends_once_and_nothing_is_paid_twice_unreported(name: str) -> None:
    """Under each fault mix: one true outcome per job, nothing pending, every paid task reported."""
    run = await run_mix(name)
    check_faults_struck(run)
    check_one_true_outcome_each(run)
    check_nothing_pending(run)
    check_every_paid_task_reported(run)
    check_duplicates_reported(run)
    check_no_request_while_paused(run)
    if run.mix.callbacks:
        check_callbacks_add_up(run)
