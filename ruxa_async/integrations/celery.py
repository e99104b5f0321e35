"""Celery: one :class:`SyncRuxaClient` per worker process, and creates that survive redelivery.

Call :func:`setup` next to your Celery app; tasks then use :func:`get_client`
(one client per worker process, shared by the threads of the ``threads``
pool) or :func:`generate_once`::

    app = Celery("app", broker="redis://...", backend="redis://...")
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True)
    ruxa_celery.setup(app)                      # key from RUXA_API_KEY

    @app.task
    def make_image(prompt: str) -> list[str]:
        info = ruxa_celery.generate_once("google/nano-banana", {"prompt": prompt}, timeout=600)
        return list(info.result_urls)

**Redelivery.** With ``acks_late`` a task whose worker process dies is run
again, and a Ruxa create is not idempotent. :func:`generate_once` keeps a
small ledger in Redis, keyed by the Celery task id: it claims the key before
the create and records the Ruxa task id right after it; a redelivered (or
``retry()``-ed) task finds the id and waits for that task instead of creating
another. One window cannot be closed from the client side: a process killed
after sending the create but before recording its id. A later delivery sees
the claim of a dead owner, counts it (``ledger_counts()``), logs a warning,
and then creates again (``on_ambiguous="create"``, the default: the task
succeeds, perhaps paying twice) or raises :class:`AmbiguousCreateError`
(``on_ambiguous="raise"``: never pays twice, the task fails).

Limits are per process unless each process's client gets a shared coordinator:
``setup(app, factory=lambda: SyncRuxaClient(coordinator=RedisCoordinator(url)))``
(made in the worker process, after the fork). Requires the ``celery`` extra
(``pip install "ruxa-async[celery]"``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import redis
from celery import Celery, current_app, current_task, signals  # type: ignore[import-untyped]

from .._errors import (
    APIStatusError,
    ConfigurationError,
    NotFoundError,
    RuxaError,
    ServerError,
    TaskFailedError,
)
from .._models import TaskInfo
from .._sync import SyncRuxaClient

__all__ = [
    "AmbiguousCreateError",
    "close",
    "generate_once",
    "get_client",
    "ledger_counts",
    "setup",
]

log = logging.getLogger("ruxa_async")

_PREFIX = "ruxa_async:celery:"
_CLAIM = "claim"
_HOST = socket.gethostname()
# Replace a dead run's claim only if it is still the value this run read (compare and set).
_SWAP = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
    return 1
end
return 0
"""


class AmbiguousCreateError(RuxaError):
    """An earlier run of this task died between sending its create and recording the task id.

    The task may or may not exist on the service (and be paid for). Raised by
    :func:`generate_once` only with ``on_ambiguous="raise"``; look the task up
    in the Ruxa dashboard, or run it again under a new key.
    """

    def __init__(self, key: str) -> None:
        super().__init__(
            f"an earlier run of {key!r} died after sending its create and before recording "
            "the task id; the task may exist already (not created again: on_ambiguous='raise')"
        )
        self.key = key


@attrs.frozen(kw_only=True)
class _Settings:
    app: Celery | None
    factory: Callable[[], SyncRuxaClient]
    ledger_url: str | None
    ledger_ttl: int
    on_ambiguous: Literal["create", "raise"]


