"""``ruxa-async run`` arguments turned into one :class:`RunOptions`, everything derived."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .. import (
    OutagePolicy,
    PollPolicy,
    RateLimits,
)
from .._run import (
    RunOptions,
)
from ..catalog import MODELS

if TYPE_CHECKING:
    from ..testing import SimConfig

from ._common import (
    CLIError,
    api_key,
    base_url,
)

__all__ = ["demo_sim_config", "run_options"]


def demo_sim_config() -> SimConfig:
    """The simulator of ``--simulate``: the catalogue's models, their typical durations
    compressed to 1-3 s, and a create limit of 10 per second."""
    from ..testing import ModelBehavior, RateLimit, SimConfig

    return SimConfig(
        models={
            name: ModelBehavior(
                median_seconds=min(3.0, max(1.0, spec.typical_seconds / 40)),
                sigma=0.4,
                min_seconds=0.3,
            )
            for name, spec in MODELS.items()
        },
        create_limit=RateLimit(per_second=10.0, burst=16),
    )


def _rate_limits(args: argparse.Namespace) -> RateLimits:
    def burst(rate: float | None) -> int:
        return max(1, round(rate)) if rate is not None else 10

    return RateLimits(
        max_in_flight=args.concurrency,
        create_per_second=args.create_rate,
        create_burst=burst(args.create_rate),
        query_per_second=args.query_rate,
        query_burst=burst(args.query_rate),
    )


def _poll_policy(args: argparse.Namespace) -> PollPolicy:
    base = PollPolicy()
    if args.simulate:
        base = PollPolicy(first_check=1.0, min_interval=0.5, max_interval=2.0)
    try:
        return PollPolicy(
            first_check=args.first_check if args.first_check is not None else base.first_check,
            min_interval=args.poll_min if args.poll_min is not None else base.min_interval,
            max_interval=args.poll_max if args.poll_max is not None else base.max_interval,
        )
    except ValueError as exc:
        raise CLIError(f"bad polling option: {exc}") from None


def _outage_policy(args: argparse.Namespace) -> OutagePolicy:
    if args.max_outage is None:
        return OutagePolicy()
    return OutagePolicy(max_outage=args.max_outage)


def _callback_bind(args: argparse.Namespace) -> tuple[str, int] | None:
    if args.callback_bind is None:
        if args.callback_public_url is not None:
            raise CLIError("--callback-public-url needs --callback-bind HOST:PORT to listen on")
        return None
    host, sep, port = args.callback_bind.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise CLIError(f"--callback-bind must be HOST:PORT, got {args.callback_bind!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def run_options(args: argparse.Namespace, *, need_key: bool = True) -> RunOptions:
    """The :class:`RunOptions` of parsed ``run`` arguments (raises :class:`CLIError`)."""
    simulate = args.simulate
    return RunOptions(
        jobs=args.jobs,
        out=args.out,
        journal=args.journal or (args.out / "journal.sqlite"),
        api_key=None if simulate or not need_key else api_key(),
        base_url=base_url(args),
        redis_url=args.redis,
        simulator=demo_sim_config() if simulate else None,
        default_model=args.model,
        dedupe=not args.no_dedupe,
        resubmit_ambiguous=args.resubmit_ambiguous,
        resubmit_lost=args.resubmit_lost,
        max_credits=args.max_credits,
        rate_limits=_rate_limits(args),
        poll=_poll_policy(args),
        outage=_outage_policy(args),
        max_pending=args.max_pending,
        timeout=args.timeout,
        callback_bind=_callback_bind(args),
        callback_public_url=args.callback_public_url,
        download=not args.no_download,
        downloads=args.downloads,
        download_attempts=args.download_attempts,
        download_timeout=args.download_timeout,
        progress=args.progress,
        interval=args.interval,
        gallery=not args.no_gallery,
    )
