"""The wire parser: envelopes, error signalling dialects, task objects, callbacks."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ruxa_async import (
    APIStatusError,
    AuthenticationError,
    InsufficientCreditsError,
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    RuxaError,
    ServerError,
    TaskState,
    ValidationError,
)
from ruxa_async._wire import (
    build_create_body,
    parse_callback,
    parse_reply,
    parse_retry_after,
    parse_task,
    parse_task_id,
    query_path,
)


def envelope(code: int, data: object = None, *, field: str = "message", text: str = "x") -> bytes:
    return json.dumps({"code": code, field: text, "data": data}).encode()


def test_create_body_uses_documented_field_names() -> None:
    """The create body has top-level model, callBackUrl and input."""
    body = json.loads(build_create_body("google/nano-banana", {"prompt": "p"}, "https://cb"))
    assert body == {
        "model": "google/nano-banana",
        "callBackUrl": "https://cb",
        "input": {"prompt": "p"},
    }


def test_create_body_omits_callback_when_none() -> None:
    """No callBackUrl key is sent when there is no callback."""
    assert "callBackUrl" not in json.loads(build_create_body("m", {"prompt": "p"}))


def test_query_path_escapes_the_id() -> None:
    """The task id is one path segment, escaped."""
    assert query_path("task_a/b") == "/api/v1/tasks/query/task_a%2Fb"


def test_success_envelope_returns_data() -> None:
    """code 200 on HTTP 200 gives the data member."""
    assert parse_reply(200, envelope(200, {"taskId": "t1"})) == {"taskId": "t1"}


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (401, AuthenticationError),
        (402, InsufficientCreditsError),
        (404, NotFoundError),
        (422, ValidationError),
        (429, RateLimitError),
        (500, ServerError),
        (503, ServerError),
        (455, APIStatusError),
    ],
)
@pytest.mark.parametrize("style", ["http", "envelope"])
@pytest.mark.parametrize("field", ["message", "msg"])
def test_errors_map_identically_in_both_signalling_styles(
    code: int, cls: type[APIStatusError], style: str, field: str
) -> None:
    """An error code maps to the same class by HTTP status or by envelope code."""
    http_status = code if style == "http" else 200
    with pytest.raises(cls) as caught:
        parse_reply(http_status, envelope(code, field=field, text="because"))
    assert type(caught.value) is cls
    assert caught.value.code == code
    assert caught.value.http_status == http_status
    assert caught.value.message == "because"


def test_http_error_without_envelope_uses_http_status() -> None:
    """A bare HTTP 502 page is a ServerError with the status as its code source."""
    with pytest.raises(ServerError) as caught:
        parse_reply(502, b"<html>bad gateway</html>")
    assert caught.value.code is None
    assert caught.value.http_status == 502
    assert "502" in str(caught.value)


def test_record_info_null_dialect_is_not_found() -> None:
    """kie's 422 'recordInfo is null' for an unknown task is a NotFoundError."""
    with pytest.raises(NotFoundError):
        parse_reply(200, envelope(422, field="msg", text="recordInfo is null"))


def test_retry_after_seconds_reach_the_error() -> None:
    """A 429's Retry-After header is parsed into seconds on the error."""
    with pytest.raises(RateLimitError) as caught:
        parse_reply(429, envelope(429), retry_after="7")
    assert caught.value.retry_after == 7.0


def test_retry_after_http_date() -> None:
    """Retry-After as an HTTP date is converted to seconds from now."""
    now = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("-5") is None  # nonsense is ignored, not "retry now"


@pytest.mark.parametrize("body", [b"", b"not json", b"[1,2]", b'{"data": {}}', b"null"])
def test_malformed_success_reply_is_a_clear_error(body: bytes) -> None:
    """A 200 that is not an envelope raises MalformedResponseError, not KeyError."""
    with pytest.raises(MalformedResponseError):
        parse_reply(200, body)


def test_string_code_is_tolerated() -> None:
    """An envelope code sent as a string still counts."""
    assert parse_reply(200, b'{"code": "200", "message": "success", "data": 1}') == 1


def test_task_id_from_create_reply() -> None:
    """data.taskId is the task id; a missing one is a malformed reply."""
    assert parse_task_id({"taskId": "task_x_1_ab"}) == "task_x_1_ab"
    with pytest.raises(MalformedResponseError):
        parse_task_id({"id": "x"})
    with pytest.raises(MalformedResponseError):
        parse_task_id(None)


