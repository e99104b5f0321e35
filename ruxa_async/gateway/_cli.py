"""The ``gateway`` and ``mint-token`` commands of ``ruxa-async``.

``cli.py`` calls :func:`add_commands` on its subparsers; each command's
``func`` is :func:`run`, which the CLI's ``main`` calls with the parsed args.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .._errors import ConfigurationError
from .._signals import signal_handlers
from ._config import GatewayConfig, Policy, UpstreamKey, load_config
from ._store import StateUnavailableError
from ._tokens import mint_token, new_user_token

if TYPE_CHECKING:
    from ._gateway import Gateway

__all__ = ["add_commands", "run"]

log = logging.getLogger("ruxa_async")


def add_commands(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Add ``gateway`` and ``mint-token`` to an argparse subparsers object."""
    gw = sub.add_parser(
        "gateway",
        parents=list(parents),
        help="serve the key-holding gateway (browsers use Ruxa without seeing the key)",
        description="Serve the Ruxa API to users with their own tokens, holding the real key(s).",
    )
    gw.add_argument(
        "--config", metavar="TOML", help="gateway config file (optional with --simulate)"
    )
    gw.add_argument(
        "--simulate",
        action="store_true",
        help="run the built-in simulator upstream (no key needed) and serve the demo page",
    )
    gw.add_argument("--host", default="127.0.0.1")
    gw.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    gw.add_argument("--public-url", metavar="URL", help="where Ruxa can reach this gateway")
    gw.add_argument(
        "--redis",
        metavar="URL",
        help="share ownership, budgets and audit with other gateways through this Redis "
        "(overrides [state] redis_url)",
    )
    gw.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop: uvloop (pip install ruxa-async[gateway]), the standard asyncio loop, "
        "or auto (uvloop when it is installed; the default)",
    )
    gw.set_defaults(func=run)

    mint = sub.add_parser(
        "mint-token",
        parents=list(parents),
        help="mint a short-lived scoped gateway token, or a new user token for the config",
    )
    mint.add_argument(
        "--config", metavar="TOML", help="the gateway config (for its signing secret)"
    )
    mint.add_argument("--user", help="who the scoped token is for")
    mint.add_argument("--ttl", type=float, default=600.0, help="seconds until it expires")
    mint.add_argument("--models", help="comma-separated models it may use (default: the policy's)")
    mint.add_argument("--budget", type=float, help="credits it may spend over its life")
    mint.add_argument(
        "--new-user",
        metavar="NAME",
        help="instead: print a new random user token and the config lines holding its digest",
    )
    mint.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``gateway`` or ``mint-token`` command; return the exit status."""
    try:
        if args.command == "mint-token":
            return _mint(args)
        factory = _loop_factory(getattr(args, "loop", "auto"))  # before the coroutine exists
        return _run_loop(_serve(args), factory)
    except ConfigurationError as exc:
        print(f"ruxa-async {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StateUnavailableError as exc:
        print(f"ruxa-async {args.command}: error: {exc}", file=sys.stderr)
        return 3


def _run_loop(
    main: Coroutine[Any, Any, int], factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> int:
    """Run ``main`` on the loop ``factory`` makes, or on the standard asyncio loop."""
    if factory is not None and sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    return asyncio.run(main)


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory for ``choice``, or None for the standard loop.

    ``auto`` takes uvloop when it is installed (a faster loop for a server).
    """
    if choice == "asyncio" or sys.version_info < (3, 11):  # 3.10's asyncio.run takes no factory
        if choice == "uvloop":
            raise ConfigurationError("--loop uvloop needs Python 3.11 or newer")
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError(
                '--loop uvloop needs uvloop: pip install "ruxa-async[gateway]"'
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _mint(args: argparse.Namespace) -> int:
    if args.new_user:
        token, digest = new_user_token()
        print(f"# give this token to {args.new_user} (it is shown once, and not stored):")
        print(token)
        print("# add to the gateway config:")
        print(f'[users."{args.new_user}"]\ntoken_sha256 = "{digest}"')
        return 0
    if not args.config or not args.user:
        raise ConfigurationError("mint-token needs --config and --user (or --new-user NAME)")
    config = load_config(args.config)
    if not config.signing_secret:
        raise ConfigurationError(f"{args.config} has no signing_secret (or signing_secret_env)")
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    print(
        mint_token(
            config.signing_secret, args.user, ttl=args.ttl, models=models, budget=args.budget
        )
    )
    return 0


def _demo_config() -> GatewayConfig:
    return GatewayConfig(
        defaults=Policy(
            models=["google/nano-banana"],
            budget=200.0,
            max_in_flight=4,
            requests_per_second=10.0,
        ),
        signing_secret=secrets.token_urlsafe(32),
    )


async def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else None
    if config is None and not args.simulate:
        raise ConfigurationError("gateway needs --config TOML (or --simulate for the demo)")
    stop = asyncio.Event()
    tracing = bool(os.environ.get("RUXA_GATEWAY_TRACE"))
    if tracing:  # RUXA_GATEWAY_TRACE=FILE: phase stamps of every request (``_trace``)
        from ._trace import install

        install()
    with contextlib.ExitStack() as handlers:  # entered last, left after the gateway has closed
        async with contextlib.AsyncExitStack() as stack:
            gateway = await _start(stack, args, config)
            # Everything alive now lives as long as the process (modules, classes, config):
            # the cyclic GC need not walk it again. Its full collections then take a few
            # milliseconds instead of ~40 ms, and its cost per request falls by about half
            # (benchmarks/results-gateway.md, gw-io).
            gc.collect()
            gc.freeze()
            on: dict[signal.Signals, Callable[[], object]] = {}
            if hasattr(signal, "SIGHUP"):  # not on Windows
                on[signal.SIGHUP] = gateway.reload
            on[signal.SIGTERM] = on[signal.SIGINT] = stop.set
            handlers.enter_context(signal_handlers(on))
            await stop.wait()
    if tracing:
        from ._trace import dump

        dump()
    return 0


async def _start(
    stack: contextlib.AsyncExitStack, args: argparse.Namespace, config: GatewayConfig | None
) -> Gateway:
    """Open the gateway (and with --simulate the simulator) on ``stack``; listen; say where."""
    from ._gateway import Gateway

    keys = None
    if args.simulate:
        from ..testing import FakeRuxa, ModelBehavior, SimConfig

        fake = await stack.enter_async_context(
            FakeRuxa(SimConfig(default_behavior=ModelBehavior(median_seconds=1.5, sigma=0.3)))
        )
        keys = [UpstreamKey(name="simulator", key=fake.api_key, base_url=fake.url)]
        config = config or _demo_config()
        if not config.signing_secret:
            config = attrs.evolve(config, signing_secret=secrets.token_urlsafe(32))
        config = attrs.evolve(
            config, demo=True, callbacks=attrs.evolve(config.callbacks, allow_private=True)
        )
    assert config is not None
    if args.public_url:
        config = attrs.evolve(config, public_url=args.public_url)
    if args.redis:
        config = attrs.evolve(config, state=attrs.evolve(config.state, redis_url=args.redis))
    if not keys and not config.keys:
        raise ConfigurationError("the config names no upstream keys ([[upstream.keys]])")
    gateway = await stack.enter_async_context(Gateway(config, upstream_keys=keys))
    url = await gateway.listen(args.host, args.port)
    print(f"ruxa-async gateway on {url}", file=sys.stderr, flush=True)
    if config.demo:
        print(f"demo page: {url}/demo/", file=sys.stderr, flush=True)
    return gateway
