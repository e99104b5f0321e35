"""The background engine of the blocking client: one RuxaClient, one loop, one thread.

An :class:`Engine` starts an event loop in a daemon thread with anyio's
blocking portal and builds one :class:`RuxaClient` inside it. Every blocking
call of every thread goes through :meth:`Engine.call`, so all of them share one
scheduler, one rate controller and one connection pool; nothing but the
engine's own thread ever touches the client.

Lifecycles handled here rather than by the caller:

* **Exit without close.** The thread is a daemon, and a ``weakref.finalize``
  (which also runs at interpreter exit) closes an engine its owner forgot,
  inside its own loop, with bounded waits: no "Event loop is closed", no hang.
* **Fork.** A child process inherits the parent's engine as dead memory (its
  thread does not exist there). :func:`disown_in_child` makes that copy inert
  (never finalized, never waited for) so the owner can start a fresh engine.

:class:`EngineSlot` is what a blocking client holds: its engine in this
process, started at the first call, replaced after a fork, closed for it (with
a ``ResourceWarning``) when it is forgotten.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._client import RuxaClient
from ._errors import APITimeoutError, ClientClosedError

__all__ = ["Engine", "EngineSlot", "disown_in_child", "ensure_not_in_event_loop"]

log = logging.getLogger("ruxa_async")

T = TypeVar("T")

# Engines inherited through fork() stay referenced here for the child's whole life:
# finalizing a copy of another process's running loop and session would only make noise.
_ORPHANS: list[Engine] = []

CLOSE_TIMEOUT = 10.0


def ensure_not_in_event_loop(what: str) -> None:
    """Raise a clear error when a blocking call is made from a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"SyncRuxaClient.{what}() blocks, and it was called from a running event loop: "
        "in async code use ruxa_async.RuxaClient and `await` its methods instead"
    )