def test_documented_success_task() -> None:
    """The documented example parses: state success and resultJson as a string."""
    info = parse_task(
        {
            "taskId": "task_gemini-2.5-flash-image_1766304530229_cf4dafd2",
            "state": "success",
            "resultJson": '{"resultUrls":["https://cdn.example.com/image.png"]}',
        }
    )
    assert info.state is TaskState.SUCCESS
    assert info.is_terminal
    assert info.succeeded
    assert info.result_urls == ("https://cdn.example.com/image.png",)


@pytest.mark.parametrize(
    "result_json",
    ["", None, '{"resultUrls": []}', "{not json", {"resultUrls": ["u"]}, '"just a string"'],
)
def test_result_json_variants_never_crash(result_json: object) -> None:
    """resultJson may be empty, null, an object, or junk."""
    info = parse_task({"taskId": "t", "state": "success", "resultJson": result_json})
    assert info.result_urls in ((), ("u",))


def test_completed_means_success_and_unknown_is_kept() -> None:
    """'completed' is SUCCESS; an unknown state is UNKNOWN with the raw text kept."""
    assert parse_task({"taskId": "t", "state": "completed"}).state is TaskState.SUCCESS
    odd = parse_task({"taskId": "t", "state": "paused"})
    assert odd.state is TaskState.UNKNOWN
    assert odd.raw_state == "paused"
    assert not odd.is_terminal


def test_failed_task_fields_and_timestamps() -> None:
    """failCode/failMsg and millisecond timestamps are read."""
    info = parse_task(
        {
            "taskId": "t",
            "state": "fail",
            "resultJson": "",
            "failCode": 500,
            "failMsg": "Internal server error",
            "createTime": 1698765400000,
            "completeTime": "1698765410000",
        }
    )
    assert info.failed
    assert info.fail_code == "500"
    assert info.fail_msg == "Internal server error"
    assert info.create_time == datetime.fromtimestamp(1698765400, tz=timezone.utc)
    assert info.complete_time is not None
    assert (info.complete_time - info.create_time).total_seconds() == 10


def test_task_id_filled_from_query_path() -> None:
    """A task object without taskId takes the id the query asked for."""
    assert parse_task({"state": "waiting"}, task_id="t9").task_id == "t9"
    with pytest.raises(MalformedResponseError):
        parse_task({"state": "waiting"})


def test_kie_callback_envelope() -> None:
    """A kie-style callback (code 501, msg, data.state fail) parses to a failed task."""
    body = json.dumps(
        {
            "code": 501,
            "msg": "Playground task failed.",
            "data": {"taskId": "t", "state": "fail", "failCode": "500", "failMsg": "boom"},
        }
    )
    info = parse_callback(body)
    assert info.failed
    assert info.fail_msg == "boom"


def test_flat_callback() -> None:
    """A flat callback {taskId, state, resultUrls} parses too."""
    info = parse_callback(b'{"taskId": "t", "state": "success", "resultUrls": ["u1", "u2"]}')
    assert info.result_urls == ("u1", "u2")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "code",
                    "data",
                    "taskId",
                    "state",
                    "resultJson",
                    "failCode",
                    "msg",
                    "message",
                    "createTime",
                    "resultUrls",
                    "x",
                ]
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@given(st.integers(min_value=100, max_value=599), st.binary(max_size=200))
def test_parse_reply_on_arbitrary_bytes_raises_only_sdk_errors(status: int, body: bytes) -> None:
    """Arbitrary bytes give data or a RuxaError, never another exception."""
    with contextlib.suppress(RuxaError):
        parse_reply(status, body)


@given(json_values)
def test_parsers_on_arbitrary_json_raise_only_sdk_errors(value: object) -> None:
    """Arbitrary JSON through every parser gives a result or a RuxaError."""
    encoded = json.dumps(value).encode()
    for call in (
        lambda: parse_reply(200, encoded),
        lambda: parse_task(value, task_id="t"),
        lambda: parse_task_id(value),
        lambda: parse_callback(encoded),
    ):
        with contextlib.suppress(RuxaError):
            call()
