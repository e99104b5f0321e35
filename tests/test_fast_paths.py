"""The create path's shortcuts agree with the slow ways they stand in for, on odd inputs too."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ruxa_async._jsoncodec import json_loads


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
