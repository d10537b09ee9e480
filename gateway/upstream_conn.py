"""The plain-HTTP transport of the upstream leg: one connection (`Conn`, an `asyncio.Protocol`
parsing responses with llhttp through `httptools`) and one exchange (`Exchange`, the response the
caller sees). The pool that hands out connections is `gateway.upstream.UpstreamClient`; the framing
rules both follow are described in `gateway.upstream`.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Final, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.upstream_errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable, upstream_error_class

if TYPE_CHECKING:
    from gateway.upstream import Site, UpstreamClient, UpstreamResponse

# RFC 9110 §9.2.2; a request with a body is never replayed (its bytes were consumed).
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Response bytes buffered per connection before reading pauses (the caller writes them on slower).
_READ_HIGH: Final = 512 * 1024
_READ_LOW: Final = 128 * 1024
_WRITE_HIGH: Final = 512 * 1024
# Request body chunks at most this large are copied into one write with their framing.
_SMALL_CHUNK: Final = 16 * 1024
# What a header name or value must not hold (RFC 9110 §5.5; the same set aiohttp refuses).
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def wrap(exc: BaseException) -> BaseException:
    target = upstream_error_class(type(exc))
    if target is None:
        return exc
    error = target(f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class _Stale(UpstreamUnavailable):
    """A reused connection was closed before any byte of the response arrived."""


class _CallerError(Exception):
    """Carries an exception raised by the caller's body iterator across the writer task."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error


# ---- one connection ----------------------------------------------------------------------------


