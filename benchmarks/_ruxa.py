"""The candidate: ruxa_async's public batch API, ``client.as_completed``.

Options: ``limits`` is ``"known"`` (the workload's limits given as
``RateLimits``) or ``"unknown"`` (discovered from 429s); ``callbacks`` runs a
``CallbackServer`` on loopback so the simulator's callbacks resolve tasks.

Under time compression by ``k`` every time-valued setting of the client is
divided by ``k`` (poll intervals, backoff, CUBIC recovery, pauses) and rates
are multiplied by ``k``. The simulator's ``Retry-After`` is a whole number of
seconds (always 1 here), so ``RateLimits.max_pause`` is set to ``1/k``: the
client reads it as ``Retry-After / k``, exactly as the baselines do.
"""

from __future__ import annotations

from typing import Any

from ruxa_async import (
    Job,
    OutcomeStatus,
    PollPolicy,
    ProgressEvent,
    RateLimits,
    RetryPolicy,
    RuxaClient,
)
from ruxa_async.webhooks import CallbackServer

from ._client import ERROR, FAILED, NOT_SUBMITTED, SUCCEEDED, Recorder, RunSpec
from ._client import Job as BenchJob

SOURCES = ("configured", "headers", "429s", "slow start")  # limit sources, coded as floats

_STATUS = {
    OutcomeStatus.SUCCEEDED: SUCCEEDED,
    OutcomeStatus.FAILED: FAILED,
    OutcomeStatus.ERROR: ERROR,
    OutcomeStatus.NOT_SUBMITTED: NOT_SUBMITTED,
}


def prepare(jobs: list[BenchJob], spec: RunSpec) -> list[Job]:
    """The SDK's own Job objects (the caller's input, built before measuring)."""
    return [Job(model=job.model, input=job.input) for job in jobs]


def settings(spec: RunSpec) -> dict[str, Any]:
    """The client's policies for this workload, time-scaled by ``spec.k``."""
    k = spec.k
    poll_overrides: dict[str, Any] = spec.extra.get("poll", {})
    rates: dict[str, Any] = {}
    if spec.options.get("limits", "known") == "known":
        rates = {
            "create_per_second": spec.create_rate,
            "create_burst": spec.create_burst,
            "query_per_second": spec.query_rate,
            "query_burst": spec.query_burst,
        }
    defaults_pause = RateLimits().max_pause
    rate_limits = RateLimits(
        recovery_seconds=RateLimits().recovery_seconds / k,
        min_rate=RateLimits().min_rate * k,
        pause_without_retry_after=RateLimits().pause_without_retry_after / k,
        max_pause=defaults_pause if k == 1 else 1.0 / k,
        **rates,
    )
    base_poll = PollPolicy()
    poll = PollPolicy(
        default_duration=base_poll.default_duration / k,
        min_interval=base_poll.min_interval / k,
        max_interval=base_poll.max_interval / k,
        callback_grace=base_poll.callback_grace / k,
        **poll_overrides,
    )
    base_retry = RetryPolicy()
    retry = RetryPolicy(
        initial_delay=base_retry.initial_delay / k,
        max_delay=base_retry.max_delay / k,
        max_time=base_retry.max_time / k,
    )
    return {"rate_limits": rate_limits, "poll": poll, "retry": retry}


async def run(prepared: list[Job], spec: RunSpec, recorder: Recorder) -> None:
    """Run every job through ``as_completed`` and record each outcome as it arrives."""
    callbacks = CallbackServer("127.0.0.1", 0) if spec.options.get("callbacks") else None

    def on_event(event: ProgressEvent) -> None:
        if event.kind == "submitted" and event.task_id is not None:
            recorder.on_created(event.index, event.task_id)

    async with RuxaClient(
        spec.api_key, base_url=spec.base_url, callbacks=callbacks, **settings(spec)
    ) as client:
        try:
            batch = client.as_completed(prepared, max_pending=spec.max_pending, on_event=on_event)
            async with batch:
                async for outcome in batch:
                    recorder.on_resolved(outcome.index, outcome.task_id, _STATUS[outcome.status])
        finally:
            recorder.counters.update(_counters(client, callbacks))


def _counters(client: RuxaClient, callbacks: CallbackServer | None) -> dict[str, float]:
    stats = client.statistics()
    counters: dict[str, float] = {
        "requests_sent": stats.requests_sent,
        "retries": stats.retries + stats.scheduler.check_errors,
        "ambiguous_create_retries": stats.ambiguous_create_retries,
        "rate_limited": stats.rate_limited,
        "rate_episodes": stats.rate.episodes,
        "sent_while_gated": stats.rate.sent_while_gated,
        "paused_s": stats.rate.paused_seconds,
        "resolved_by_poll": stats.scheduler.resolved_by_poll,
        "resolved_by_callback": stats.scheduler.resolved_by_callback,
    }
    for kind, learned in stats.rate.classes.items():
        counters[f"{kind}_pace"] = learned.rate
        counters[f"{kind}_limit_estimate"] = learned.estimated_limit or 0.0
        counters[f"{kind}_burst_estimate"] = learned.estimated_burst or 0.0
        counters[f"{kind}_limit_source"] = float(SOURCES.index(learned.source))
        counters[f"{kind}_probes"] = learned.probes
        counters[f"{kind}_episodes"] = learned.episodes
        counters[f"{kind}_paused_s"] = learned.paused_seconds
    if callbacks is not None:
        received = callbacks.statistics()
        counters["callbacks_received"] = received.received
        counters["callbacks_resolved"] = received.resolved
    return counters
