"""RedisCoordinator: a fleet of processes sharing one account through one Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from datetime import datetime
from typing import Any

from .._coordinator import (
    Claim,
    Coordinator,
    CoordinatorStatistics,
    CreditBudgetExceededError,
    LocalCoordinator,
    Reservation,
)
from .._models import TaskInfo, TaskState
from .._tasks import stop
from . import _scripts
from ._outage import RedisOutage
from ._ratestate import RedisRateState
from ._store import Store

__all__ = ["RedisCoordinator"]

log = logging.getLogger("ruxa_async")

_CLAIM_STATUSES = {"owner", "created", "in_progress", "ambiguous"}


class RedisCoordinator(Coordinator):
    """Shares a Ruxa account's state between every process naming the same Redis and namespace.

    Pass it to ``RuxaClient(coordinator=...)`` in each worker::

        async with RuxaClient(coordinator=RedisCoordinator("redis://localhost:6379/0")) as c:
            info = await c.generate(model, input, idempotency_key=job_id)

    Shared: the rate budget (permits drawn from one bucket per endpoint class,
    leased in small blocks), the limits the fleet learned, the 429 gate (one
    process's 429 pauses all for ``Retry-After``), idempotency keys (the first
    claimer creates, the rest attach; keys live ``idempotency_ttl`` seconds),
    an optional credit budget (``max_credits`` per ``credit_window`` seconds,
    reserved at create time from the catalogue's price estimate) and callbacks
    (a callback received by any instance resolves the task in the process
    awaiting it). Every Redis call is bounded by ``timeout``; when Redis is
    unreachable the coordinator degrades to local-only limits and in-process
    idempotency (a WARNING, counted in ``statistics()``) and recovers by itself.
    Needs the ``redis`` extra (``pip install ruxa-async[redis]``).

    Outages are shared too (``outage``, see ``ruxa_async.redis._outage``): one
    process that cannot reach the service pauses all, one probe per fleet
    checks for its return, and the first reply anywhere resumes all.
    """

    rate_state: RedisRateState

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "ruxa",
        max_credits: float | None = None,
        credit_window: float = 86_400.0,
        idempotency_ttl: float = 86_400.0,
        timeout: float = 2.0,
        heartbeat: float = 1.0,
    ) -> None:
        super().__init__()
        if max_credits is not None and max_credits < 0:
            raise ValueError("max_credits must be >= 0 or None")
        if credit_window <= 0 or idempotency_ttl <= 0 or timeout <= 0 or heartbeat <= 0:
            raise ValueError("credit_window, idempotency_ttl, timeout and heartbeat must be > 0")
        self.namespace = namespace
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._store = Store(url, namespace=namespace, timeout=timeout)
        self._channel = self._store.key("events")
        self.rate_state = RedisRateState(self._store, channel=self._channel)
        self.rate_state.origin = self.instance
        self.outage = RedisOutage(self._store, channel=self._channel)
        self._max_credits = max_credits
        self._credit_window = credit_window
        self._ttl_ms = int(idempotency_ttl * 1000)
        self._heartbeat = heartbeat
        self._alive_ms = int(max(3.0, 3 * heartbeat) * 1000)
        self._claim = self._store.script(_scripts.CLAIM)
        self._take_over = self._store.script(_scripts.TAKE_OVER)
        self._reserve = self._store.script(_scripts.RESERVE)
        self._local = LocalCoordinator(max_credits=max_credits, credit_window=credit_window)
        self._claim_events: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self._outbox: list[tuple[str, TaskInfo]] = []  # callbacks waiting to be published
        self._publishing = False
        self._counts: dict[str, int] = dict.fromkeys(
            ("claims", "attached", "ambiguous", "published", "received"), 0
        )
        self._reserved = 0.0
        self._refunded = 0.0

    def __repr__(self) -> str:
        return f"<RedisCoordinator {self._store.shown_url} namespace={self.namespace!r}>"

    # -------------------------------------------------------------- lifecycle

    async def _open(self) -> None:
        await self._beat(probe=True)
        loop = asyncio.get_running_loop()
        self._subscribed.clear()
        self._tasks = [
            loop.create_task(self._heartbeat_loop(), name="ruxa_async redis heartbeat"),
            loop.create_task(self._listen_loop(), name="ruxa_async redis events"),
        ]
        if not self._store.degraded:  # hear the fleet from the start (callbacks, gates)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), self._store.timeout)

    async def _close(self) -> None:
        await stop(self._tasks)  # cancels again a loop whose cancellation a Redis call lost
        self._tasks = []
        await self.outage.aclose()
        await self.rate_state.retire(every=True)  # no plan of this process outlives it
        store = self._store
        await store.call(lambda: store.redis.delete(store.key("alive", self.instance)))
        await store.call(lambda: store.redis.zrem(store.key("members"), self.instance))
        await store.aclose()

    async def _beat(self, *, probe: bool = False) -> None:
        store = self._store
        members_key = store.key("members")

        async def op() -> Any:
            now = time.time()
            async with store.redis.pipeline(transaction=False) as pipe:
                pipe.set(store.key("alive", self.instance), "1", px=self._alive_ms)
                pipe.zadd(members_key, {self.instance: now})
                pipe.zremrangebyscore(members_key, "-inf", now - self._alive_ms / 1000)
                pipe.zcard(members_key)
                return await pipe.execute()

        replies = await store.call(op, probe=probe)
        if replies is not None:
            self.rate_state.members = max(1, int(replies[-1]))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            await self._beat(probe=True)
            await self.rate_state.retire()  # blocks whose lease ran out unspent

    async def _listen_loop(self) -> None:
        store = self._store
        while True:
            pubsub = store.redis.pubsub()
            try:
                await asyncio.wait_for(pubsub.subscribe(self._channel), store.timeout)
                self.rate_state.invalidate()  # what was written while not listening
                self._subscribed.set()
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=store.timeout
                    )
                    if message is not None:
                        self._on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any connection trouble: degrade, resubscribe later
                store.failed(exc)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), store.timeout)  # type: ignore[no-untyped-call]
            await asyncio.sleep(0.25)

    def _on_message(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        kind, _, rest = text.partition("|")
        try:
            if kind == "gate":
                scope, _, rest = rest.partition("|")
                origin, _, seconds = rest.rpartition("|")  # "scope|origin|seconds"
                self.rate_state.on_gate(scope, float(seconds), origin)
            elif kind == "outage":
                self.outage.on_message(rest)
            elif kind == "learned":
                self.rate_state.invalidate(rest)
            elif kind == "claim":
                event = self._claim_events.pop(rest, None)
                if event is not None:
                    event.set()
            elif kind == "callback":
                info = _decode_info(rest)
                self._counts["received"] += 1
                self._deliver_callback(info)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed fleet message (%s)", exc)

    # ------------------------------------------------------------ idempotency

    def _claim_key(self, key: str) -> str:
        return self._store.key("idem", key)

    async def claim(self, key: str) -> Claim:
        """See :meth:`Coordinator.claim`."""
        self._counts["claims"] += 1
        store = self._store
        reply = await store.call(
            lambda: self._claim(
                keys=[self._claim_key(key)],
                args=[self.instance, self._ttl_ms, store.key("alive", "")],
            )
        )
        if reply is None:
            return await self._local.claim(key)
        status, detail = (part.decode() if isinstance(part, bytes) else part for part in reply)
        if status not in _CLAIM_STATUSES:
            raise ValueError(f"unexpected claim status {status!r}")
        if status == "created":
            self._counts["attached"] += 1
            return Claim(status="created", task_id=detail)
        if status == "ambiguous":
            self._counts["ambiguous"] += 1
        return Claim(status=status)  # type: ignore[arg-type]

    async def mark_sending(self, key: str) -> None:
        """See :meth:`Coordinator.mark_sending`."""
        await self._local.mark_sending(key)
        value = f"sending|{self.instance}"
        await self._store.call(
            lambda: self._store.redis.set(self._claim_key(key), value, px=self._ttl_ms, xx=True)
        )

    async def mark_created(self, key: str, task_id: str) -> None:
        """See :meth:`Coordinator.mark_created`."""
        await self._local.mark_created(key, task_id)
        await self._set_claim(key, f"created|{task_id}")

    async def release(self, key: str, *, ambiguous: bool) -> None:
        """See :meth:`Coordinator.release`."""
        await self._local.release(key, ambiguous=ambiguous)
        await self._set_claim(key, f"ambiguous|{self.instance}" if ambiguous else None)

    async def _set_claim(self, key: str, value: str | None) -> None:
        store = self._store

        async def op() -> None:
            async with store.redis.pipeline(transaction=False) as pipe:
                if value is None:
                    pipe.delete(self._claim_key(key))
                else:
                    pipe.set(self._claim_key(key), value, px=self._ttl_ms)
                pipe.publish(self._channel, f"claim|{key}")
                await pipe.execute()

        await store.call(op)

    async def take_over(self, key: str) -> bool:
        """See :meth:`Coordinator.take_over`."""
        reply = await self._store.call(
            lambda: self._take_over(keys=[self._claim_key(key)], args=[self.instance, self._ttl_ms])
        )
        if reply is None:
            return await self._local.take_over(key)
        return bool(int(reply))

    async def wait_claim(self, key: str, timeout: float) -> None:
        """See :meth:`Coordinator.wait_claim` (woken by the creator's pub/sub message)."""
        event = self._claim_events.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            self._claim_events.pop(key, None)

    # ---------------------------------------------------------------- credits

    async def reserve_credits(self, amount: float) -> Reservation | None:
        """See :meth:`Coordinator.reserve_credits` (atomic across the fleet)."""
        if self._max_credits is None:
            return None
        store = self._store
        reply = await store.call(
            lambda: self._reserve(
                args=[
                    store.key("credits", ""),
                    f"{amount:.6f}",
                    f"{self._max_credits:.6f}",
                    self._credit_window,
                    -1,
                ]
            )
        )
        if reply is None:
            local = await self._local.reserve_credits(amount)
            self._reserved += amount
            return Reservation(where="local:" + local.where, amount=amount) if local else None
        ok, detail = int(reply[0]), reply[1]
        if not ok:
            raise CreditBudgetExceededError(amount, float(detail), self._max_credits)
        self._reserved += amount
        window_key = detail.decode() if isinstance(detail, bytes) else str(detail)
        return Reservation(where=window_key, amount=amount)

    async def refund_credits(self, reservation: Reservation) -> None:
        """See :meth:`Coordinator.refund_credits`."""
        self._refunded += reservation.amount
        where = reservation.where
        if where.startswith("local:"):
            local = Reservation(where=where[len("local:") :], amount=reservation.amount)
            await self._local.refund_credits(local)
            return
        await self._store.call(lambda: self._store.redis.incrbyfloat(where, -reservation.amount))

    # -------------------------------------------------------------- callbacks

    async def publish_callback(self, info: TaskInfo) -> None:
        """See :meth:`Coordinator.publish_callback`: to every process through Redis.

        Callbacks arriving together go out in one pipeline on one connection
        (a burst of callbacks does not open a connection each).
        """
        self._outbox.append(("callback|" + _encode_info(info), info))
        if self._publishing:
            return  # the running publisher sends it with its next batch
        self._publishing = True
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                sent = await self._store.call(lambda: self._publish(batch))  # noqa: B023
                if sent is None:  # Redis is down: at least this process's clients
                    for _, lost in batch:
                        self._deliver_callback(lost)
                else:
                    self._counts["published"] += len(batch)
        finally:
            self._publishing = False

    async def _publish(self, batch: list[tuple[str, TaskInfo]]) -> bool:
        async with self._store.redis.pipeline(transaction=False) as pipe:
            for message, _ in batch:
                pipe.publish(self._channel, message)
            await pipe.execute()
        return True

    # ------------------------------------------------------------- statistics

    def statistics(self) -> CoordinatorStatistics:
        """See :meth:`Coordinator.statistics`."""
        state = self.rate_state
        store = self._store
        return CoordinatorStatistics(
            backend="redis",
            shared=True,
            create_rate=_rate(state, "create"),
            query_rate=_rate(state, "query"),
            fleet_rate_limited=state.gates_closed,
            fleet_pauses=state.remote_pauses,
            leases=state.leases,
            leased_tokens=state.leased_tokens,
            members=state.members,
            degraded=store.degraded,
            degraded_seconds=store.degraded_seconds(),
            degraded_events=store.degraded_events,
            store_errors=store.errors,
            claims=self._counts["claims"],
            attached=self._counts["attached"],
            ambiguous_claims=self._counts["ambiguous"],
            credits_reserved=self._reserved,
            credits_refunded=self._refunded,
            callbacks_published=self._counts["published"],
            callbacks_received=self._counts["received"],
        )


def _rate(state: RedisRateState, kind: str) -> float | None:
    cached = state._learned.get(kind)  # type: ignore[call-overload]
    if cached is None or cached[1] is None:
        return None
    return float(cached[1].rate)


def _encode_info(info: TaskInfo) -> str:
    def stamp(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return json.dumps(
        {
            "task_id": info.task_id,
            "state": info.state.value,
            "raw_state": info.raw_state,
            "result_urls": list(info.result_urls),
            "fail_code": info.fail_code,
            "fail_msg": info.fail_msg,
            "model": info.model,
            "create_time": stamp(info.create_time),
            "update_time": stamp(info.update_time),
            "complete_time": stamp(info.complete_time),
            "result": dict(info.result),
        }
    )


def _decode_info(text: str) -> TaskInfo:
    data = json.loads(text)

    def stamp(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return TaskInfo(
        task_id=str(data["task_id"]),
        state=TaskState(data["state"]),
        raw_state=str(data.get("raw_state") or ""),
        result_urls=tuple(data.get("result_urls") or ()),
        fail_code=data.get("fail_code"),
        fail_msg=data.get("fail_msg"),
        model=data.get("model"),
        create_time=stamp(data.get("create_time")),
        update_time=stamp(data.get("update_time")),
        complete_time=stamp(data.get("complete_time")),
        result=data.get("result") or {},
    )
