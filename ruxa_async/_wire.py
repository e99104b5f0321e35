"""The only module that knows Ruxa's JSON field names and dialects.

Everything here is pure: bytes and dicts in, typed objects or SDK errors out.
It tolerates every variant the reference leaves open: errors signalled by HTTP
status or by the envelope ``code``, ``message`` or ``msg``, ``success`` or
``completed``, ``resultJson`` as a string, an object, ``""`` or ``null``, and the
kie-style or flat callback payloads.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from ._errors import InvalidInputError, MalformedResponseError, status_error
from ._jsoncodec import json_encoder, json_loads
from ._models import TaskInfo, TaskState
from ._ratehints import parse_retry_after

__all__ = [
    "CREATE_PATH",
    "QUERY_PATH",
    "build_create_body",
    "parse_callback",
    "parse_envelope",
    "parse_reply",
    "parse_retry_after",
    "parse_task",
    "parse_task_id",
    "query_path",
    "task_state",
]

CREATE_PATH = "/api/v1/tasks/create"
QUERY_PATH = "/api/v1/tasks/query/"

_SUCCESS_CODE = 200
_dumps = json_encoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def query_path(task_id: str) -> str:
    """The query endpoint's path for one task id (the id is a path segment)."""
    return QUERY_PATH + quote(task_id, safe="")


def build_create_body(
    model: str, input: Mapping[str, Any], callback_url: str | None = None
) -> bytes:
    """Encode a create-task request body: top-level ``model``, ``callBackUrl``, ``input``.

    Raises :class:`InvalidInputError` when ``input`` cannot be sent as JSON
    (bytes, NaN, a lone surrogate, ...): nothing is sent then.
    """
    if type(model) is str and (callback_url is None or type(callback_url) is str):
        try:
            head = _create_head(model, callback_url)
            return b"%s%s}" % (head, _dumps(input if type(input) is dict else dict(input)).encode())
        except (TypeError, ValueError, RecursionError):
            pass  # the whole body's encoding below says what is wrong, as it always has
    body: dict[str, Any] = {"model": model}
    if callback_url is not None:
        body["callBackUrl"] = callback_url
    body["input"] = input if type(input) is dict else dict(input)
    try:
        return _dumps(body).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInputError(
            f"{model}: input cannot be sent as JSON ({exc})", model=model, field="input"
        ) from None


@functools.lru_cache(maxsize=256)
def _create_head(model: str, callback_url: str | None) -> bytes:
    """A create body's bytes before its input: what ``_dumps`` writes of the object up to
    there (the encoder writes a member's value alike wherever it stands)."""
    url = b"" if callback_url is None else b',"callBackUrl":%s' % _dumps(callback_url).encode()
    return b'{"model":%s%s,"input":' % (_dumps(model).encode(), url)


def _decode_json(body: bytes | str) -> Any:
    try:
        return json_loads(body) if isinstance(body, bytes) else json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _excerpt(body: bytes) -> str:
    return body[:500].decode("utf-8", "replace")


# The service's usual answer to a create, compact, with ``message`` (the reference's
# example) or ``msg`` (kie's), around its task id: read without decoding it.
_CREATED_HEADS = (
    b'{"code":200,"message":"success","data":{"taskId":"',
    b'{"code":200,"msg":"success","data":{"taskId":"',
)
_CREATED_TAIL = b'"}}'
# The bytes a JSON string holds as themselves: printable ASCII but the quote and backslash.
_PLAIN = bytes(range(0x20, 0x7F)).replace(b'"', b"").replace(b"\\", b"")


def parse_reply(http_status: int, body: bytes, retry_after: str | None = None) -> Any:
    """Return the envelope's ``data`` for a successful reply, or raise the matching error.

    Success means envelope ``code`` 200 on a 2xx reply. An error code in the
    envelope and an error HTTP status are treated alike; the envelope's code wins
    when both are present. A reply that is neither is a
    :class:`MalformedResponseError`.
    """
    if http_status == 200 and body.endswith(_CREATED_TAIL):
        # a create's usual answer: its id is plain text, or the whole reply is decoded
        for head in _CREATED_HEADS:
            if body.startswith(head) and len(body) > len(head) + len(_CREATED_TAIL):
                task_id = body[len(head) : -len(_CREATED_TAIL)]
                if not task_id.translate(None, _PLAIN):
                    return {"taskId": task_id.decode("ascii")}
                break
    return parse_envelope(http_status, body, retry_after)


