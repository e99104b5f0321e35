"""The pure callback functions: parse_callback_request and verify_callback."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ruxa_async import CallbackVerificationError, TaskState
from ruxa_async._errors import ConfigurationError
from ruxa_async.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    parse_callback_request,
    verify_callback,
)

KEY = "whk-test-key"
NOW = 1_766_304_600.0
TASK = "task_gemini-2.5-flash-image_1766304530229_cf4dafd2"


def kie_body(
    task_id: str = TASK,
    state: str = "success",
    *,
    message_field: str = "msg",
    id_field: str = "taskId",
) -> bytes:
    """A kie-style callback envelope."""
    success = state == "success"
    data: dict[str, Any] = {
        id_field: task_id,
        "model": "google/nano-banana",
        "state": state,
        "resultJson": json.dumps({"resultUrls": ["https://cdn.example/a.png"]}) if success else "",
        "failCode": "" if success else "500",
        "failMsg": "" if success else "Internal server error",
        "createTime": 1766304530229,
        "completeTime": 1766304540229,
    }
    envelope = {"code": 200 if success else 501, message_field: "done", "data": data}
    return json.dumps(envelope).encode()


def flat_body(task_id: str = TASK, state: str = "success") -> bytes:
    """A flat callback object."""
    urls = ["https://cdn.example/a.png"] if state == "success" else []
    return json.dumps({"taskId": task_id, "state": state, "resultUrls": urls}).encode()


def signed(task_id: str = TASK, stamp: float = NOW, key: str = KEY) -> dict[str, str]:
    """kie's signature headers for ``task_id`` at ``stamp``."""
    text = str(int(stamp))
    digest = hmac.new(key.encode(), f"{task_id}.{text}".encode(), hashlib.sha256).digest()
    return {TIMESTAMP_HEADER: text, SIGNATURE_HEADER: base64.b64encode(digest).decode()}


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize("message_field", ["msg", "message"])
def test_kie_envelope_parses_to_task_info(message_field: str) -> None:
    """A kie envelope, spelled with msg or message, yields the task's terminal snapshot."""
    info = parse_callback_request(kie_body(message_field=message_field), {})
    assert info.task_id == TASK
    assert info.state is TaskState.SUCCESS
    assert info.result_urls == ("https://cdn.example/a.png",)


def test_kie_failure_envelope_parses_to_failed_task() -> None:
    """A kie failure callback (code 501) is a FAIL snapshot with its reason, not an error."""
    info = parse_callback_request(kie_body(state="fail"), {})
    assert info.state is TaskState.FAIL
    assert info.fail_code == "500"
    assert info.fail_msg == "Internal server error"


def test_flat_body_parses_to_task_info() -> None:
    """A flat {taskId, state, resultUrls} body is accepted too."""
    info = parse_callback_request(flat_body(), {})
    assert info.task_id == TASK
    assert info.result_urls == ("https://cdn.example/a.png",)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'"a string"',
        b"null",
        b"{}",
        b'{"code": 200, "msg": "ok", "data": {}}',
        b'{"code": 200, "data": {"taskId": 42, "state": "success"}}',
        b'{"taskId": ""}',
        b"[" * 5000 + b"]" * 5000,
    ],
    ids=[
        "empty",
        "text",
        "binary",
        "array",
        "string",
        "null",
        "empty-object",
        "no-task-id",
        "numeric-task-id",
        "blank-task-id",
        "deep-nesting",
    ],
)
def test_malformed_bodies_raise_verification_error(body: bytes) -> None:
    """Anything that is not a JSON object naming a task is a 400-class verification error."""
    with pytest.raises(CallbackVerificationError) as caught:
        parse_callback_request(body, {})
    assert getattr(caught.value, "http_status", None) == 400


def test_oversized_body_is_refused_before_parsing() -> None:
    """A body over max_body is refused (413) however well-formed it is."""
    body = kie_body()
    with pytest.raises(CallbackVerificationError) as caught:
        parse_callback_request(body, {}, max_body=len(body) - 1)
    assert getattr(caught.value, "http_status", None) == 413
    assert parse_callback_request(body, {}, max_body=len(body)).task_id == TASK


# ------------------------------------------------------------------ signatures


def test_valid_signature_is_accepted() -> None:
    """A body signed with the right key, at the right time, verifies."""
    verify_callback(kie_body(), signed(), hmac_key=KEY, now=NOW)
    info = parse_callback_request(kie_body(), signed(), hmac_key=KEY, now=NOW)
    assert info.task_id == TASK


@pytest.mark.parametrize(
    "body",
    [kie_body(id_field="task_id"), flat_body()],
    ids=["kie-data.task_id", "flat-taskId"],
)
def test_signature_reads_task_id_from_every_body_form(body: bytes) -> None:
    """The signed task id comes from data.taskId, data.task_id or a flat taskId."""
    verify_callback(body, signed(), hmac_key=KEY, now=NOW)


def test_header_names_match_in_any_case() -> None:
    """Frameworks that lower-case header names (ASGI) still verify."""
    headers = {k.lower(): v for k, v in signed().items()}
    verify_callback(kie_body(), headers, hmac_key=KEY, now=NOW)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {TIMESTAMP_HEADER: str(int(NOW))},
        {SIGNATURE_HEADER: signed()[SIGNATURE_HEADER]},
        signed(key="another-key"),
        signed(task_id="task_other"),
        {**signed(), SIGNATURE_HEADER: "not base64 at all"},
        {**signed(), SIGNATURE_HEADER: "sïgnature\udcff"},
        {**signed(), TIMESTAMP_HEADER: "yesterday"},
        {**signed(), TIMESTAMP_HEADER: "-5"},
        {**signed(), TIMESTAMP_HEADER: "1e9"},
        {**signed(), TIMESTAMP_HEADER: "9" * 40},
    ],
    ids=[
        "no-headers",
        "no-signature",
        "no-timestamp",
        "wrong-key",
        "other-task",
        "garbage-signature",
        "non-ascii-signature",
        "word-timestamp",
        "negative-timestamp",
        "exponent-timestamp",
        "huge-timestamp",
    ],
)
def test_bad_signatures_are_refused(headers: dict[str, str]) -> None:
    """Missing, wrong or malformed signature headers raise a 401-class error."""
    with pytest.raises(CallbackVerificationError) as caught:
        verify_callback(kie_body(), headers, hmac_key=KEY, now=NOW)
    assert getattr(caught.value, "http_status", None) == 401