class Conn(asyncio.Protocol):
    """One HTTP/1.1 connection to one upstream, used for one exchange at a time.

    The parser's callbacks fill the exchange state; the caller waits on `_waiter` for the head and
    for body chunks, the body writer on `_drain_waiter`. `error` is set once, and every waiter then
    raises it.
    """

    def __init__(self, client: UpstreamClient, site: Site) -> None:
        self.client = client
        self.site = site
        self.loop = client._loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.parser_dirty = False
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.last_io = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        self.read_paused = False
        self.chunks: deque[bytes] = deque()
        self._reset()

    def _reset(self) -> None:
        """State of a new exchange."""
        self.active = False
        self.skip_body = False
        self.request_sent = False
        self.got_bytes = False
        self.head_done = False
        self.message_done = False
        self.interim = False
        self.broken = False
        self.framed = False
        self.length: int | None = None  # the response's Content-Length
        self.raw_left = 0  # body bytes still to come that bypass the parser
        self.close_token = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.status = 0
        self.reason = b""
        self.raw_headers: list[tuple[str, str]] = []
        self.chunks.clear()
        self.buffered = 0

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        if not self.active:
            self.client._forget_idle(self)
            return
        if self.head_done and not self.message_done and not self.framed and exc is None:
            self.message_done = True  # a body delimited by the end of the connection (RFC 9112 §6.3)
        elif not self.message_done:
            if self.reused and not self.got_bytes:
                self._set_error(_Stale("upstream closed a pooled connection"))
            else:
                error = UpstreamUnavailable(
                    f"upstream closed the connection{' mid-response' if self.got_bytes else ''}"
                )
                error.__cause__ = exc
                self._set_error(error)
        self._wake()
        self._wake_drain()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_io = self.loop.time()
        self._wake_drain()

    def data_received(self, data: bytes) -> None:
        self.last_io = self.loop.time()
        if not self.active:  # bytes on an idle connection: it cannot be trusted with a request
            self.broken = True
            self.abort()
            return
        self.got_bytes = True
        if self.raw_left and not self.message_done:
            self._raw_body(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamUnavailable("upstream switched protocols on a plain request"))
        except httptools.HttpParserError as exc:
            self._fail(wrap(exc))

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost decides what the end means

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.message_done:
            self.broken = True  # bytes after the response: never reuse this connection
        self.status = 0
        self.reason = b""
        self.raw_headers = []
        self.framed = False
        self.length = None
        self.close_token = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        text = name.decode("utf-8", "surrogateescape")
        self.raw_headers.append((text, value.decode("utf-8", "surrogateescape").rstrip(" \t")))
        size = len(name)
        if size == 14 and text.lower() == "content-length":
            self.framed = True
            digits = value.strip()
            self.length = int(digits) if digits.isdigit() else None
        elif size == 17 and text.lower() == "transfer-encoding":
            self.framed = value.rstrip(b" \t").lower().endswith(b"chunked")
        elif size == 10 and text.lower() == "connection":
            self.close_token = self.close_token or b"close" in value.lower()

    def on_headers_complete(self) -> None:
        if self.message_done:
            return
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise UpstreamUnavailable("upstream switched protocols on a plain request")
            self.interim = True  # 100 Continue, 103 Early Hints: the final response follows
            return
        self.status = status
        if self.skip_body:  # HEAD: llhttp would wait for the body its Content-Length announces
            self.parser_dirty = True
            self.message_done = True
            self.keep_alive = (
                parser.should_keep_alive()
                if self.framed
                else parser.get_http_version() == "1.1" and not self.close_token
            )
        else:
            self.keep_alive = parser.should_keep_alive()
            if self.length and status not in (204, 304):
                self.raw_left = self.length
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.message_done:
            self.broken = True  # a body after HEAD or a finished message
            return
        if self.raw_left:
            self.raw_left -= len(body)
        self._add_body(body)

    def _raw_body(self, data: bytes) -> None:
        """The rest of a Content-Length body, passed on as received: llhttp would only count it, and
        copy it once more. The parser is out of step afterwards, so the next exchange gets a new one."""
        self.parser_dirty = True
        left = self.raw_left
        if len(data) > left:
            self.broken = True  # bytes past the response: never reuse this connection
            data = data[:left]
        self.raw_left = left - len(data)
        self._add_body(data)
        if not self.raw_left:
            self.message_done = True
            self._wake()

    def _add_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _READ_HIGH and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.message_done:
            return
        self.message_done = True
        self.raw_left = 0
        self._wake()

    # -- waiting -----------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _set_error(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error

    def _fail(self, error: BaseException) -> None:
        self._set_error(error)
        self.broken = True
        self.abort()
        self._wake()
        self._wake_drain()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    async def wait(self) -> None:
        """Until the parser or the transport has something new (or the read timer fired)."""
        waiter = self.loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    async def drain(self) -> None:
        while self.write_paused and self.error is None:
            waiter = self.loop.create_future()
            self._drain_waiter = waiter
            try:
                await waiter
            finally:
                self._drain_waiter = None
        if self.error is not None:
            raise self.error

    # -- idle read timer ---------------------------------------------------------------------
    def arm_timer(self) -> None:
        self.last_io = now = self.loop.time()
        self._timer = self.loop.call_at(now + self.client._read_timeout, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        """The upstream counts as silent only while someone waits on it: the caller for the head
        (once the request is sent) or for body bytes, or the body writer for the socket."""
        self._timer = None
        if not self.active or self.closed:
            return
        timeout = self.client._read_timeout
        now = self.loop.time()
        waiting = (self._waiter is not None and self.request_sent) or self._drain_waiter is not None
        if waiting and now - self.last_io >= timeout:
            self._fail(UpstreamTimeout(f"upstream {self.site.origin} sent nothing for {timeout:g}s"))
            return
        self._timer = self.loop.call_at((self.last_io if waiting else now) + timeout, self._on_timer)

    # -- the exchange ------------------------------------------------------------------------
    def begin(self, skip_body: bool) -> None:
        if self.parser_dirty:
            self.parser = httptools.HttpResponseParser(self)
            self.parser_dirty = False
        self._reset()
        self.active = True
        self.skip_body = skip_body

    def reusable(self) -> bool:
        return (
            self.message_done
            and self.request_sent
            and self.keep_alive
            and not self.close_token
            and not self.broken
            and self.error is None
            and not self.closed
        )

    def finish(self) -> None:
        """The exchange is over: back to the pool when clean, closed otherwise."""
        self._cancel_timer()
        reuse = self.reusable()
        self.active = False
        self.chunks.clear()
        if self.read_paused and self.transport is not None and reuse:
            self.read_paused = False
            self.transport.resume_reading()
        if not reuse:
            self.abort()
        self.client._release(self, reuse)


# ---- one exchange (the response the caller sees) ----------------------------------------------


class Exchange:
    """`async with` one request: sends it and reads the head on entry; on exit returns the connection
    to the pool if the exchange completed cleanly, and closes it otherwise. It is also the response
    (status, reason, headers) and the body iterator."""

    __slots__ = (
        "_body",
        "_client",
        "_conn",
        "_head",
        "_length",
        "_method",
        "_site",
        "_writer",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        client: UpstreamClient,
        site: Site,
        method: str,
        head: bytes,
        body: AsyncIterable[bytes] | None,
        length: int | None,
    ) -> None:
        self._client = client
        self._site = site
        self._method = method
        self._head = head
        self._body = body
        self._length = length
        self._conn: Conn | None = None
        self._writer: asyncio.Task[None] | None = None
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = _EMPTY

    async def __aenter__(self) -> UpstreamResponse:
        retry = self._body is None and self._method in _IDEMPOTENT
        fresh = False
        while True:
            conn = await self._client._acquire(self._site, fresh)
            self._conn = conn
            conn.begin(self._method == "HEAD")
            try:
                if conn.error is not None:
                    raise conn.error
                if self._body is None:
                    _write(conn, self._head)
                    conn.request_sent = True
                else:
                    await self._send_body(conn)
                conn.arm_timer()
                while not conn.head_done:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait()
            except _Stale:
                self._release()
                if not retry:
                    raise UpstreamUnavailable("upstream closed a pooled connection") from None
                retry, fresh = False, True
                continue
            except BaseException:  # the caller's body iterator's own exception included, as is
                self._release()
                raise
            break
        self.status = conn.status
        self.reason = conn.reason.decode("utf-8", "surrogateescape")
        self.headers = CIMultiDictProxy(CIMultiDict(conn.raw_headers))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()

    def _release(self) -> None:
        writer = self._writer
        if writer is not None:
            self._writer = None
            if not writer.done():
                writer.cancel()
            elif not writer.cancelled():
                writer.exception()  # retrieved: its error already reached the caller through conn
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.finish()

    # -- request body --------------------------------------------------------------------------
    async def _send_body(self, conn: Conn) -> None:
        """Write the head with the body's first chunk; the rest, if any, streams from a task so the
        response can arrive (and be read) while the body is still going out."""
        assert self._body is not None and conn.transport is not None
        iterator = aiter(self._body)
        left = self._length
        first = await anext(iterator, None)  # the caller's exception, if any, propagates as is
        if conn.error is not None:  # the pooled connection died meanwhile
            raise conn.error
        if left is None:  # chunked
            if first is None:
                _write(conn, self._head, b"0\r\n\r\n")
                conn.request_sent = True
                return
            _write(conn, self._head, b"%x\r\n" % len(first), first, b"\r\n")
        else:
            data = first or b""
            if len(data) >= left:
                _write(conn, self._head, data[:left] if len(data) > left else data)
                conn.request_sent = True
                return
            _write(conn, self._head, data)
            left -= len(data)
            if first is None:  # the body ended before its Content-Length
                raise UpstreamUnavailable("the request body ended before its Content-Length")
        self._writer = asyncio.get_running_loop().create_task(self._write_rest(conn, iterator, left))

    async def _write_rest(self, conn: Conn, iterator: AsyncIterator[bytes], left: int | None) -> None:
        transport = conn.transport
        assert transport is not None
        try:
            while True:
                if conn.write_paused:
                    await conn.drain()
                try:
                    chunk = await anext(iterator, None)
                except Exception as exc:
                    raise _CallerError(exc) from None
                if conn.error is not None:
                    raise conn.error
                if chunk is None:
                    break
                if not chunk:
                    continue
                if left is None:
                    if len(chunk) <= _SMALL_CHUNK:
                        transport.write(_chunk(chunk))
                    else:
                        transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    if len(chunk) >= left:
                        transport.write(chunk[:left])
                        left = 0
                        break
                    transport.write(chunk)
                    left -= len(chunk)
            if left is None:
                transport.write(b"0\r\n\r\n")
            elif left:
                raise UpstreamUnavailable("the request body ended before its Content-Length")
            conn.request_sent = True
        except _CallerError as exc:
            conn._fail(exc.error)  # the caller's own exception, raised to it as is
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            conn._fail(exc if isinstance(exc, UpstreamError) else wrap(exc))

    # -- response body -------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        conn = self._conn
        return conn is not None and conn.message_done and conn.error is None

    def body(self) -> AsyncIterator[bytes]:
        return self

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        while True:
            chunks = conn.chunks
            if chunks:
                chunk = chunks.popleft()
                conn.buffered -= len(chunk)
                if conn.read_paused and conn.buffered <= _READ_LOW:
                    conn.read_paused = False
                    conn.last_io = conn.loop.time()
                    conn.transport.resume_reading()  # type: ignore[union-attr]
                return chunk
            if conn.message_done:
                raise StopAsyncIteration
            if conn.error is not None:
                raise conn.error
            await conn.wait()


def _write(conn: Conn, *parts: bytes) -> None:
    """The first write of an exchange, in one buffer when small; a pooled connection may have
    closed just before it."""
    try:
        if len(parts) == 1:
            conn.transport.write(parts[0])  # type: ignore[union-attr]
        elif sum(map(len, parts)) <= _SMALL_CHUNK:
            conn.transport.write(b"".join(parts))  # type: ignore[union-attr]
        else:
            conn.transport.writelines(parts)  # type: ignore[union-attr]
    except (RuntimeError, OSError) as exc:
        error = _Stale("upstream closed a pooled connection") if conn.reused else wrap(exc)
        error.__cause__ = exc
        raise error from exc


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


_EMPTY: Final[CIMultiDictProxy[str]] = CIMultiDictProxy(CIMultiDict())
_MULTIDICTS: Final = (CIMultiDict, CIMultiDictProxy)


def head(method: str, target: str, headers: Mapping[str, str], host_line: str, framing: str) -> bytes:
    """The request line and header block, encoded; the caller's framing headers give way to ours."""
    if not isinstance(headers, _MULTIDICTS) or "Content-Length" in headers or "Transfer-Encoding" in headers:
        headers = CIMultiDict(headers)
        headers.popall("Content-Length", None)
        headers.popall("Transfer-Encoding", None)
    if "Host" in headers:
        host_line = ""
    items = headers.items()
    # A CR or LF (or another control character) in a name or value would split the request
    # (header injection), a space in the target would end the request line early.
    if (
        " " in target
        or _CONTROL.search(target) is not None
        or _CONTROL.search("".join(map("".join, items))) is not None
    ):
        raise ValueError("control character or space in the request target or a header")
    block = "\r\n".join(map(": ".join, items))
    if block:
        block += "\r\n"
    return f"{method} {target} HTTP/1.1\r\n{host_line}{block}{framing}\r\n".encode("utf-8", "surrogateescape")
