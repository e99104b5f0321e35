"""arq: ``on_startup``/``on_shutdown`` hooks putting one :class:`RuxaClient` in ``ctx``.

::

    from arq import func
    from ruxa_async.integrations.arq import generate_or_defer, ruxa_hooks

    on_startup, on_shutdown = ruxa_hooks(
        lambda: RuxaClient(coordinator=RedisCoordinator(REDIS_URL))
    )

    async def make_video(ctx, job_id: str, prompt: str) -> list[str]:
        info = await generate_or_defer(ctx, MODEL, {"prompt": prompt}, idempotency_key=job_id)
        return list(info.result_urls)

    class WorkerSettings:
        functions = [func(make_video, max_tries=200)]
        on_startup, on_shutdown = on_startup, on_shutdown

**Long videos and ``job_timeout``.** arq cancels a job after ``job_timeout``
(300 s by default). :func:`generate_or_defer` waits at most ``wait`` seconds;
if the task is still running it raises ``arq.Retry(defer=check_every)``, which
frees the worker slot and runs the job again later. The next try submits with
the same idempotency key, so it *attaches* to the task already created (no
second create, no second charge) and waits again. Give such functions a
``max_tries`` large enough for the longest video (``tries * check_every``).
Needs the ``arq`` extra.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from arq import Retry

from .._client import RuxaClient
from .._errors import ConfigurationError, TaskFailedError, TaskTimeoutError
from .._models import TaskInfo

__all__ = ["generate_or_defer", "ruxa_client", "ruxa_hooks"]

CTX_KEY = "ruxa_client"

Hook = Callable[[dict[Any, Any]], Awaitable[None]]


def ruxa_hooks(factory: Callable[[], RuxaClient]) -> tuple[Hook, Hook]:
    """``(on_startup, on_shutdown)`` for ``WorkerSettings``: a started client in ``ctx``."""

    async def on_startup(ctx: dict[Any, Any]) -> None:
        client = factory()
        await client.start()
        ctx[CTX_KEY] = client

    async def on_shutdown(ctx: dict[Any, Any]) -> None:
        client = ctx.pop(CTX_KEY, None)
        if client is not None:
            await client.aclose()

    return on_startup, on_shutdown


def ruxa_client(ctx: Mapping[Any, Any]) -> RuxaClient:
    """The worker's client from an arq job's ``ctx``."""
    client = ctx.get(CTX_KEY)
    if not isinstance(client, RuxaClient):
        raise ConfigurationError(
            "no Ruxa client in this arq worker: set on_startup/on_shutdown from ruxa_hooks()"
        )
    return client


async def generate_or_defer(
    ctx: Mapping[Any, Any],
    model: str,
    input: Mapping[str, Any],
    *,
    idempotency_key: str,
    wait: float = 240.0,
    check_every: float = 60.0,
) -> TaskInfo:
    """Create (or re-attach to) the task for ``idempotency_key`` and wait up to ``wait`` s.

    Returns the successful :class:`TaskInfo`; raises ``TaskFailedError`` when
    it failed, or ``arq.Retry(defer=check_every)`` while it is still running
    (keep ``wait`` under the function's ``job_timeout``).
    """
    client = ruxa_client(ctx)
    handle = await client.submit(model, input, idempotency_key=idempotency_key)
    if int(ctx.get("job_try") or 1) > 1:  # a re-attached task may be done: look at once
        info = await client.get_task(handle.task_id)
        if info.is_terminal:
            client.forget(handle.task_id)
            if info.failed:
                raise TaskFailedError(info.task_id, info.fail_code, info.fail_msg, info)
            return info
    try:
        return await handle.wait(wait)
    except TaskTimeoutError:
        client.forget(handle.task_id)  # the next try re-attaches by key
        raise Retry(defer=check_every) from None
