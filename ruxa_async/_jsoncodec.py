"""JSON encoders built once, and a quicker ``json.loads`` of a UTF-8 object, for the small
documents encoded and decoded per request (a create's body, an envelope, an audit line).

``json.JSONEncoder.encode`` builds its C encoder anew on every call, which costs
more than encoding an envelope, an audit line or a ledger key. An encoder here
is the same C encoder, built once, with ``JSONEncoder``'s own output (checked
when it is made; without the C accelerator it is ``JSONEncoder.encode``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _encoder
from typing import Any

__all__ = ["json_encoder", "json_loads"]

_PROBE = {"b": [1, 2.5, None, True, 'é\n"\\'], "a": {"x": -0.0, "y": 10**20}, "": []}


def json_encoder(
    *,
    sort_keys: bool = False,
    ensure_ascii: bool = True,
    separators: tuple[str, str] = (", ", ": "),
    allow_nan: bool = True,
) -> Callable[[Any], str]:
    """``json.JSONEncoder(sort_keys=..., ensure_ascii=..., separators=..., allow_nan=...)
    .encode``, made once.

    It does not look for reference cycles: an object holding one raises
    ``RecursionError`` (``JSONEncoder`` raises ``ValueError``).
    """
    plain = json.JSONEncoder(
        sort_keys=sort_keys, ensure_ascii=ensure_ascii, separators=separators, allow_nan=allow_nan
    )
    make = getattr(_encoder, "c_make_encoder", None)
    if make is None:
        return plain.encode
    strings = _encoder.encode_basestring_ascii if ensure_ascii else _encoder.encode_basestring
    try:
        chunks = make(
            None,
            plain.default,
            strings,
            None,
            separators[1],
            separators[0],
            sort_keys,
            False,
            allow_nan,
        )
    except TypeError:  # a C encoder of another signature: the plain one will do
        return plain.encode

    def encode(obj: Any) -> str:
        return "".join(chunks(obj, 0))

    try:
        same = encode(_PROBE) == plain.encode(_PROBE)
    except (TypeError, ValueError):  # the C encoder differs here: do not use it
        same = False
    return encode if same else plain.encode


_decoder = json.JSONDecoder()
_decode = _decoder.decode
# The scanner decode runs (set by JSONDecoder.__init__; typeshed does not declare it).
_scan: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]


def json_loads(data: bytes) -> Any:
    """``json.loads(data)``, with the same result and errors, quicker for UTF-8 text that
    starts with ``{`` (``json.loads`` first guesses the encoding of any bytes it gets).

    A document that starts with ``{`` and ends with its object (no whitespace around it,
    as every client sends) is scanned at once; anything else takes ``decode``'s own way,
    which skips whitespace with a regular expression and raises the exact errors.
    """
    if data[:1] == b"{" and data[1:2] != b"\x00":  # neither UTF-16/32 nor a byte order mark
        text = data.decode("utf-8", "surrogatepass")
        try:
            obj, end = _scan(text, 0)
        except StopIteration:
            pass  # not a value: decode raises its JSONDecodeError
        else:
            if end == len(text):
                return obj
        return _decode(text)
    return json.loads(data)