class Engine:
    """One :class:`RuxaClient` running on an event loop in a daemon thread."""

    def __init__(self, factory: Callable[[], RuxaClient]) -> None:
        self._cm = start_blocking_portal(name="ruxa_async engine")
        self.portal: BlockingPortal = self._cm.__enter__()
        self.closed = False
        self._in_flight: set[concurrent.futures.Future[Any]] = set()
        try:
            self.client, self.loop, self.thread = self.portal.call(self._open, factory)
        except BaseException as exc:
            self.closed = True
            self._cm.__exit__(type(exc), exc, exc.__traceback__)
            raise

    @staticmethod
    async def _open(
        factory: Callable[[], RuxaClient],
    ) -> tuple[RuxaClient, asyncio.AbstractEventLoop, threading.Thread]:
        client = factory()
        await client.start()
        return client, asyncio.get_running_loop(), threading.current_thread()

    # ----------------------------------------------------------------- calls

    def call(
        self,
        func: Callable[..., Awaitable[T]],
        *args: Any,
        timeout: float | None,
        what: str = "the call",
        timeout_error: Callable[[], Exception] | None = None,
    ) -> T:
        """Await ``func(*args)`` in the engine's loop and block for its result.

        ``timeout`` bounds the wait (None: no bound); when it passes, the call
        is cancelled in the loop and ``timeout_error()`` (default:
        :class:`APITimeoutError`) is raised. An interrupt (Ctrl-C) cancels the
        call too.
        """
        ensure_not_in_event_loop(what)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._hand_over(future, _run_into, future, func, args)
        return _outcome(future, timeout, what, timeout_error, self._in_flight)

    def call_sync(self, func: Callable[..., T], *args: Any, timeout: float, what: str) -> T:
        """Run the plain function ``func(*args)`` on the engine's thread; its result."""
        ensure_not_in_event_loop(what)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._hand_over(future, _call_into, future, func, args)
        return _outcome(future, timeout, what, None, self._in_flight)

    def _hand_over(
        self, future: concurrent.futures.Future[Any], callback: Callable[..., None], *args: Any
    ) -> None:
        # The portal owns the loop and the thread; the per-call hop is one
        # call_soon_threadsafe, a quarter of the cost of portal.call (two hops).
        if self.closed:
            raise ClientClosedError("the SyncRuxaClient was closed; create a new one")
        self._in_flight.add(future)
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed
            self._in_flight.discard(future)
            raise ClientClosedError("the SyncRuxaClient was closed; create a new one") from None

    def spawn(self, func: Callable[[], Awaitable[object]]) -> None:
        """Start ``func()`` in the loop without waiting for it (from any thread)."""
        if self.closed:
            return
        if threading.current_thread() is self.thread:
            self.loop.create_task(_quietly(func))
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing left to clean
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(_quietly(func)))

    # ------------------------------------------------------------- shutdown

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the client in its loop, stop the loop, join the thread (each bounded)."""
        if self.closed:
            return
        self.closed = True
        if threading.current_thread() is self.thread:
            # A finalizer running on the engine's own thread cannot wait for it.
            threading.Thread(target=self._shutdown, args=(timeout,), daemon=True).start()
            return
        self._shutdown(timeout)

    def _shutdown(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with contextlib.suppress(RuntimeError):
            future = self.portal.start_task_soon(self.client.aclose)
            try:
                future.result(timeout)
            except concurrent.futures.TimeoutError:
                log.warning("closing the ruxa_async engine took over %s s; stopping it", timeout)
            except Exception:
                log.exception("closing the ruxa_async client failed")
        with contextlib.suppress(RuntimeError, concurrent.futures.TimeoutError):
            # cancel_remaining: calls still running get cancelled instead of awaited
            self.portal.start_task_soon(self.portal.stop, True).result(
                max(0.1, deadline - time.monotonic())
            )
        self.thread.join(max(0.1, deadline - time.monotonic()))
        if self.thread.is_alive():
            log.warning("the ruxa_async engine thread did not stop; leaving it (a daemon)")
            _ORPHANS.append(self)
        else:
            self._cm.__exit__(None, None, None)
        for future in list(self._in_flight):  # handed over too late to ever run
            if not future.cancel():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(ClientClosedError("the SyncRuxaClient was closed"))


def _call_into(future: concurrent.futures.Future[T], func: Callable[..., T], args: Any) -> None:
    """On the loop: run a plain function into ``future``."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = func(*args)
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _run_into(
    future: concurrent.futures.Future[T], func: Callable[..., Awaitable[T]], args: Any
) -> None:
    """On the loop: start a task awaiting ``func(*args)``; chain it both ways with ``future``."""
    if future.cancelled():
        return
    try:
        task = asyncio.ensure_future(func(*args))
    except BaseException as exc:
        if future.set_running_or_notify_cancel():
            future.set_exception(exc)
        return
    loop = task.get_loop()

    def cancel_task(f: concurrent.futures.Future[T]) -> None:
        if f.cancelled() and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)

    def settle(t: asyncio.Future[T]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        if t.cancelled():
            future.set_exception(concurrent.futures.CancelledError())
        elif (exc := t.exception()) is not None:
            future.set_exception(exc)
        else:
            future.set_result(t.result())

    future.add_done_callback(cancel_task)
    task.add_done_callback(settle)


def _outcome(
    future: concurrent.futures.Future[T],
    timeout: float | None,
    what: str,
    timeout_error: Callable[[], Exception] | None,
    in_flight: set[concurrent.futures.Future[Any]],
) -> T:
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        if future.done() and not future.cancelled():
            return future.result()  # the function's own TimeoutError, or a late result
        future.cancel()
        if timeout_error is not None:
            raise timeout_error() from None
        raise APITimeoutError(f"{what} did not finish within {timeout} s") from None
    except concurrent.futures.CancelledError:
        raise ClientClosedError(
            "the SyncRuxaClient was closed while this call was running"
        ) from None
    except BaseException:
        future.cancel()
        raise
    finally:
        in_flight.discard(future)


async def _quietly(func: Callable[[], Awaitable[object]]) -> None:
    try:
        await func()
    except Exception:
        log.exception("background cleanup in the ruxa_async engine failed")


def disown_in_child(engine: Engine) -> None:
    """In a forked child: make the parent's engine inert and keep it from ever being finalized.

    Its thread does not exist in the child, so its portal must never be waited on;
    marking the portal stopped makes anyio's own exit path skip the wait.
    """
    engine.closed = True
    if hasattr(engine.portal, "_event_loop_thread_id"):
        engine.portal._event_loop_thread_id = None
    _ORPHANS.append(engine)


class EngineSlot:
    """The engine of one blocking client in this process; ``factory`` builds its client.

    :meth:`engine` starts it at the first call. After ``fork()`` the child's
    first call starts a fresh one (the parent's keeps working). One never
    closed is closed when the slot is collected or at exit, with a
    ``ResourceWarning``.
    """

    def __init__(self, factory: Callable[[], RuxaClient]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._pid = os.getpid()
        self.closed = False
        _LIVE.add(self)

    @property
    def state(self) -> str:
        """``"new"``, ``"running"`` or ``"closed"``."""
        return "closed" if self.closed else ("running" if self._engine else "new")

    def engine(self, what: str) -> Engine:
        """The running engine, started if needed; ``what`` names the blocking call."""
        ensure_not_in_event_loop(what)
        if self._pid != os.getpid():
            self.after_fork()  # a fork the at-fork hook did not see
        engine = self._engine
        if engine is not None and not engine.closed:
            return engine
        with self._lock:
            if self.closed:
                raise ClientClosedError("this SyncRuxaClient was closed; create a new one")
            if self._engine is None:
                engine = Engine(self._factory)
                self._finalizer = weakref.finalize(self, _forgotten, engine)
                self._engine = engine
            return self._engine

    def close(self) -> None:
        """Close the engine (if this process started one); the slot stays closed."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            engine, self._engine = self._engine, None
            if self._finalizer is not None:
                self._finalizer.detach()
        if engine is not None and self._pid == os.getpid():
            engine.close()

    def after_fork(self) -> None:
        """In a forked child: drop the parent's engine; the next call starts our own."""
        self._lock = threading.Lock()  # the parent may have held it while forking
        self._pid = os.getpid()
        engine, self._engine = self._engine, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if engine is not None:
            disown_in_child(engine)


_LIVE: weakref.WeakSet[EngineSlot] = weakref.WeakSet()


def _forgotten(engine: Engine) -> None:
    """A client was garbage-collected, or the interpreter is exiting, without ``close()``."""
    if engine.closed:
        return
    engine.close()
    warnings.warn(
        "a SyncRuxaClient was never closed; call client.close() or use `with SyncRuxaClient()`",
        ResourceWarning,
        stacklevel=1,
    )


def _after_fork_in_child() -> None:
    for slot in list(_LIVE):
        slot.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
