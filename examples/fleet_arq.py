"""An arq fleet: worker processes sharing one Ruxa account through Redis, long jobs deferred.

Each arq worker holds one RuxaClient with a RedisCoordinator in ``ctx``. A job
waits at most ``FLEET_WAIT`` seconds for its task; a longer one (a video) is
deferred with ``arq.Retry`` and re-attaches by idempotency key on its next try,
so it never meets arq's ``job_timeout`` and is never created twice. Against the
simulator and a local Redis (started first, e.g. ``redis-server --port 6379
--save "" &`` and ``python -m ruxa_async.testing --port 8000 --api-key sk-demo &``)::

    export RUXA_BASE_URL=http://127.0.0.1:8000 RUXA_API_KEY=sk-demo
    arq examples.fleet_arq.WorkerSettings          # one worker; start more in other shells
    python -m examples.fleet_arq 40                # enqueue 40 jobs, wait for them

Environment: ``RUXA_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``),
``FLEET_NAMESPACE``, ``FLEET_FIRST_CHECK``, ``FLEET_WAIT`` (default 240 s)
and ``FLEET_CHECK_EVERY`` (default 60 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from typing import Any

from arq import create_pool, func
from arq.connections import RedisSettings
from arq.jobs import Job, ResultNotFound

from ruxa_async import PollPolicy, RuxaClient
from ruxa_async.integrations.arq import generate_or_defer, ruxa_hooks
from ruxa_async.redis import RedisCoordinator

MODEL = "google/nano-banana"
REDIS_URL = os.environ.get("RUXA_REDIS_URL", "redis://127.0.0.1:6379/0")
NAMESPACE = os.environ.get("FLEET_NAMESPACE", "ruxa")
QUEUE = f"{NAMESPACE}:arq"


def make_client() -> RuxaClient:
    """The client each worker process starts: shared state in Redis."""
    first_check = os.environ.get("FLEET_FIRST_CHECK")
    poll = PollPolicy(first_check=float(first_check), min_interval=0.1) if first_check else None
    return RuxaClient(coordinator=RedisCoordinator(REDIS_URL, namespace=NAMESPACE), poll=poll)


async def make_media(ctx: dict[str, Any], job_id: str, prompt: str) -> dict[str, object]:
    """One generation: deferred while it runs, created once per job id across the fleet."""
    info = await generate_or_defer(
        ctx,
        MODEL,
        {"prompt": prompt},
        idempotency_key=job_id,
        wait=float(os.environ.get("FLEET_WAIT", "240")),
        check_every=float(os.environ.get("FLEET_CHECK_EVERY", "60")),
    )
    return {"job": job_id, "task_id": info.task_id, "urls": list(info.result_urls)}


on_startup, on_shutdown = ruxa_hooks(make_client)


class WorkerSettings:
    """``arq examples.fleet_arq.WorkerSettings``."""

    functions = [func(make_media, max_tries=500)]  # type: ignore[list-item]
    on_startup = on_startup
    on_shutdown = on_shutdown
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    queue_name = QUEUE
    max_jobs = 50
    poll_delay = 0.1


async def outcome(job: Job) -> Any:
    """The job's result; arq reads the result and the queue in two steps, so a job that
    finishes in between looks lost (``ResultNotFound``) once: read it again."""
    for _ in range(5):
        try:
            return await job.result(timeout=300, poll_delay=0.1)
        except ResultNotFound:
            await asyncio.sleep(0.1)
    return await job.result(timeout=1)


async def main(count: int, twice: bool) -> None:
    """Enqueue ``count`` jobs (twice each with ``--twice``), wait, print a JSON summary."""
    pool = await create_pool(RedisSettings.from_dsn(REDIS_URL), default_queue_name=QUEUE)
    run = uuid.uuid4().hex[:6]
    try:
        jobs = []
        for i in range(count):
            for _ in range(2 if twice else 1):
                job = await pool.enqueue_job("make_media", f"{run}-{i}", f"a red fox #{i} ({run})")
                assert job is not None
                jobs.append(job)
        outcomes = await asyncio.gather(*(outcome(job) for job in jobs), return_exceptions=True)
    finally:
        await pool.aclose()
    ok = [o for o in outcomes if isinstance(o, dict)]
    errors = sorted({type(o).__name__ for o in outcomes if not isinstance(o, dict)})
    summary = {
        "results": len(outcomes),
        "ok": len(ok),
        "distinct_tasks": len({o["task_id"] for o in ok}),
        "errors": errors,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, nargs="?", default=20)
    parser.add_argument("--twice", action="store_true", help="send every job twice")
    args = parser.parse_args()
    asyncio.run(main(args.count, args.twice))
