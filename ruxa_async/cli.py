"""The ``ruxa-async`` command line, built on the public API only.

``ruxa-async run JOBS.jsonl --out DIR`` runs a file of jobs to the end: every
job is journaled in ``DIR/journal.sqlite`` before its create request is sent,
result files are downloaded into ``DIR`` as each task succeeds, and
``DIR/results.jsonl`` gets one line per job. Running the same command again
resumes: finished jobs are skipped, created tasks are re-attached, nothing is
paid for twice. ``--simulate`` does all of it against the built-in simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from . import (
    AuthenticationError,
    InsufficientCreditsError,
    RuxaClient,
    RuxaError,
    ServiceUnavailableError,
    TaskInfo,
    __version__,
)
from ._download import file_name
from ._jobsfile import JobsFileError, scan_jobs
from ._journal import JournalError
from ._progress import print_summary
from .catalog import MODELS, estimate_cost

if TYPE_CHECKING:
    pass
from ._runner import (
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    PROG,
    BatchRun,
    CLIError,
    Secrets,
    api_key,
    base_url,
    callback_address,
    check_jobs_file,
    demo_sim_config,
    poll_policy,
    prepare_out,
    say,
)

__all__ = [
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "main",
]

log = logging.getLogger("ruxa_async")

_EXIT_CODES = """\
exit status:
  0    every job succeeded and its files are on disk
  1    partial failure: some jobs failed, were invalid, were not submitted,
       are ambiguous or still pending, or a file could not be downloaded
  2    bad input or usage: a missing or malformed jobs file (nothing is sent),
       an unwritable output folder, RUXA_API_KEY not set, a job changed since
       the journal recorded it
  3    fatal: the API key was rejected (401), the account ran out of credits
       (402), the service could not be reached (wrong RUXA_BASE_URL, or an
       outage longer than the outage policy allows), or the journal could not
       be written
  130  interrupted; run the same command again to resume

