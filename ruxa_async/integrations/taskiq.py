"""taskiq: one :class:`RuxaClient` per worker process, handed to tasks as a dependency.

::

    from taskiq import TaskiqDepends
    from ruxa_async import RuxaClient
    from ruxa_async.integrations.taskiq import ruxa_client, setup_ruxa
    from ruxa_async.redis import RedisCoordinator

    setup_ruxa(broker, lambda: RuxaClient(coordinator=RedisCoordinator(REDIS_URL)))

    @broker.task
    async def make_image(job_id: str, prompt: str,
                         client: RuxaClient = TaskiqDepends(ruxa_client)) -> list[str]:
        info = await client.generate(MODEL, {"prompt": prompt}, idempotency_key=job_id)
        return list(info.result_urls)

The client starts on ``WORKER_STARTUP`` and closes on ``WORKER_SHUTDOWN`` (its
pending handles then fail with ``ClientClosedError``). Pass the job's own id as
``idempotency_key`` so a message delivered twice, or redelivered after a worker
crash, attaches to the task already created instead of paying for another.
Needs the ``taskiq`` extra.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from taskiq import AsyncBroker, TaskiqDepends, TaskiqEvents, TaskiqState

from .._client import RuxaClient
from .._errors import ConfigurationError

__all__ = ["ruxa_client", "setup_ruxa"]

log = logging.getLogger("ruxa_async")

_STATE_ATTR = "ruxa_client"


def setup_ruxa(broker: AsyncBroker, factory: Callable[[], RuxaClient]) -> None:
    """Start a client from ``factory()`` in each worker process; close it at shutdown."""

    async def startup(state: TaskiqState) -> None:
        client = factory()
        await client.start()
        setattr(state, _STATE_ATTR, client)
        log.debug("taskiq worker started %r", client)

    async def shutdown(state: TaskiqState) -> None:
        client: RuxaClient | None = getattr(state, _STATE_ATTR, None)
        if client is not None:
            setattr(state, _STATE_ATTR, None)
            await client.aclose()

    broker.add_event_handler(TaskiqEvents.WORKER_STARTUP, startup)
    broker.add_event_handler(TaskiqEvents.WORKER_SHUTDOWN, shutdown)


def ruxa_client(state: TaskiqState = TaskiqDepends()) -> RuxaClient:  # noqa: B008
    """The worker's client, as a dependency: ``client: RuxaClient = TaskiqDepends(ruxa_client)``."""
    client: RuxaClient | None = getattr(state, _STATE_ATTR, None)
    if client is None:
        raise ConfigurationError(
            "no Ruxa client in this taskiq worker: call setup_ruxa(broker, factory) where the "
            "broker is defined, and run tasks in a worker (`taskiq worker module:broker`)"
        )
    return client