def parse_envelope(http_status: int, body: bytes, retry_after: str | None = None) -> Any:
    """:func:`parse_reply` of any reply, the whole envelope decoded (no shortcut)."""
    obj = _decode_json(body) if body else None
    envelope = obj if isinstance(obj, dict) and "code" in obj else None
    http_ok = 200 <= http_status < 300
    if envelope is not None:
        code = _as_int(envelope.get("code"))
        message = _text(envelope.get("message", envelope.get("msg")))
        if code == _SUCCESS_CODE and http_ok:
            return envelope.get("data")
        if code is not None and code != _SUCCESS_CODE:
            raise status_error(
                code,
                message,
                http_status=http_status,
                body=_excerpt(body),
                retry_after=parse_retry_after(retry_after),
            )
    if not http_ok:
        message = ""
        if isinstance(obj, dict):
            message = _text(obj.get("message", obj.get("msg", obj.get("error", ""))))
        raise status_error(
            None,
            message,
            http_status=http_status,
            body=_excerpt(body),
            retry_after=parse_retry_after(retry_after),
        )
    raise MalformedResponseError(
        "the reply is not a Ruxa JSON envelope {code, message, data}",
        http_status=http_status,
        body=_excerpt(body),
    )


def parse_task_id(data: Any) -> str:
    """Read the task id from a create reply's ``data``."""
    if type(data) is dict or isinstance(data, Mapping):
        task_id = data.get("taskId", data.get("task_id"))
        if isinstance(task_id, str) and task_id:
            return task_id
    raise MalformedResponseError("the create reply has no data.taskId")


def _timestamp(value: object) -> datetime | None:
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str) and value.strip():
        try:
            number = float(value)
        except (ValueError, OverflowError):
            try:
                parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                return None
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    if number is None or math.isnan(number) or math.isinf(number) or number <= 0:
        return None
    if number > 1e11:  # milliseconds, as in kie's task records
        number /= 1000.0
    try:
        return datetime.fromtimestamp(number, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _result_object(data: Mapping[str, Any]) -> dict[str, Any]:
    raw = data.get("resultJson")
    if isinstance(raw, str):
        raw = _decode_json(raw) if raw.strip() else None
    result = dict(raw) if isinstance(raw, Mapping) else {}
    if "resultUrls" not in result and "resultUrls" in data:
        result["resultUrls"] = data["resultUrls"]
    return result


def _urls(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, (list, tuple)):
        return tuple(u for u in value if isinstance(u, str) and u)
    return ()


def _optional_text(value: object) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text or None


def task_state(data: Any) -> TaskState:
    """The state of a task object, without parsing the rest (a pass-through's cheap check).

    Raises :class:`MalformedResponseError` when ``data`` is not an object, as
    :func:`parse_task` does.
    """
    if not isinstance(data, Mapping):
        raise MalformedResponseError("the task reply has no data object")
    return TaskState.parse(data.get("state", data.get("status")))


def parse_task(data: Any, *, task_id: str | None = None) -> TaskInfo:
    """Build a :class:`TaskInfo` from a task object (query ``data`` or callback ``data``).

    ``task_id`` fills in the id when the object lacks one (the query path knows it).
    """
    if not isinstance(data, Mapping):
        raise MalformedResponseError("the task reply has no data object")
    found = data.get("taskId", data.get("task_id"))
    tid = found if isinstance(found, str) and found else task_id
    if not tid:
        raise MalformedResponseError("the task object has no taskId")
    raw_state = data.get("state", data.get("status"))
    state = TaskState.parse(raw_state)
    result = _result_object(data)
    fail_code = _optional_text(data.get("failCode"))
    fail_msg = _optional_text(data.get("failMsg", data.get("errorMessage")))
    return TaskInfo(
        task_id=tid,
        state=state,
        raw_state=raw_state if isinstance(raw_state, str) else _text(raw_state),
        result_urls=_urls(result.get("resultUrls")),
        fail_code=fail_code,
        fail_msg=fail_msg,
        model=_optional_text(data.get("model")),
        create_time=_timestamp(data.get("createTime")),
        update_time=_timestamp(data.get("updateTime")),
        complete_time=_timestamp(data.get("completeTime")),
        result=result,
        raw=data,
    )


def parse_callback(body: bytes | str | Mapping[str, Any]) -> TaskInfo:
    """Parse a callback body: the kie-style envelope ``{code, msg, data}`` or a flat object."""
    obj = body if isinstance(body, Mapping) else _decode_json(body)
    if not isinstance(obj, Mapping):
        raise MalformedResponseError("the callback body is not a JSON object")
    inner = obj.get("data")
    if isinstance(inner, Mapping) and ("taskId" in inner or "task_id" in inner):
        return parse_task(inner)
    if "taskId" in obj or "task_id" in obj:
        return parse_task(obj)
    raise MalformedResponseError("the callback body names no taskId")
