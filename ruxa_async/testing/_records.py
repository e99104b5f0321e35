"""The server-side task record, and how a task is described on the wire.

A task's state is never stored: it follows from the clock. A task created at
``created_at`` that ends at ``completes_at`` is ``waiting`` for the first 10% of
its duration, ``queuing`` until 25%, then ``generating``, then ``success`` or
``fail``. No timer or coroutine exists per task.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from functools import lru_cache
from typing import Any

from ._config import ModelBehavior
from ._rules import model_kind

__all__ = ["TaskRecord"]

WAITING, QUEUING, GENERATING, DONE = 0, 1, 2, 3
_PENDING_WORDS = ("waiting", "queuing", "generating")
_WAITING_SHARE = 0.10
_QUEUING_SHARE = 0.25


class TaskRecord:
    """A read-only view of one simulated task, as the server keeps it.

    Times are ``time.monotonic()`` readings of the server process (system-wide
    on Linux, so another process can compare them with its own).
    """

    __slots__ = (
        "_behavior",
        "_callback_url",
        "_callbacks_delivered",
        "_completes_at",
        "_cost",
        "_created_at",
        "_first_terminal_served_at",
        "_model",
        "_outcome",
        "_param",
        "_query_count",
        "_task_id",
    )

    def __init__(
        self,
        *,
        task_id: str,
        model: str,
        param: str,
        callback_url: str | None,
        created_at: float,
        completes_at: float,
        outcome: str,
        behavior: ModelBehavior,
        cost: float,
    ) -> None:
        self._task_id = task_id
        self._model = model
        self._param = param
        self._callback_url = callback_url
        self._created_at = created_at
        self._completes_at = completes_at
        self._outcome = outcome
        self._behavior = behavior
        self._cost = cost
        self._first_terminal_served_at: float | None = None
        self._query_count = 0
        self._callbacks_delivered = 0

    @property
    def task_id(self) -> str:
        """The id handed to the client."""
        return self._task_id

    @property
    def model(self) -> str:
        """The requested ``model``."""
        return self._model

    @property
    def param(self) -> str:
        """The original request as a JSON string (the wire's ``param`` field)."""
        return self._param

    @property
    def input(self) -> dict[str, Any]:
        """The request's ``input`` object (decoded from :attr:`param` on each access)."""
        value = json.loads(self._param).get("input")
        return value if isinstance(value, dict) else {}

    @property
    def callback_url(self) -> str | None:
        """The request's ``callBackUrl``, if any."""
        return self._callback_url

    @property
    def created_at(self) -> float:
        """Monotonic time the create request was accepted."""
        return self._created_at

    @property
    def duration(self) -> float:
        """Drawn generation time in seconds."""
        return self._completes_at - self._created_at

    @property
    def completes_at(self) -> float:
        """Monotonic ground-truth time the task reaches its terminal state."""
        return self._completes_at

    @property
    def outcome(self) -> str:
        """``"success"`` or ``"fail"``: how the task ends (decided at creation)."""
        return self._outcome

    @property
    def cost(self) -> float:
        """Credits charged for the task."""
        return self._cost

    @property
    def first_terminal_served_at(self) -> float | None:
        """Monotonic time a query reply first revealed the terminal state, or None."""
        return self._first_terminal_served_at

    @property
    def query_count(self) -> int:
        """Query requests answered for this task."""
        return self._query_count

    @property
    def callbacks_delivered(self) -> int:
        """Callback POSTs for this task that got a 2xx reply."""
        return self._callbacks_delivered

    def state_at(self, now: float) -> str:
        """The canonical state word (``success``, not a dialect's) at monotonic time ``now``."""
        phase = phase_at(self, now)
        return self._outcome if phase == DONE else _PENDING_WORDS[phase]

    def to_dict(self) -> dict[str, Any]:
        """The timing record served by ``GET /_sim/tasks``."""
        return {
            "task_id": self._task_id,
            "model": self._model,
            "created_at": self._created_at,
            "completes_at": self._completes_at,
            "first_terminal_served_at": self._first_terminal_served_at,
            "query_count": self._query_count,
            "outcome": self._outcome,
            "callbacks_delivered": self._callbacks_delivered,
        }

    def __repr__(self) -> str:
        return (
            f"TaskRecord(task_id={self._task_id!r}, model={self._model!r}, "
            f"outcome={self._outcome!r})"
        )


def phase_at(record: TaskRecord, now: float) -> int:
    """WAITING, QUEUING, GENERATING or DONE at monotonic time ``now``."""
    end = record._completes_at
    if now >= end:
        return DONE
    start = record._created_at
    elapsed = now - start
    span = end - start
    if elapsed < _WAITING_SHARE * span:
        return WAITING
    if elapsed < _QUEUING_SHARE * span:
        return QUEUING
    return GENERATING


def note_query(record: TaskRecord, now: float, phase: int) -> None:
    """Count a query reply, and stamp the first one that reveals the end."""
    record._query_count += 1
    if phase == DONE and record._first_terminal_served_at is None:
        record._first_terminal_served_at = now


def note_callback(record: TaskRecord) -> None:
    """Count a callback POST answered with 2xx."""
    record._callbacks_delivered += 1


_SLUG_JUNK = re.compile(r"[^a-z0-9.-]+")


@lru_cache(maxsize=256)
def upstream_name(model: str) -> str:
    """The internal model name in task ids: ``gemini-2.5-flash-image`` for nano-banana models."""
    lowered = model.lower()
    if "nano-banana" in lowered:
        return "gemini-2.5-flash-image"
    if lowered.startswith("sora"):
        return "sora-2"
    return _SLUG_JUNK.sub("-", lowered).strip("-") or "model"


@lru_cache(maxsize=256)
def file_extension(model: str) -> str:
    """``mp4`` for the documented video models, ``png`` otherwise."""
    return "mp4" if model_kind(model) == "video" else "png"


def result_urls(record: TaskRecord, base_url: str) -> list[str]:
    """The result file URLs of a successful task; they point back at the simulator."""
    ext = file_extension(record._model)
    prefix = f"{base_url}/files/{record._task_id}/"
    return [f"{prefix}{i}.{ext}" for i in range(record._behavior.outputs)]


def _ms(monotonic: float, epoch_offset: float) -> int:
    return int((monotonic + epoch_offset) * 1000)


def task_data(
    record: TaskRecord,
    phase: int,
    *,
    base_url: str,
    epoch_offset: float,
    success_word: str,
    result_as_object: bool,
) -> dict[str, Any]:
    """The task object (query ``data``, kie callback ``data``) in ``phase``."""
    start = record._created_at
    end = record._completes_at
    fail_code = fail_msg = ""
    result: Any = ""
    complete_time: int | None = None
    cost_time: int | None = None
    if phase == DONE:
        updated = end
        complete_time = _ms(end, epoch_offset)
        cost_time = int((end - start) * 1000)
        if record._outcome == "success":
            state = success_word
            urls = result_urls(record, base_url)
            if result_as_object:
                result = {"resultUrls": urls}
            else:
                result = '{"resultUrls":[' + ",".join(f'"{u}"' for u in urls) + "]}"
        else:
            state = "fail"
            fail_code = record._behavior.fail_code
            fail_msg = record._behavior.fail_msg
    else:
        state = _PENDING_WORDS[phase]
        share = (0.0, _WAITING_SHARE, _QUEUING_SHARE)[phase]
        updated = start + share * (end - start)
    return {
        "taskId": record._task_id,
        "model": record._model,
        "state": state,
        "param": record._param,
        "resultJson": result,
        "failCode": fail_code,
        "failMsg": fail_msg,
        "costTime": cost_time,
        "createTime": _ms(start, epoch_offset),
        "updateTime": _ms(updated, epoch_offset),
        "completeTime": complete_time,
    }


def callback_body(
    record: TaskRecord,
    *,
    style: str,
    message_field: str,
    balance: float | None,
    base_url: str,
    epoch_offset: float,
    success_word: str,
    result_as_object: bool,
) -> dict[str, Any]:
    """The completion callback: kie's ``{code: 200|501, msg, data: task}`` or the flat shape."""
    data = task_data(
        record,
        DONE,
        base_url=base_url,
        epoch_offset=epoch_offset,
        success_word=success_word,
        result_as_object=result_as_object,
    )
    success = record._outcome == "success"
    if style == "flat":
        return {
            "taskId": record._task_id,
            "state": data["state"],
            "resultUrls": result_urls(record, base_url) if success else [],
            "failMsg": data["failMsg"],
        }
    data["consumeCredits"] = record._cost
    data["remainedCredits"] = balance
    text = "Task completed successfully." if success else "Task failed."
    return {"code": 200 if success else 501, message_field: text, "data": data}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@lru_cache(maxsize=16)
def file_bytes(ext: str, size: int) -> bytes:
    """A valid ``size``-byte file: a 1x1 PNG or an empty MP4 box stream, padded."""
    if ext == "mp4":
        ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isommp41"
        free = max(size - len(ftyp), 8)
        return ftyp + struct.pack(">I", free) + b"free" + bytes(free - 8)
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    head += _png_chunk(b"IDAT", zlib.compress(b"\x00\x5a\x2e\xb8"))
    tail = _png_chunk(b"IEND", b"")
    pad = size - len(head) - len(tail) - 12
    if pad >= 0:
        head += _png_chunk(b"ruXa", bytes(pad))
    return head + tail
