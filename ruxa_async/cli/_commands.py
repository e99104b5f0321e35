"""The ``ruxa-async`` commands: run (and its dry run), status, wait, simulate, models."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

import attrs

from .. import (
    RuxaClient,
    TaskInfo,
)
from .._run import (
    RunEnd,
    credits_text,
    dry_run,
    file_name,
    prepare_out,
    run_jobs,
)
from .._signals import run_until_signal
from ..catalog import MODELS, estimate_cost

if TYPE_CHECKING:
    pass

from ._common import (
    EXIT_OK,
    EXIT_PARTIAL,
    EXITS,
    PROG,
    CLIError,
    api_key,
    base_url,
    say,
)
from ._options import demo_sim_config, run_options

__all__ = ["cmd_models", "cmd_run", "cmd_simulate", "cmd_status", "cmd_wait"]


def _dry_run(args: argparse.Namespace) -> int:
    options = run_options(args, need_key=False)
    plan = dry_run(options)
    jobs = plan.jobs
    rows: list[tuple[str, str]] = [("jobs in file", str(jobs.total))]
    if plan.done:
        rows.append(("finished in an earlier run", str(plan.done)))
    if plan.reattach:
        rows.append(("to re-attach (created earlier)", str(plan.reattach)))
    if plan.ambiguous:
        rows.append(("ambiguous (not sent again)", str(plan.ambiguous)))
    if plan.lost:
        rows.append(("lost (not sent again)", str(plan.lost)))
    if plan.resubmit:
        rows.append(("ambiguous or lost, sent again", str(plan.resubmit)))
    rows.append(("to send", str(plan.send + plan.resubmit)))
    for model, count in sorted(plan.send_by_model.items()):
        price = estimate_cost(model)
        each = f"{price:g} each" if price is not None else "price unknown"
        total = credits_text(price * count) if price is not None else "?"
        rows.append((f"  {model}", f"{count} jobs, {each}, {total} credits"))
    rows.append(("estimated credits", credits_text(plan.send_cost)))
    if plan.send_unpriced:
        rows.append(("jobs with no known price", str(plan.send_unpriced)))
    if jobs.duplicates:
        rows.append(("identical jobs (sent once)", str(jobs.duplicates)))
    rows.append(("invalid jobs", str(jobs.invalid)))
    if args.max_credits is not None and plan.send_cost > args.max_credits:
        rows.append(("--max-credits", f"{args.max_credits:g}: some jobs would not be submitted"))
    problems = [
        f"  line {line} ({key}): invalid: {error}" for line, key, error in jobs.invalid_examples
    ]
    if jobs.invalid > len(problems):
        problems.append(f"  ... and {jobs.invalid - len(problems)} more")
    _print_summary("ruxa-async run --dry-run (nothing sent)", rows, problems)
    return EXIT_PARTIAL if jobs.invalid or plan.ambiguous or plan.lost else EXIT_OK


def _print_summary(title: str, rows: list[tuple[str, str]], problems: list[str]) -> None:
    width = max(len(name) for name, _ in rows)
    print(title)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for problem in problems:
        print(problem)
    sys.stdout.flush()


def cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _dry_run(args)
    options = run_options(args)
    result = asyncio.run(run_jobs(options))
    if result.message is not None:
        prefix = "error: " if result.end is RunEnd.STOPPED else ""
        say(f"{PROG}: {prefix}{result.message}")
    return EXITS[result.end]


# ------------------------------------------------------- other commands


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


def cmd_status(args: argparse.Namespace) -> int:
    async def go() -> int:
        async with _client(args) as client:
            info = await client.get_task(args.task_id)
        _print_info(info, args.json)
        return EXIT_OK

    return asyncio.run(go())


def cmd_wait(args: argparse.Namespace) -> int:
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


def cmd_simulate(args: argparse.Namespace) -> int:
    from ..testing import ModelBehavior, RateLimit, serve

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

    try:
        asyncio.run(run_until_signal(serve(config, args.host, args.port, ready=ready)))
    except OSError as exc:
        raise CLIError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
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
