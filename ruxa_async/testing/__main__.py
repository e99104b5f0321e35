"""``python -m ruxa_async.testing``: run the simulator until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from .._signals import run_until_signal
from ._config import RateLimit, SimConfig, config_from_dict
from ._server import serve

__all__ = ["build_config", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ruxa_async.testing",
        description="Serve a local simulation of the Ruxa API until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument("--api-key", help="the key clients must send")
    parser.add_argument("--credits", type=float, help="starting balance (default: unlimited)")
    parser.add_argument("--create-rate", type=float, help="creates per second allowed")
    parser.add_argument("--create-burst", type=int, default=10)
    parser.add_argument("--query-rate", type=float, help="queries per second allowed")
    parser.add_argument("--query-burst", type=int, default=10)
    parser.add_argument("--median-seconds", type=float, help="median task duration")
    parser.add_argument("--sigma", type=float, help="lognormal spread of task durations")
    parser.add_argument("--fail-rate", type=float, help="share of tasks that fail")
    parser.add_argument("--seed", type=int, help="make random draws repeatable")
    parser.add_argument(
        "--config-json", type=Path, help="a JSON file of SimConfig settings (flags win)"
    )
    return parser


def build_config(args: argparse.Namespace) -> SimConfig:
    """The :class:`SimConfig` described by parsed command-line arguments."""
    config = SimConfig()
    if args.config_json is not None:
        config = config_from_dict(json.loads(args.config_json.read_text(encoding="utf-8")))
    changes: dict[str, Any] = {}
    if args.api_key:
        changes["api_key"] = args.api_key
    if args.credits is not None:
        changes["credits"] = args.credits
    if args.create_rate is not None:
        changes["create_limit"] = RateLimit(per_second=args.create_rate, burst=args.create_burst)
    if args.query_rate is not None:
        changes["query_limit"] = RateLimit(per_second=args.query_rate, burst=args.query_burst)
    behavior: dict[str, Any] = {}
    if args.median_seconds is not None:
        behavior["median_seconds"] = args.median_seconds
    if args.sigma is not None:
        behavior["sigma"] = args.sigma
    if args.fail_rate is not None:
        behavior["fail_rate"] = args.fail_rate
    if behavior:
        changes["default_behavior"] = attrs.evolve(config.default_behavior, **behavior)
    if args.seed is not None:
        changes["seed"] = args.seed
    return attrs.evolve(config, **changes)


async def _run(config: SimConfig, host: str, port: int) -> None:
    def ready(url: str) -> None:
        print(f"Ruxa simulator at {url} (api key {config.api_key})", flush=True)

    await run_until_signal(serve(config, host, port, ready=ready))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, serve until SIGINT or SIGTERM, return the exit status."""
    args = _parser().parse_args(argv)
    try:
        config = build_config(args)
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(config, args.host, args.port))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
