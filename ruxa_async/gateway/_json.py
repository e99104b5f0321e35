"""JSON encoders built once, for the few small objects the gateway encodes per request.

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

__all__ = ["json_encoder"]

_PROBE = {"b": [1, 2.5, None, True, 'é\n"\\'], "a": {"x": -0.0, "y": 10**20}, "": []}


def json_encoder(
    *,
    sort_keys: bool = False,
    ensure_ascii: bool = True,
    separators: tuple[str, str] = (", ", ": "),
) -> Callable[[Any], str]:
    """``json.JSONEncoder(sort_keys=..., ensure_ascii=..., separators=...).encode``, made once.

    The objects it encodes must hold no reference cycle (they come from JSON or
    from the gateway's own literals): it does not look for one.
    """
    plain = json.JSONEncoder(sort_keys=sort_keys, ensure_ascii=ensure_ascii, separators=separators)
    make = getattr(_encoder, "c_make_encoder", None)
    if make is None:
        return plain.encode
    strings = _encoder.encode_basestring_ascii if ensure_ascii else _encoder.encode_basestring
    try:
        chunks = make(
            None, plain.default, strings, None, separators[1], separators[0], sort_keys, False, True
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
