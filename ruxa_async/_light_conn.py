"""One keep-alive HTTP/1.1 client connection of the light transport: write, read, wake.

:class:`Connection` is an :class:`asyncio.Protocol` that writes one request at
a time and reads its reply: a whole plain reply that arrives in one read
(HTTP/1.1, one ``Content-Length``, nothing more) is taken as it is; anything
else is parsed by ``httptools``. It notes what the pool needs to keep the
connection or retire it (``Connection: close``, ``Keep-Alive: timeout=N``, the
server hanging up) and fails the exchange with :class:`Dropped` saying whether
any reply byte had arrived. The pool (``_light_transport``) times exchanges out.
"""

from __future__ import annotations

import asyncio

from ._ratehints import RATE_HEADER_NAMES

try:
    import httptools
except ImportError:  # pragma: no cover - the gateway extra is not installed
    httptools = None  # type: ignore[assignment]

__all__ = ["KEEPALIVE", "Connection", "Dropped", "ReadTimeout"]

KEEPALIVE = 30.0  # seconds an idle connection is kept (servers commonly keep 60-75)
_KEEPALIVE_MARGIN = 1.0  # retire a connection this long before the server's announced timeout
_KEEP_ALIVE = b"keep-alive"
_RATE_NAMES = {name.encode(): name for name in RATE_HEADER_NAMES}
_RETRY_AFTER = b"retry-after"
_LENGTH = frozenset((b"content-length", b"transfer-encoding"))
_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = b"\r\ncontent-length:"
_QUICK_RATE = tuple(
    (b"\r\n" + name + b":", text) for name, text in _RATE_NAMES.items() if name != _RETRY_AFTER
)


# What a plain reply head says, read once per distinct head (see ``_whole_reply``):
# (status, body length, Retry-After, Keep-Alive's value, rate headers, keep-alive).
_Head = tuple[int, int, "str | None", "bytes | None", tuple[tuple[str, str], ...], bool]
_HEADS: dict[bytes, _Head] = {}
_MAX_HEADS = 64  # a server's heads differ by Date (each second) and Content-Length


def _whole_reply(data: bytes, size: int = 0) -> tuple[_Head, bytes] | None:
    """What the head says and the body, if ``data`` is exactly one plain reply.

    Plain: HTTP/1.1, a final status, one ``Content-Length`` and no
    ``Transfer-Encoding``, all of it and nothing more in ``data``. Anything
    else (None) goes to ``httptools``, which then sees the reply from its start.
    A server repeats its heads byte for byte (they differ by ``Date``, once a
    second, and by the body's length), so a head is read once and remembered
    (the last ``_MAX_HEADS`` distinct ones): searching a head for the names
    that matter cost more than the rest of the reply's handling.

    ``size`` guesses the head's length (through its last CRLF; the last reply's):
    a remembered head has no blank line before its end, so if the guess is one,
    its end is the first blank line of ``data``, which need not be searched for.
    """
    known = _HEADS.get(data[:size]) if data[size - 2 : size + 2] == _HEAD_END else None
    if known is not None:
        end = size - 2
    else:
        end = data.find(_HEAD_END)
        if end < 0:
            return None
        head = data[: end + 2]  # every header line ends with CRLF
        known = _HEADS.get(head)
        if known is None:
            known = _read_head(head)
            if known is None:
                return None
            if len(_HEADS) >= _MAX_HEADS:
                _HEADS.clear()
            _HEADS[head] = known
    if len(data) - end - 4 != known[1]:
        return None
    return known, data[end + 4 :]


def _read_head(head: bytes) -> _Head | None:
    """What a plain reply head (through its last CRLF) says, or None if it is not plain."""
    if not head.startswith(b"HTTP/1.1 ") or not head[9:12].isdigit():
        return None
    if head[12:13] not in (b" ", b"\r") or head[9:10] == b"1":  # 1xx: an interim reply
        return None
    lower = head.lower()
    start = lower.find(_CONTENT_LENGTH)
    if (
        start < 0
        or lower.find(_CONTENT_LENGTH, start + 1) >= 0
        or b"\r\ntransfer-encoding:" in lower
    ):
        return None
    length = lower[start + len(_CONTENT_LENGTH) : lower.index(b"\r\n", start + 2)].strip()
    if not length.isdigit():
        return None
    value = _header(head, lower, b"\r\nretry-after:")
    retry_after = None if value is None else value.decode("latin-1")
    keep_alive_value = _header(head, lower, b"\r\nkeep-alive:")
    rate: list[tuple[str, str]] = []
    if b"ratelimit" in lower:
        for marker, name in _QUICK_RATE:
            value = _header(head, lower, marker)
            if value is not None:
                rate.append((name, value.decode("latin-1")))
    value = _header(head, lower, b"\r\nconnection:")
    keep_alive = value is None or b"close" not in value.lower()
    return int(head[9:12]), int(length), retry_after, keep_alive_value, tuple(rate), keep_alive


