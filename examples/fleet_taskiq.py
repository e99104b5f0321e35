"""A taskiq fleet: worker processes sharing one Ruxa account through Redis.

Each worker process holds one RuxaClient with a RedisCoordinator, so all of
them share one rate budget, one 429 gate and one set of idempotency keys.
Against the simulator and a local Redis (started first, e.g.
``redis-server --port 6379 --save "" &`` and
``python -m ruxa_async.testing --port 8000 --api-key sk-demo &``)::

    export RUXA_BASE_URL=http://127.0.0.1:8000 RUXA_API_KEY=sk-demo
    taskiq worker examples.fleet_taskiq:broker --workers 2     # the fleet
    python -m examples.fleet_taskiq 40                           # enqueue 40 jobs, wait

``--twice`` sends every job twice (same job id): each is still created once.
Settings from the environment: ``RUXA_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``), ``FLEET_NAMESPACE``, ``FLEET_FIRST_CHECK``
(seconds before the first status check, for fast simulators),
``FLEET_AMBIGUOUS`` (``retry`` or ``raise``), ``FLEET_IDLE_TIMEOUT_MS`` (when
another worker takes over the messages of a worker that died).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid

from taskiq import TaskiqDepends
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from ruxa_async import PollPolicy, RetryPolicy, RuxaClient
from ruxa_async.integrations.taskiq import ruxa_client, setup_ruxa
from ruxa_async.redis import RedisCoordinator

MODEL = "google/nano-banana"
REDIS_URL = os.environ.get("RUXA_REDIS_URL", "redis://127.0.0.1:6379/0")
NAMESPACE = os.environ.get("FLEET_NAMESPACE", "ruxa")

broker = RedisStreamBroker(
    REDIS_URL,
    queue_name=f"{NAMESPACE}:taskiq",
    idle_timeout=int(os.environ.get("FLEET_IDLE_TIMEOUT_MS", "600000")),
    xread_count=5,
).with_result_backend(RedisAsyncResultBackend(REDIS_URL, result_ex_time=3600))


def make_client() -> RuxaClient:
    """The client each worker process starts: shared state in Redis."""
    first_check = os.environ.get("FLEET_FIRST_CHECK")
    poll = PollPolicy(first_check=float(first_check), min_interval=0.1) if first_check else None
    ambiguous = os.environ.get("FLEET_AMBIGUOUS", "retry")
    return RuxaClient(
        coordinator=RedisCoordinator(REDIS_URL, namespace=NAMESPACE),
        poll=poll,
        retry=RetryPolicy(ambiguous_creates=ambiguous),  # type: ignore[arg-type]
    )


setup_ruxa(broker, make_client)


@broker.task(task_name="fleet.generate_image")
async def generate_image(
    job_id: str,
    prompt: str,
    client: RuxaClient = TaskiqDepends(ruxa_client),  # noqa: B008
) -> dict[str, object]:
    """One image: created once per job id across the fleet, however often it is delivered."""
    try:
        info = await client.generate(MODEL, {"prompt": prompt}, idempotency_key=job_id, timeout=600)
    except Exception as exc:  # reported as the job's outcome
        return {"job": job_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"job": job_id, "ok": True, "task_id": info.task_id, "urls": list(info.result_urls)}


@broker.task(task_name="fleet.nudge")
async def nudge() -> None:
    """A no-op: new messages make the stream broker look for messages a dead worker left."""


async def main(count: int, twice: bool, nudge_every: float) -> None:
    """Enqueue ``count`` jobs (twice each with ``--twice``), wait, print a JSON summary."""
    await broker.startup()
    run = uuid.uuid4().hex[:6]
    try:
        kicks = []
        for i in range(count):
            for _ in range(2 if twice else 1):
                kicks.append(await generate_image.kiq(f"{run}-{i}", f"a red fox #{i} ({run})"))
        waiting = asyncio.gather(*(k.wait_result(timeout=300) for k in kicks))
        while nudge_every > 0 and not waiting.done():
            await nudge.kiq()
            await asyncio.wait([waiting], timeout=nudge_every)
        results = [r.return_value for r in await waiting]
    finally:
        await broker.shutdown()
    ok = sum(1 for r in results if r["ok"])
    tasks = {r["task_id"] for r in results if r["ok"]}
    errors = sorted({str(r["error"]).split(":")[0] for r in results if not r["ok"]})
    summary = {"results": len(results), "ok": ok, "distinct_tasks": len(tasks), "errors": errors}
    print(json.dumps(summary))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, nargs="?", default=20)
    parser.add_argument("--twice", action="store_true", help="send every job twice")
    parser.add_argument("--nudge-every", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.twice, args.nudge_every))
