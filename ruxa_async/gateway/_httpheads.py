"""The HTTP server's heads, without parsing or formatting them again on every request.

Requests: clients repeat their request heads byte for byte on a keep-alive
connection (a create's head differs from the last one's only if its body's
length does; a poll of one task never). A head that ``httptools`` parsed whole,
with its body and nothing more in one read, from a message boundary, is
remembered by its exact bytes (:data:`Known`, a bounded memo per server) when
its framing is its ``Content-Length`` alone: no ``Transfer-Encoding``,
``Expect`` or ``Upgrade``, keep-alive. The same bytes at a message boundary
later are taken without the parser: from the same state the same bytes give
the same parse, and the parser is left at the boundary where it would be again
after the message. Anything else (an unknown head, a body not all there, a head
split across reads) goes through ``httptools``.

Replies: the status line and header lines of a reply, and its ``Content-Length``
line, are made once and kept as bytes.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from ._exchange import Request

__all__ = ["METHODS", "Known", "find_known", "header_block", "learn", "length_line"]

log = logging.getLogger("ruxa_async")

METHODS: dict[bytes, str] = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE")}
_KNOWN_METHODS = frozenset(METHODS.values())
_HEAD_END = b"\r\n\r\n"
# A head parsed before: method, path, query, headers, body length, HTTP/1.0.
Known = tuple[str, str, str, dict[str, str], int, bool]
_MAX_KNOWN = 256  # heads remembered per server (the memo starts over when full)
_MAX_KNOWN_HEAD = 4096  # longer heads are not remembered
_UNMEMOIZED = ("expect", "transfer-encoding", "upgrade")  # framing beyond Content-Length

_STATUS = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_BLOCKS: dict[tuple[int, tuple[tuple[str, str], ...]], bytes] = {}  # status and header lines
_MAX_BLOCKS = 256
_LENGTHS: dict[int, bytes] = {}  # "Content-Length: N" lines, by N
_MAX_LENGTHS = 4096


def find_known(
    known_heads: dict[bytes, Known], data: bytes, start: int, guess: int
) -> tuple[Known, int] | None:
    """The remembered head ``data`` holds at ``start`` (a message boundary) and where its body
    starts, or None.

    A remembered head has no blank line before its last, so when one is found, its
    end is the first blank line from ``start``: what a search would find. So it is
    first looked for without searching: all of ``data`` (a request without a body),
    then the ``guess``-byte head (the connection's last one's length).
    """
    if not start and data[-4:] == _HEAD_END:
        known = known_heads.get(data)
        if known is not None:
            return known, len(data)
    else:
        body_start = start + guess
        if data[body_start - 4 : body_start] == _HEAD_END:
            known = known_heads.get(data[start:body_start])
            if known is not None:
                return known, body_start
    end = data.find(_HEAD_END, start, start + _MAX_KNOWN_HEAD)
    if end < 0:
        return None
    known = known_heads.get(data[start : end + 4])
    return None if known is None else (known, end + 4)


def learn(
    known_heads: dict[bytes, Known], data: bytes, request: Request, keep_alive: bool, http10: bool
) -> int:
    """Remember the head of ``data`` (one whole request the parser just read from a message
    boundary, parsed as ``request``) if its body's length is all its framing; its length, or
    0 when it is not remembered."""
    body = request.body
    end = data.find(_HEAD_END, 0, _MAX_KNOWN_HEAD)
    if not keep_alive or end < 0 or end + 4 + len(body) != len(data):
        return 0
    headers = request.headers
    length = headers.get("content-length")
    if (str(len(body)) != length) if length is not None else body:
        return 0
    if any(name in headers for name in _UNMEMOIZED) or request.method not in _KNOWN_METHODS:
        return 0
    if len(known_heads) >= _MAX_KNOWN:
        known_heads.clear()
    method, path, query = request.method, request.path, request.query
    known_heads[data[: end + 4]] = (method, path, query, dict(headers), len(body), http10)
    return end + 4


def header_block(status: int, headers: tuple[tuple[str, str], ...]) -> bytes:
    """The status line and the lines of ``headers`` (remembered: most responses share a few
    statuses and header sets)."""
    block = _BLOCKS.get((status, headers))
    if block is None:
        lines = [_STATUS.get(status) or f"HTTP/1.1 {status} Unknown\r\n"]
        for name, value in headers:
            if "\r" in value or "\n" in value:  # never from the gateway's own endpoints
                log.error("gateway: dropped the header %s: its value has a line break", name)
                continue
            lines.append(f"{name}: {value}\r\n")
        block = "".join(lines).encode()
        if len(_BLOCKS) < _MAX_BLOCKS:
            _BLOCKS[(status, headers)] = block
    return block


def length_line(length: int) -> bytes:
    """The ``Content-Length`` line of a body of ``length`` bytes (remembered)."""
    line = _LENGTHS.get(length)
    if line is None:
        line = b"Content-Length: %d\r\n" % length
        if len(_LENGTHS) >= _MAX_LENGTHS:
            _LENGTHS.clear()
        _LENGTHS[length] = line
    return line