def _header(head: bytes, lower: bytes, marker: bytes) -> bytes | None:
    """The last value of the header line ``marker`` (CRLF, lower-case name, colon), or None."""
    at = lower.rfind(marker)
    if at < 0:
        return None
    start = at + len(marker)
    return head[start : lower.index(b"\r\n", start)].strip()


class Dropped(Exception):
    """The server closed the connection before the reply was complete."""

    def __init__(self, *, received: bool, written: bool = True) -> None:
        super().__init__("the server closed the connection")
        self.received = received  # any byte of the reply had arrived
        self.written = written  # the request had been handed to the socket


class _Unsolicited(Exception):
    """The server sent a reply nobody asked for."""


class ReadTimeout(Exception):
    """No reply byte for ``read`` seconds, or the request's total time ran out."""


class Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, parses its reply, wakes the sender."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.alive = True  # False once the server hung up, sent garbage, or we closed it
        self.idle_since = 0.0
        self.keep_alive = False
        self.keep_for = KEEPALIVE  # idle seconds it may be reused after (Keep-Alive: timeout)
        self._waiter: asyncio.Future[None] | None = None
        self._read = 0.0
        self._deadline = 0.0
        self._last = 0.0  # when the request was written or the last reply byte arrived
        self._head_size = 0  # the last plain reply's head length (the next one's guess)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.body: list[bytes] = []
        self.retry_after: str | None = None
        self.rate: dict[str, str] = {}
        self._received = False
        self._headers_done = False
        self._framed = False  # Content-Length or chunked: the reply does not end at EOF

    # -- the sender's side

    def send(
        self, payload: bytes, now: float, read: float, deadline: float
    ) -> asyncio.Future[None]:
        """Write one request; the future completes when its reply has been read.

        Nothing here times out on its own: the pool's watchdog (see
        :meth:`LightTransport._watch`) fails the exchange once :meth:`due` passes.
        """
        assert self.transport is not None
        self._reset()
        waiter = self._waiter = self._loop.create_future()
        if not self.alive or self.transport.is_closing():  # closed before the write
            self._waiter = None
            waiter.set_exception(Dropped(received=False, written=False))
            return waiter
        self._read, self._deadline, self._last = read, deadline, now
        self.transport.write(payload)
        return waiter

    @property
    def waiting(self) -> bool:
        """An exchange is in progress (its reply not yet complete)."""
        return self._waiter is not None

    def due(self) -> float:
        """When the exchange times out: ``read`` after its last byte, or at the deadline."""
        return min(self._last + self._read, self._deadline)

    def time_out(self) -> None:
        """Fail the exchange in progress as timed out (and close the connection)."""
        self._fail(ReadTimeout())

    def close(self) -> None:
        """Close the connection (an exchange in progress fails as dropped)."""
        self.alive = False
        if self.transport is not None:
            self.transport.close()

    def _finish(self, error: BaseException | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def _fail(self, error: BaseException) -> None:
        self.close()
        self._finish(error)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection is not usable
            self.close()
            return
        if not self._received:  # the first bytes of the reply: most often all of it
            self._received = True
            whole = _whole_reply(data, self._head_size)
            if whole is not None:  # read without httptools' callbacks (the same result)
                head, body = whole
                self._head_size = len(data) - len(body) - 2
                status, _, retry_after, keep_alive_value, rate, keep_alive = head
                self.status = status
                self.body = [body]
                self._headers_done = self._framed = True
                if retry_after is not None:
                    self.retry_after = retry_after
                if keep_alive_value is not None:
                    self._keep_alive_header(keep_alive_value)
                if rate:
                    self.rate = dict(rate)
                self.keep_alive = keep_alive
                self._finish(None)
                return
        self._last = self._loop.time()  # a reply in pieces: the read timeout starts again
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        self.alive = False
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        if self._waiter is None:
            return
        if self._headers_done and not self._framed and exc is None:
            self.keep_alive = False  # a reply delimited by the end of the connection
            self._finish(None)
        else:
            self._finish(Dropped(received=self._received))

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self._waiter is None:  # a second reply to one request: stop reading this connection
            raise _Unsolicited

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == _RETRY_AFTER:
            self.retry_after = value.strip().decode("latin-1")
        elif name in _LENGTH:
            self._framed = True
        elif name == _KEEP_ALIVE:
            self._keep_alive_header(value)
        else:
            rate = _RATE_NAMES.get(name)
            if rate is not None:
                self.rate[rate] = value.strip().decode("latin-1")

    def _keep_alive_header(self, value: bytes) -> None:
        """``Keep-Alive: timeout=N``: reuse the connection only while the server keeps it."""
        for part in value.split(b","):
            key, _, number = part.partition(b"=")
            if key.strip().lower() == b"timeout":
                try:
                    announced = float(number.strip())
                except ValueError:
                    return
                if announced == announced:  # not NaN
                    self.keep_for = max(0.0, min(KEEPALIVE, announced - _KEEPALIVE_MARGIN))
                return

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:  # an interim reply (100 Continue): the real one follows
            self._reset()
            self._received = True
            return
        self.keep_alive = self._parser.should_keep_alive()
        self._finish(None)