The API key is read from RUXA_API_KEY only (RUXA_BASE_URL sets the API URL).
"""


class _StderrHandler(logging.Handler):
    """Log lines to whatever ``sys.stderr`` is now (rich's live display redirects it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = Secrets.redact(self.format(record))
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            self.handleError(record)


def _setup_logging(verbosity: int) -> None:
    logger = logging.getLogger("ruxa_async")
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(
        logging.DEBUG if verbosity >= 2 else logging.INFO if verbosity == 1 else logging.WARNING
    )
    logger.propagate = False


# --------------------------------------------------------------- dry run


def _dry_run(args: argparse.Namespace) -> int:
    check_jobs_file(args.jobs)
    try:
        summary = scan_jobs(args.jobs, default_model=args.model, dedupe=not args.no_dedupe)
    except JobsFileError as exc:
        raise CLIError(str(exc)) from None
    rows: list[tuple[str, str]] = [("jobs in file", str(summary.total))]
    for model, count in sorted(summary.by_model.items()):
        price = estimate_cost(model)
        each = f"{price:g} each" if price is not None else "price unknown"
        total = f"{price * count:g}" if price is not None else "?"
        rows.append((f"  {model}", f"{count} jobs, {each}, {total} credits"))
    rows.append(("estimated credits", f"{summary.cost:g}"))
    if summary.unpriced:
        rows.append(("jobs with no known price", str(sum(summary.unpriced.values()))))
    if summary.duplicates:
        rows.append(("identical jobs (sent once)", str(summary.duplicates)))
    rows.append(("invalid jobs", str(summary.invalid)))
    if args.max_credits is not None and summary.cost > args.max_credits:
        rows.append(("--max-credits", f"{args.max_credits:g}: some jobs would not be submitted"))
    problems = [
        f"  line {line} ({key}): invalid: {error}" for line, key, error in summary.invalid_examples
    ]
    if summary.invalid > len(problems):
        problems.append(f"  ... and {summary.invalid - len(problems)} more")
    print_summary("ruxa-async run --dry-run (nothing sent)", rows, problems)
    return EXIT_PARTIAL if summary.invalid else EXIT_OK


# ----------------------------------------------------------- subcommands


def _cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    check_jobs_file(args.jobs)
    callback_address(args)
    poll_policy(args, args.simulate)
    if not args.simulate:
        api_key()
    prepare_out(args.out)
    if args.journal is not None:
        prepare_out(args.journal.parent)
    return asyncio.run(BatchRun(args).main())


def _info_dict(info: TaskInfo) -> dict[str, Any]:
    return {
        "task_id": info.task_id,
        "state": info.state.value,
        "result_urls": list(info.result_urls),
        "fail_code": info.fail_code,
        "fail_msg": info.fail_msg,
        "model": info.model,
        "create_time": info.create_time.isoformat() if info.create_time else None,
        "complete_time": info.complete_time.isoformat() if info.complete_time else None,
    }


def _print_info(info: TaskInfo, as_json: bool) -> None:
    data = _info_dict(info)
    if as_json:
        print(json.dumps(data))
        return
    for name, value in data.items():
        if value in (None, [], ""):
            continue
        if isinstance(value, list):
            for url in value:
                print(f"result_url  {url}")
        else:
            print(f"{name:<11} {value}")


def _client(args: argparse.Namespace) -> RuxaClient:
    return RuxaClient(api_key=api_key(), base_url=base_url(args))


def _cmd_status(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _client(args) as client:
            info = await client.get_task(args.task_id)
        _print_info(info, args.json)
        return EXIT_OK

    return asyncio.run(go())


def _cmd_wait(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _client(args) as client:
            info = await client.get_task(args.task_id)
            if not info.is_terminal:
                handle = client.attach(args.task_id, model=info.model)
                info = await handle.wait(args.timeout, raise_on_failure=False)
            _print_info(info, args.json)
            if not info.succeeded:
                return EXIT_PARTIAL
            if args.out is not None:
                prepare_out(args.out)
                for index, url in enumerate(info.result_urls):
                    dest = args.out / file_name(args.task_id, index, url)
                    await client.download(url, dest)
                    say(f"saved {dest}")
        return EXIT_OK

    return asyncio.run(go())


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .testing import ModelBehavior, RateLimit, serve

    config = demo_sim_config()
    changes: dict[str, Any] = {"create_limit": None}
    if args.api_key:
        changes["api_key"] = args.api_key
    if args.credits is not None:
        changes["credits"] = args.credits
    if args.create_rate is not None:
        changes["create_limit"] = RateLimit(per_second=args.create_rate)
    if args.median_seconds is not None or args.fail_rate is not None:
        behavior = ModelBehavior(
            median_seconds=args.median_seconds if args.median_seconds is not None else 1.0,
            sigma=0.4,
            fail_rate=args.fail_rate or 0.0,
        )
        changes["models"] = {}
        changes["default_behavior"] = behavior
    if args.result_ttl is not None:
        changes["result_ttl"] = args.result_ttl
    if args.seed is not None:
        changes["seed"] = args.seed
    try:
        config = attrs.evolve(config, **changes)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"bad simulator option: {exc}") from None

    def ready(url: str) -> None:
        print(f"Ruxa simulator at {url} (api key {config.api_key})", flush=True)
        print(
            f"try:  RUXA_API_KEY={config.api_key} {PROG} run examples/jobs.jsonl --out out "
            f"--base-url {url}",
            flush=True,
        )

    async def go() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        server = asyncio.create_task(serve(config, args.host, args.port, ready=ready))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({server, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server

    try:
        asyncio.run(go())
    except OSError as exc:
        raise CLIError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return EXIT_OK


def _cmd_models(args: argparse.Namespace) -> int:
    if args.json:
        data = [
            {
                "name": spec.name,
                "kind": spec.kind,
                "use": spec.use,
                "estimated_credits": estimate_cost(spec.name),
                "typical_seconds": spec.typical_seconds,
                "fields": [
                    {
                        "name": f.name,
                        "type": f.type,
                        "required": f.required,
                        "choices": list(f.choices) if f.choices else None,
                    }
                    for f in spec.fields
                ],
            }
            for spec in MODELS.values()
        ]
        print(json.dumps(data, indent=2))
        return EXIT_OK
    for spec in MODELS.values():
        price = estimate_cost(spec.name)
        cost = f"~{price:g} credits" if price is not None else "price unknown"
        print(f"{spec.name}  ({spec.kind}, {cost}, typically ~{spec.typical_seconds:g} s)")
        print(f"    {spec.use}")
        for field in spec.fields:
            flags = "required" if field.required else "optional"
            line = f"    input.{field.name:<22} {field.type:<9} {flags}"
            if field.choices:
                line += "  one of: " + ", ".join(field.choices)
            print(line)
        print()
    print("Prices are community-reported estimates; Ruxa publishes none.")
    return EXIT_OK


# ---------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``ruxa-async`` argument parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run Ruxa AI image and video generations in bulk, and inspect tasks.",
        epilog=_EXIT_CODES,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more log output (-vv: debug)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run a JSONL file of jobs, download the results, resume after a crash",
        description=(
            "Run every job of JOBS (one JSON object per line: "
            '{"id": "fox-1", "model": "google/nano-banana", "input": {"prompt": "a fox"}}), '
            "download every result file into --out and write OUT/results.jsonl. "
            "Running the same command again resumes without paying twice."
        ),
        epilog=_EXIT_CODES,
        formatter_class=fmt,
    )
    run.add_argument("jobs", type=Path, metavar="JOBS.jsonl", help="the jobs file")
    run.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    run.add_argument("--model", help="model for lines that do not name one")
    run.add_argument(
        "--simulate",
        action="store_true",
        help="run against the built-in simulator: no key, no network, nothing paid",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check the file and show the estimated cost; send nothing",
    )
    run.add_argument("--journal", type=Path, metavar="PATH", help="default: OUT/journal.sqlite")
    run.add_argument(
        "--resubmit-ambiguous",
        action="store_true",
        help="send again the jobs whose earlier create may or may not have created a task",
    )
    run.add_argument(
        "--no-dedupe", action="store_true", help="create identical jobs once each, not once"
    )
    run.add_argument(
        "--max-credits",
        type=_non_negative_float,
        metavar="N",
        help="stop submitting once the estimated spend of this run would pass N credits",
    )
    run.add_argument("--base-url", metavar="URL", help="API base URL (default: RUXA_BASE_URL)")
    tuning = run.add_argument_group("rates and timeouts")
    tuning.add_argument(
        "--concurrency", type=_positive_int, default=64, metavar="N", help="max requests in flight"
    )
    tuning.add_argument(
        "--max-pending",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="max tasks created and not yet finished",
    )
    tuning.add_argument(
        "--create-rate", type=_positive_float, metavar="R", help="max creates per second"
    )
    tuning.add_argument(
        "--query-rate", type=_positive_float, metavar="R", help="max status queries per second"
    )
    tuning.add_argument(
        "--first-check", type=_positive_float, metavar="S", help="first status check after S s"
    )
    tuning.add_argument(
        "--poll-min", type=_positive_float, metavar="S", help="shortest interval between checks"
    )
    tuning.add_argument(
        "--poll-max", type=_positive_float, metavar="S", help="longest interval between checks"
    )
    tuning.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="give up waiting after S seconds (unfinished tasks are re-attached next run)",
    )
    files = run.add_argument_group("downloads")
    files.add_argument("--no-download", action="store_true", help="only record result URLs")
    files.add_argument(
        "--downloads", type=_positive_int, default=8, metavar="N", help="parallel downloads"
    )
    files.add_argument("--download-attempts", type=_positive_int, default=4, metavar="N")
    files.add_argument("--download-timeout", type=_positive_float, default=300.0, metavar="S")
    hooks = run.add_argument_group("callbacks (instead of polling)")
    hooks.add_argument(
        "--callback-bind", metavar="HOST:PORT", help="listen for Ruxa's callbacks here"
    )
    hooks.add_argument(
        "--callback-public-url",
        metavar="URL",
        help="the public base URL at which Ruxa reaches --callback-bind",
    )
    shown = run.add_argument_group("output")
    shown.add_argument(
        "--progress",
        choices=("auto", "rich", "plain", "none"),
        default="auto",
        help="auto: a live panel on a terminal (with rich), plain lines otherwise",
    )
    shown.add_argument(
        "--interval",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds between plain progress lines",
    )
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser(
        "status", parents=[common], help="show a task's current state", epilog=_EXIT_CODES
    )
    status.add_argument("task_id", metavar="TASK_ID")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("--base-url", metavar="URL")
    status.set_defaults(func=_cmd_status)

    wait = sub.add_parser(
        "wait", parents=[common], help="wait for a task to finish", epilog=_EXIT_CODES
    )
    wait.add_argument("task_id", metavar="TASK_ID")
    wait.add_argument("--timeout", type=_positive_float, metavar="S")
    wait.add_argument("--out", type=Path, metavar="DIR", help="download the results here")
    wait.add_argument("--json", action="store_true", help="print JSON")
    wait.add_argument("--base-url", metavar="URL")
    wait.set_defaults(func=_cmd_wait)

    sim = sub.add_parser(
        "simulate",
        parents=[common],
        help="serve the Ruxa simulator locally until interrupted",
        epilog=_EXIT_CODES,
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    sim.add_argument("--api-key", help="the key clients must send (default sk-simulator-key)")
    sim.add_argument("--credits", type=_non_negative_float, help="starting balance")
    sim.add_argument("--create-rate", type=_positive_float, help="creates per second allowed")
    sim.add_argument("--median-seconds", type=_non_negative_float, help="median task duration")
    sim.add_argument("--fail-rate", type=_non_negative_float, help="share of tasks that fail")
    sim.add_argument("--result-ttl", type=_non_negative_float, help="result files expire after S")
    sim.add_argument("--seed", type=int)
    sim.set_defaults(func=_cmd_simulate)

    models = sub.add_parser(
        "models", parents=[common], help="list the known models, their inputs and estimated prices"
    )
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(func=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        code: int = args.func(args)
    except CLIError as exc:
        say(f"{PROG}: error: {exc}")
        return exc.code
    except (
        AuthenticationError,
        InsufficientCreditsError,
        ServiceUnavailableError,
        JournalError,
    ) as exc:
        say(f"{PROG}: error: {exc}")
        return EXIT_FATAL
    except RuxaError as exc:
        say(f"{PROG}: error: {exc}")
        return EXIT_PARTIAL
    except KeyboardInterrupt:
        say(f"{PROG}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PARTIAL
    return code