class _Process:
    """This process's client and ledger connection (re-made after a fork)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.client: SyncRuxaClient | None = None
        self.ledger: redis.Redis | None = None
        self.creating: set[str] = set()  # claim tokens whose create is running here


_settings: _Settings | None = None
_process = _Process()


def setup(
    app: Celery | None = None,
    *,
    factory: Callable[[], SyncRuxaClient] | None = None,
    ledger_url: str | None = None,
    ledger_ttl: int = 7 * 24 * 3600,
    on_ambiguous: Literal["create", "raise"] = "create",
    **client_options: Any,
) -> None:
    """Give each worker process one client: ``factory()`` or ``SyncRuxaClient(**client_options)``.

    The client is created when a prefork child starts (``worker_process_init``)
    or, for the ``threads`` and ``solo`` pools, when the worker starts
    (``worker_init``), and closed at the matching shutdown signal.
    ``ledger_url`` is the Redis that :func:`generate_once` keeps its ledger in
    (default: the app's result backend, else its broker, when it is Redis).
    """
    global _settings
    if factory is not None and client_options:
        raise ConfigurationError("pass either factory= or client options, not both")
    if on_ambiguous not in ("create", "raise"):
        raise ConfigurationError(f"on_ambiguous must be 'create' or 'raise', not {on_ambiguous!r}")
    _settings = _Settings(
        app=app,
        factory=factory or (lambda: SyncRuxaClient(**client_options)),
        ledger_url=ledger_url,
        ledger_ttl=ledger_ttl,
        on_ambiguous=on_ambiguous,
    )
    signals.worker_init.connect(_on_worker_init, weak=False)
    signals.worker_process_init.connect(_on_process_init, weak=False)
    signals.worker_process_shutdown.connect(_on_shutdown, weak=False)
    signals.worker_shutdown.connect(_on_shutdown, weak=False)


def get_client() -> SyncRuxaClient:
    """This worker process's client (created on first use if no signal made it yet)."""
    process = _current()
    with process.lock:
        if process.client is None or process.client.closed:
            process.client = _configured().factory()
        return process.client


def ledger_counts() -> dict[str, int]:
    """What the ledger saw, for all processes: ``reattached`` and ``ambiguous`` runs.

    ``reattached``: runs that found an earlier run's task id and waited for it
    instead of creating; ``ambiguous``: runs that found the claim of a run that
    died mid-create.
    """
    ledger = _ledger()
    return {kind: int(_read(ledger, _PREFIX + kind) or 0) for kind in ("reattached", "ambiguous")}


def generate_once(
    model: str,
    input: Mapping[str, Any],
    *,
    timeout: float | None = None,
    key: str | None = None,
) -> TaskInfo:
    """Create a task at most once per Celery task (or ``key``) and wait for it.

    A redelivered or retried Celery task re-attaches to the Ruxa task its
    earlier run created. A task that *failed* is forgotten, so a ``retry()``
    creates a new one. See the module docstring for the one ambiguous window.
    """
    client = get_client()
    ledger = _ledger()
    name = _PREFIX + (key or _celery_task_id())
    settings = _configured()
    token = f"{_CLAIM} {_HOST} {os.getpid()} {time.time():.3f} {uuid.uuid4().hex}"
    process = _current()
    process.creating.add(token)  # before the claim is visible: this run is alive
    try:
        task_id = _claim_or_find(client, ledger, name, token, settings)
        if task_id is not None:
            ledger.incr(_PREFIX + "reattached")
            log.info("%s: re-attaching to task %s", name[len(_PREFIX) :], task_id)
            return _wait(client, ledger, name, task_id, model, timeout)
        try:
            task_id = client.create_task(model, input)
        except APIStatusError as exc:
            if not isinstance(exc, ServerError):
                ledger.delete(name)  # refused by the service: nothing was created
            raise
    finally:
        process.creating.discard(token)
    ledger.set(name, task_id, ex=settings.ledger_ttl)
    return _wait(client, ledger, name, task_id, model, timeout)


def _claim_or_find(
    client: SyncRuxaClient, ledger: redis.Redis, name: str, token: str, settings: _Settings
) -> str | None:
    """Claim ``name`` for a create (None), or return the task id an earlier run recorded."""
    deadline = time.monotonic() + client.request_timeout
    while True:
        value = _read(ledger, name)
        if value is None:
            if ledger.set(name, token, nx=True, ex=settings.ledger_ttl):
                return None
            continue
        if not value.startswith(_CLAIM):
            return value
        if not _owner_gone(value, client.request_timeout) and time.monotonic() < deadline:
            time.sleep(0.2)  # another run is creating right now; its id lands in a moment
            continue
        if settings.on_ambiguous == "raise":
            ledger.incr(_PREFIX + "ambiguous")
            raise AmbiguousCreateError(name[len(_PREFIX) :])
        if ledger.eval(_SWAP, 1, name, value, token, settings.ledger_ttl):
            ledger.incr(_PREFIX + "ambiguous")
            log.warning(
                "%s: an earlier run died between sending its create and recording the task "
                "id; creating again (the earlier create may have been charged too)",
                name[len(_PREFIX) :],
            )
            return None


def _wait(
    client: SyncRuxaClient,
    ledger: redis.Redis,
    name: str,
    task_id: str,
    model: str,
    timeout: float | None,
) -> TaskInfo:
    try:
        return client.wait(task_id, timeout=timeout, model=model)
    except (TaskFailedError, NotFoundError):
        ledger.delete(name)  # a retry of the Celery task should create a new one
        raise


def _read(ledger: redis.Redis, name: str) -> str | None:
    value = ledger.get(name)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _owner_gone(claim: str, stale_after: float) -> bool:
    """True when the run holding ``claim`` cannot still be creating."""
    try:
        _, host, pid_text, started, token = claim.split(" ")
        pid, since = int(pid_text), float(started)
    except ValueError:
        return True
    if host != _HOST:
        return time.time() - since > stale_after
    if pid == os.getpid():
        return token not in _current().creating
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# ------------------------------------------------------------------ plumbing


def _configured() -> _Settings:
    if _settings is None:
        raise ConfigurationError(
            "ruxa_async.integrations.celery.setup(app) was not called: call it in the module "
            "that creates your Celery app"
        )
    return _settings


def _current() -> _Process:
    global _process
    if _process.pid != os.getpid():
        _process = _Process()  # a forked child: the parent's client and sockets are not ours
    return _process


def _ledger() -> redis.Redis:
    process = _current()
    with process.lock:
        if process.ledger is None:
            process.ledger = redis.Redis.from_url(_ledger_url(), decode_responses=True)
        return process.ledger


def _ledger_url() -> str:
    settings = _configured()
    if settings.ledger_url:
        return settings.ledger_url
    conf = (settings.app or current_app).conf
    for url in (conf.result_backend, conf.broker_url):
        if isinstance(url, str) and url.startswith(("redis://", "rediss://", "unix://")):
            return url
    raise ConfigurationError(
        "generate_once() keeps its ledger in Redis: pass setup(app, ledger_url='redis://...') "
        "or use a Redis result backend or broker"
    )


def _celery_task_id() -> str:
    request = getattr(current_task, "request", None)
    task_id = getattr(request, "id", None)
    if not task_id:
        raise ConfigurationError("generate_once() outside a Celery task needs key=...")
    return str(task_id)


def _open() -> None:
    client = get_client()
    client.statistics()  # start the engine now, not inside the first task's create window
    log.debug("ruxa_async: %r ready in worker process %d", client, os.getpid())


def _on_worker_init(sender: Any = None, **_kwargs: Any) -> None:
    pool = getattr(sender, "pool_cls", None)
    if "prefork" in getattr(pool, "__module__", ""):
        return  # each child makes its own after the fork (worker_process_init)
    _open()


def _on_process_init(**_kwargs: Any) -> None:
    _open()


def _on_shutdown(**_kwargs: Any) -> None:
    close()


def close() -> None:
    """Close this process's client and ledger connection (the worker's signals do it for you)."""
    process = _current()
    with process.lock:
        client, process.client = process.client, None
        ledger, process.ledger = process.ledger, None
    if client is not None:
        client.close()
    if ledger is not None:
        ledger.close()