def test_signature_over_a_tampered_body_is_refused() -> None:
    """A signature made for one task does not cover a body claiming another."""
    with pytest.raises(CallbackVerificationError):
        parse_callback_request(kie_body("task_forged"), signed(), hmac_key=KEY, now=NOW)


@pytest.mark.parametrize("skew", [-301.0, 301.0, -86_400.0])
def test_timestamps_outside_the_window_are_refused(skew: float) -> None:
    """A correctly signed but stale (or far-future) timestamp is a replay: 401."""
    with pytest.raises(CallbackVerificationError) as caught:
        verify_callback(kie_body(), signed(stamp=NOW + skew), hmac_key=KEY, now=NOW)
    assert getattr(caught.value, "http_status", None) == 401


def test_tolerance_widens_the_window() -> None:
    """The tolerance argument sets the accepted clock skew."""
    old = signed(stamp=NOW - 3_600)
    verify_callback(kie_body(), old, hmac_key=KEY, now=NOW, tolerance=3_601)
    with pytest.raises(CallbackVerificationError):
        verify_callback(kie_body(), old, hmac_key=KEY, now=NOW, tolerance=3_599)


def test_parse_without_key_skips_the_signature() -> None:
    """Without hmac_key, parse_callback_request does not look at signature headers."""
    info = parse_callback_request(kie_body(), {SIGNATURE_HEADER: "junk"})
    assert info.task_id == TASK


def test_verify_without_key_is_a_configuration_error() -> None:
    """verify_callback refuses to 'verify' against no key rather than pass silently."""
    with pytest.raises(ConfigurationError):
        verify_callback(kie_body(), signed())


def test_verify_of_malformed_body_raises_verification_error() -> None:
    """A body naming no task cannot be verified: a verification error, not a KeyError."""
    with pytest.raises(CallbackVerificationError):
        verify_callback(b'{"data": {"state": "success"}}', signed(), hmac_key=KEY, now=NOW)


# ---------------------------------------------------------------- properties

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.sampled_from(["taskId", "task_id", "data", "state", "success", "fail", "resultJson"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "taskId",
                    "task_id",
                    "data",
                    "state",
                    "status",
                    "resultJson",
                    "resultUrls",
                    "failCode",
                    "failMsg",
                    "createTime",
                    "completeTime",
                    "updateTime",
                    "model",
                    "code",
                    "msg",
                ]
            )
            | st.text(max_size=5),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)
_headers = st.dictionaries(
    st.sampled_from([TIMESTAMP_HEADER, SIGNATURE_HEADER, "x-webhook-timestamp", "Other"]),
    st.text(max_size=60) | st.just(str(int(NOW))),
    max_size=3,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=300), headers=_headers, key=st.none() | st.just(KEY))
def test_arbitrary_bytes_only_raise_verification_error(
    body: bytes, headers: dict[str, str], key: str | None
) -> None:
    """Whatever bytes arrive, the only exception is CallbackVerificationError."""
    with contextlib.suppress(CallbackVerificationError):
        parse_callback_request(body, headers, hmac_key=key, now=NOW)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=_json,
    wrap=st.booleans(),
    task_id=st.text(max_size=12),
    headers=_headers,
    key=st.none() | st.just(KEY),
)
def test_arbitrary_json_only_raises_verification_error(
    value: Any, wrap: bool, task_id: str, headers: dict[str, str], key: str | None
) -> None:
    """Arbitrary JSON, including near-miss task objects, yields a TaskInfo or the one error."""
    if wrap:
        value = {"code": 200, "msg": "x", "data": {"taskId": task_id, "extra": value}}
        if isinstance(value["data"]["extra"], dict):
            value["data"].update(value["data"].pop("extra"))
    body = json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")
    try:
        info = parse_callback_request(body, headers, hmac_key=key, now=NOW)
    except CallbackVerificationError:
        return
    assert isinstance(info.task_id, str)
    assert info.task_id


@settings(max_examples=100, deadline=None)
@given(task_id=st.text(min_size=1, max_size=40), skew=st.floats(-299, 299))
def test_any_signed_task_id_verifies(task_id: str, skew: float) -> None:
    """Every task id, whatever its characters, round-trips through sign and verify."""
    body = json.dumps({"code": 200, "data": {"taskId": task_id, "state": "success"}}).encode()
    text = str(int(NOW + skew))
    digest = hmac.new(
        KEY.encode(), f"{task_id}.{text}".encode("utf-8", "surrogatepass"), hashlib.sha256
    ).digest()
    headers = {TIMESTAMP_HEADER: text, SIGNATURE_HEADER: base64.b64encode(digest).decode()}
    verify_callback(body, headers, hmac_key=KEY, now=NOW)


def test_absurd_timestamps_are_dropped_not_fatal() -> None:
    """A 400-digit createTime parses as no timestamp; the callback itself is still read."""
    body = b'{"taskId": "x", "state": "success", "createTime": ' + b"9" * 400 + b"}"
    info = parse_callback_request(body, {})
    assert info.task_id == "x"
    assert info.create_time is None
