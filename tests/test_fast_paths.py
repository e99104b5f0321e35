"""The create path's shortcuts agree with the slow ways they stand in for, on odd inputs too."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ruxa_async._errors import RuxaError
from ruxa_async._jsoncodec import json_encoder, json_loads
from ruxa_async._wire import build_create_body, parse_envelope, parse_reply


def _outcome(call: Any, *args: Any) -> tuple[str, Any]:
    """What ``call(*args)`` gives: its value, or its exception's type and text."""
    try:
        return ("value", call(*args))
    except (ValueError, RecursionError) as exc:
        return (type(exc).__name__, str(exc))


ODD_DOCUMENTS = [
    b'{"model": "m", "input": {"prompt": "a red fox"}}',
    b'{"a":1}',
    b'{"a":1} ',
    b'{"a":1}\n',
    b'{"a":1}x',
    b'{"a":1}{"b":2}',
    b'{"a":1,"a":2}',
    b'{"a":NaN,"b":-Infinity}',
    b'{"a":"\\ud800"}',
    b'{"a":"\xed\xa0\x80"}',
    b'{"a":"\x01"}',
    b'{"a":}',
    b"{",
    b"{}",
    b"{} \t\r\n",
    b'{"a":[1,2,',
    b'{"\xc3\xa9":"\xff"}',
    b" {}",
    b"[1]",
    b"",
    b"{" * 5000 + b"}" * 5000,
]


@pytest.mark.parametrize("document", ODD_DOCUMENTS)
def test_json_loads_gives_what_json_loads_gives(document: bytes) -> None:
    """A document scanned at once decodes (or fails) exactly as ``json.loads`` has it."""
    assert repr(_outcome(json_loads, document)) == repr(_outcome(json.loads, document))


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(), st.lists, max_leaves=8))
def test_json_loads_agrees_on_any_object(value: object) -> None:
    """Any object as clients write it, with or without whitespace around it, decodes alike."""
    for text in (json.dumps({"v": value}), json.dumps({"v": value}) + " ", " " + json.dumps([])):
        document = text.encode("utf-8", "surrogatepass")
        assert repr(_outcome(json_loads, document)) == repr(_outcome(json.loads, document))


def _reply_outcome(parse: Any, status: int, body: bytes) -> tuple[str, Any]:
    try:
        return ("data", parse(status, body, "3"))
    except RuxaError as exc:
        return (type(exc).__name__, repr(vars(exc)))


HEAD = b'{"code":200,"message":"success","data":{"taskId":"'
ODD_IDS = [
    b"task_1",
    b"t",
    b"",
    b"a b",
    b'a\\"b',
    b"a\\u00e9",
    b"a\\/b",
    b"\xc3\xa9",
    b"\x7f",
    b"a\x01",
]
MSG_HEAD = b'{"code":200,"msg":"success","data":{"taskId":"'  # kie's spelling of the message
ODD_REPLIES = [head + task_id + b'"}}' for head in (HEAD, MSG_HEAD) for task_id in ODD_IDS] + [
    MSG_HEAD + b'x","state":"waiting"}}',
    HEAD + b'x"}} ',
    HEAD + b'x"},"data":null}',
    HEAD + b'x","taskId":"y"}}',
    HEAD + b'"}}',
    HEAD[:-1] + b"1}}",
    HEAD + b"}}",
    b'{"code":200,"msg":"success","data":{"taskId":"x"}}',
    b'{"code": 200, "message": "success", "data": {"taskId": "x"}}',
    b'{"code":429,"message":"slow down","data":{"taskId":"x"}}',
    b'{"code":"200","message":"success","data":{"task_id":"x"}}',
]


@pytest.mark.parametrize("status", [200, 201, 429, 500])
@pytest.mark.parametrize("body", ODD_REPLIES)
def test_a_create_reply_read_around_its_id_reads_as_decoded(status: int, body: bytes) -> None:
    """The usual create reply, read without decoding, gives the decoded envelope's data (and
    any other reply, or status, the same error)."""
    assert _reply_outcome(parse_reply, status, body) == _reply_outcome(parse_envelope, status, body)


@given(st.text(max_size=40))
def test_any_task_id_reads_as_decoded(task_id: str) -> None:
    """Whatever the id (escaped or not), the shortcut and the decoder agree."""
    for text in (json.dumps(task_id), json.dumps(task_id, ensure_ascii=False)):
        for head in (HEAD, MSG_HEAD):
            body = head[:-1] + text.encode("utf-8", "surrogatepass") + b"}}"
            outcome = _reply_outcome(parse_reply, 200, body)
            assert outcome == _reply_outcome(parse_envelope, 200, body)


_whole = json_encoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _body_outcome(build: Any, model: Any, input: Any, url: Any) -> tuple[str, Any]:
    try:
        return ("body", build(model, input, url))
    except RuxaError as exc:
        return (type(exc).__name__, str(exc))


def _whole_body(model: Any, input: Any, url: Any) -> bytes:
    """The create body as the object it is, encoded in one piece."""
    body = {"model": model, **({} if url is None else {"callBackUrl": url}), "input": input}
    try:
        return _whole(body).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise RuxaError(f"{model}: input cannot be sent as JSON ({exc})") from None


ODD_INPUTS: list[Any] = [
    {"prompt": "a red fox"},
    {},
    {"prompt": 'é \u2028 \n " \\ \x00'},
    {"prompt": "\ud800"},
    {"n": float("nan")},
    {"b": b"bytes"},
    {"nested": {"list": [1, 2.5, None, True, {"x": -0.0}]}, 3: "int key"},
]


@pytest.mark.parametrize("url", [None, "https://gw.example/_gateway/callback/abc", "\ud800"])
@pytest.mark.parametrize("model", ["google/nano-banana", 'm\u00e9"', "\udfff"])
@pytest.mark.parametrize("input", ODD_INPUTS)
def test_a_create_body_put_together_is_the_whole_encoded(model: str, input: Any, url: Any) -> None:
    """The body from its cached head and its encoded input is the whole object's encoding;
    an input that cannot be sent fails with the whole body's message."""
    got = _body_outcome(build_create_body, model, input, url)
    want = _body_outcome(_whole_body, model, input, url)
    assert (got[0] == "body") == (want[0] == "body")
    assert got[1] == want[1]


@given(
    st.text(max_size=12),
    st.dictionaries(st.text(max_size=6), st.text() | st.floats() | st.integers(), max_size=4),
)
def test_any_create_body_is_the_whole_encoded(model: str, input: dict[str, Any]) -> None:
    """Whatever the model and input, the body put together equals the whole encoding."""
    assert repr(_body_outcome(build_create_body, model, input, "https://x/cb")) == repr(
        _body_outcome(_whole_body, model, input, "https://x/cb")
    ).replace("RuxaError", "InvalidInputError")
