"""The upstream leg: pooled keep-alive HTTP/1.1 connections behind a small interface, errors mapped once.

The proxy reaches legacy apps only through `UpstreamClient`; no transport type crosses this
boundary (websocket messages are aiohttp's `WSMessage`, the type the browser leg uses too).

    UpstreamError
    ├── UpstreamUnavailable     refused, reset, DNS, TLS, malformed response: the proxy answers 502
    └── UpstreamTimeout         connect (incl. waiting for a pooled connection) or idle read: 504

An exception raised by the caller's request-body iterator (a size cap, a browser that went away)
reaches the caller as itself, never wrapped.

Plain HTTP requests use a lean transport of their own (docs/performance.md: aiohttp's client leg
was the largest single cost of a proxied request): an `asyncio.Protocol` per connection, the
request head (and a body that is already complete) written in one buffer, the response parsed by
llhttp through `httptools`. Websockets keep using aiohttp's client.

Framing rules the transport follows (RFC 9112):

* request bodies: a known length goes out with `Content-Length` (never more bytes than that), an
  unknown one chunked; a request without a body carries neither header;
* responses: `Content-Length`, chunked, or (neither) read until the upstream closes; HEAD, 1xx,
  204 and 304 have no body; interim 1xx responses (`100 Continue`) are skipped; `101` is refused;
* a connection goes back to the pool only after a complete exchange that both sides meant to keep
  alive (`Connection: close` is honoured), so a connection with unread bytes is never reused;
* a pooled connection that turns out to be closed before any byte of the response arrived is
  retried once, on a new connection, for idempotent requests without a body only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Final, Literal, Protocol, cast
from urllib.parse import urlsplit

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# ws_connect builds the handshake with setdefault(), so a forwarded browser copy would win.
_HANDSHAKE_HEADERS: Final = (
    "Connection",
    "Upgrade",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
    "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol",
    "Sec-WebSocket-Accept",
)
# Legacy SSO cookies exceed aiohttp's 8190-byte default line and field limits (AIOHTTP.md §1.17).
_MAX_HEADER_BYTES: Final = 32768
# RFC 9110 §9.2.2; a request with a body is never replayed (its bytes were consumed).
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Response bytes buffered per connection before reading pauses (the caller writes them on slower).
_READ_HIGH: Final = 512 * 1024
_READ_LOW: Final = 128 * 1024
_WRITE_HIGH: Final = 512 * 1024
# Request body chunks at most this large are copied into one write with their framing.
_SMALL_CHUNK: Final = 16 * 1024
_DNS_TTL: Final = 60.0
# What a header name or value must not hold (RFC 9110 §5.5; the same set aiohttp refuses).
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class UpstreamError(Exception):
    """Base of every failure to talk to an upstream; `__cause__` holds the transport error.

    The message names the upstream's address and may quote its bytes: log it, never show it.
    """


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached or answered with something that is not HTTP."""


class UpstreamRefusedUpgrade(UpstreamUnavailable):
    """The upstream answered a websocket upgrade with a status other than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"upstream refused the websocket upgrade with {status}")
        self.status = status


class UpstreamTimeout(UpstreamError):
    """The upstream did not accept the connection, or went silent, within its timeout."""


# First match wins. aiohttp's timeouts (websocket leg) are ClientErrors too, so they come first;
# asyncio.TimeoutError is TimeoutError, an OSError, so it precedes the OSError row as well.
ERROR_TABLE: Final[tuple[tuple[type[Exception], type[UpstreamError]], ...]] = (
    (asyncio.TimeoutError, UpstreamTimeout),  # connect, idle read; aiohttp's Server/Socket timeouts
    (aiohttp.ClientError, UpstreamUnavailable),  # websocket leg: refused, DNS, TLS, handshake
    (httptools.HttpParserError, UpstreamUnavailable),  # not HTTP, or smuggling-shaped framing
    (OSError, UpstreamUnavailable),  # refused, reset, DNS (gaierror), TLS (SSLError)
)


def upstream_error_class(exc_type: type[BaseException]) -> type[UpstreamError] | None:
    """The `UpstreamError` subclass a transport exception maps to; None lets it propagate as is."""
    for source, target in ERROR_TABLE:
        if issubclass(exc_type, source):
            return target
    return None


def _wrap(exc: BaseException) -> BaseException:
    target = upstream_error_class(type(exc))
    if target is None:
        return exc
    error = target(f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class UpstreamResponse(Protocol):
    """An upstream response whose head has arrived; the body streams from `body()`."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """Every header as received, repeated names (each `Set-Cookie`) kept in order."""
        ...

    @property
    def complete(self) -> bool:
        """True when the whole response has already arrived, so `body()` will not wait."""
        ...

    def body(self) -> AsyncIterator[bytes]:
        """The body bytes as they arrive (nothing for HEAD, 1xx, 204, 304); raises `UpstreamError`."""
        ...


class _Stale(UpstreamUnavailable):
    """A reused connection was closed before any byte of the response arrived."""


class _CallerError(Exception):
    """Carries an exception raised by the caller's body iterator across the writer task."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error


# ---- one connection ----------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection to one upstream, used for one exchange at a time.

    The parser's callbacks fill the exchange state; the caller waits on `_waiter` for the head and
    for body chunks, the body writer on `_drain_waiter`. `error` is set once, and every waiter then
    raises it.
    """

    def __init__(self, client: UpstreamClient, site: _Site) -> None:
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
            self._fail(_wrap(exc))

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


class _Exchange:
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
        site: _Site,
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
        self._conn: _Conn | None = None
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
    async def _send_body(self, conn: _Conn) -> None:
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

    async def _write_rest(self, conn: _Conn, iterator: AsyncIterator[bytes], left: int | None) -> None:
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
            conn._fail(exc if isinstance(exc, UpstreamError) else _wrap(exc))

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


def _write(conn: _Conn, *parts: bytes) -> None:
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
        error = _Stale("upstream closed a pooled connection") if conn.reused else _wrap(exc)
        error.__cause__ = exc
        raise error from exc


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


_EMPTY: Final[CIMultiDictProxy[str]] = CIMultiDictProxy(CIMultiDict())
_MULTIDICTS: Final = (CIMultiDict, CIMultiDictProxy)


# ---- the pool ----------------------------------------------------------------------------------


class _Site:
    """One upstream origin: where to connect, what `Host` to send, its idle connections."""

    __slots__ = (
        "addresses",
        "busy",
        "expires",
        "host",
        "host_line",
        "idle",
        "is_ip",
        "origin",
        "port",
        "tls",
    )

    def __init__(self, origin: str) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self.origin = origin
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        netloc = parts.netloc
        default = ":443" if self.tls else ":80"
        if netloc.endswith(default):
            netloc = netloc[: -len(default)]
        self.host_line = f"Host: {netloc}\r\n"
        try:
            ipaddress.ip_address(self.host)
            self.is_ip = True
        except ValueError:
            self.is_ip = False
        self.addresses: list[str] = []
        self.expires = 0.0
        self.idle: list[_Conn] = []  # a stack: the most recently used connection is reused first
        self.busy = 0  # connections handed out or being opened


class _Waiter:
    __slots__ = ("future", "site")

    def __init__(self, site: _Site, future: asyncio.Future[_Conn | None]) -> None:
        self.site = site
        self.future = future


class UpstreamClient:
    """One connection pool for every upstream, for the life of a worker process.

    It never follows redirects, never keeps cookies (one user's upstream cookie must not ride on
    the next user's request), never decompresses, never invents headers (only `Host`, from the URL,
    when the caller sends none, and the body's framing), and sends the path and query exactly as
    given. `read_timeout` is an idle timer re-armed by every chunk received, so long downloads and
    long polls are never cut off while data flows. At most `limit_per_host` connections per
    upstream and `limit` in all are in use; more requests wait (within `connect_timeout`).
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        limit: int = 256,
        limit_per_host: int = 64,
        keepalive_timeout: float = 4.0,  # below the 5 s idle timeout of Apache and friends (§3.2)
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._keepalive = keepalive_timeout
        self._sites: dict[str, _Site] = {}
        self._waiters: deque[_Waiter] = deque()
        self._busy = 0
        self._started = False
        self._closing = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._tls: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None  # websockets only
        self._loop: asyncio.AbstractEventLoop = cast(asyncio.AbstractEventLoop, None)

    async def start(self) -> None:
        """Open the pool; must run inside the event loop that will use it (e.g. in cleanup_ctx)."""
        if self._started:
            raise RuntimeError("UpstreamClient.start() was already called")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._sweeper = self._loop.call_later(self._keepalive, self._sweep)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit_per_host),
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self._connect_timeout,
                sock_connect=self._connect_timeout,
                sock_read=self._read_timeout,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            max_line_size=_MAX_HEADER_BYTES,
            max_field_size=_MAX_HEADER_BYTES,
            trust_env=False,  # never route legacy traffic through an HTTP_PROXY from the environment
        )

    async def close(self) -> None:
        if not self._started or self._closing:
            return
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(UpstreamUnavailable("the upstream client is closing"))
        for site in self._sites.values():
            for conn in site.idle:
                conn.abort()
            site.idle.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> UpstreamClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if not self._started or self._closing:
            raise RuntimeError("UpstreamClient is not started: await start() (or use `async with`) first")

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: AsyncIterable[bytes] | None,
        content_length: int | None,
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        """Send one request; use as `async with client.request(...) as response:`.

        `url` is origin plus the raw, still percent-encoded path and query; it is sent byte for byte.
        `headers` may be a multidict (repeated names are kept). `body` is None for a request without
        one (then no Content-Length or Transfer-Encoding is invented for GET/HEAD); with a body, a
        known `content_length` is sent as Content-Length (at most that many bytes are written),
        otherwise the body goes chunked. Errors while sending or reading the head are raised on entry;
        a header value with a control character raises ValueError here.
        """
        self._check_open()
        split = url.find("/", url.find("//") + 2)
        origin, target = (url, "/") if split < 0 else (url[:split], url[split:])
        site = self._sites.get(origin)
        if site is None:
            site = self._sites[origin] = _Site(origin)
        if body is None:
            framing = ""
        elif content_length is None:
            framing = "Transfer-Encoding: chunked\r\n"
        else:
            framing = f"Content-Length: {content_length}\r\n"
        head = _head(method, target, headers, site.host_line, framing)
        return _Exchange(self, site, method, head, body, content_length)

    # -- connections ---------------------------------------------------------------------------
    async def _acquire(self, site: _Site, fresh: bool) -> _Conn:
        """A connection to `site`: an idle one (unless `fresh`), else a new one; waits for a free slot
        while `limit_per_host` or `limit` connections are in use. Counts as busy until `_release`.
        `connect_timeout` covers the wait and the connect together."""
        if self._closing:
            raise UpstreamUnavailable("the upstream client is closing")
        if site.busy < self._limit_per_host and self._busy < self._limit:
            site.busy += 1
            self._busy += 1
            if not fresh and (conn := self._pop_idle(site)) is not None:
                return conn
            return await self._connect_in_slot(site, self._loop.time() + self._connect_timeout)
        deadline = self._loop.time() + self._connect_timeout
        handed = await self._wait_for_slot(site, deadline)
        if handed is not None:
            if not fresh:
                return handed
            handed.abort()  # the slot stays ours
        elif not fresh and (conn := self._pop_idle(site)) is not None:
            return conn
        return await self._connect_in_slot(site, deadline)

    async def _wait_for_slot(self, site: _Site, deadline: float) -> _Conn | None:
        """Queue for a slot: the result is a connection handed over with its slot, or None (a slot)."""
        future: asyncio.Future[_Conn | None] = self._loop.create_future()
        waiter = _Waiter(site, future)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                return await future
        except BaseException as exc:
            if future.done() and not future.cancelled() and future.exception() is None:
                granted = future.result()  # granted just as we gave up: give it back
                if granted is not None:
                    self._release(granted, not granted.closed)
                else:
                    self._free_slot(site)
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"no free connection to {site.origin} in time") from exc
            raise

    def _pop_idle(self, site: _Site) -> _Conn | None:
        idle = site.idle
        now = self._loop.time()
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self._keepalive:
                conn.abort()
                continue
            conn.reused = True
            return conn
        return None

    async def _connect_in_slot(self, site: _Site, deadline: float) -> _Conn:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._connect(site)
        except BaseException as exc:
            self._free_slot(site)
            if isinstance(exc, Exception) and not isinstance(exc, UpstreamError):
                raise _wrap(exc) from exc
            raise

    async def _connect(self, site: _Site) -> _Conn:
        loop = self._loop
        tls: ssl.SSLContext | None = None
        if site.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        addresses = [site.host] if site.is_ip else await self._resolve(site)
        error: Exception | None = None
        for index, address in enumerate(addresses):
            conn = _Conn(self, site)
            left = len(addresses) - index
            try:
                # With several addresses, one that never answers must leave time for the others.
                async with asyncio.timeout(None if left == 1 else self._connect_timeout / left):
                    await loop.create_connection(
                        lambda c=conn: c,
                        address,
                        site.port,
                        ssl=tls,
                        server_hostname=site.host if tls is not None else None,
                    )
            except OSError as exc:  # TimeoutError included
                error = exc
                continue
            return conn
        site.expires = 0.0  # every address failed: resolve again next time
        raise error if error is not None else OSError(f"no address for {site.host}")

    async def _resolve(self, site: _Site) -> list[str]:
        now = self._loop.time()
        if site.addresses and now < site.expires:
            return site.addresses
        infos = await self._loop.getaddrinfo(site.host, site.port, type=socket.SOCK_STREAM)
        addresses: list[str] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            if sockaddr[0] not in addresses:
                addresses.append(str(sockaddr[0]))
        site.addresses, site.expires = addresses, now + _DNS_TTL
        return addresses

    def _release(self, conn: _Conn, reuse: bool) -> None:
        """An exchange ended: hand the connection to a waiter of the same site, or pool it, or
        free its slot for the next waiter."""
        site = conn.site
        if reuse and not self._closing:
            for waiter in self._waiters:
                if waiter.site is site and not waiter.future.done():
                    self._waiters.remove(waiter)
                    conn.reused = True
                    waiter.future.set_result(conn)  # its slot goes with it
                    return
            conn.idle_since = self._loop.time()
            site.idle.append(conn)
        elif reuse:
            conn.abort()
        self._free_slot(site)

    def _free_slot(self, site: _Site) -> None:
        site.busy -= 1
        self._busy -= 1
        waiters = self._waiters
        if not waiters:
            return
        for waiter in list(waiters):
            if self._busy >= self._limit:
                return
            if waiter.future.done():
                waiters.remove(waiter)
                continue
            if waiter.site.busy < self._limit_per_host:
                waiters.remove(waiter)
                waiter.site.busy += 1
                self._busy += 1
                waiter.future.set_result(None)  # a slot: take an idle connection or open one

    def _forget_idle(self, conn: _Conn) -> None:
        """An idle connection was closed by the upstream."""
        idle = conn.site.idle
        if conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        """Close connections idle longer than the keep-alive timeout (reuse checks it too)."""
        now = self._loop.time()
        for site in self._sites.values():
            expired = [c for c in site.idle if now - c.idle_since > self._keepalive]
            for conn in expired:
                site.idle.remove(conn)
                conn.abort()
        if not self._closing:
            self._sweeper = self._loop.call_later(self._keepalive, self._sweep)

    # -- websockets ----------------------------------------------------------------------------
    async def websocket(
        self,
        url: str,
        headers: Mapping[str, str],
        protocols: Sequence[str] = (),
        *,
        heartbeat: float | None = 30.0,
        max_msg_size: int = 4 * 1024 * 1024,
    ) -> UpstreamWebSocket:
        """Open a websocket to `url` (ws:// or http://, sent byte for byte), offering `protocols`.

        The handshake headers are generated here; any the caller passes are dropped. The connect
        and read timeouts apply to the handshake; afterwards only `heartbeat` detects a dead peer.
        """
        self._check_open()
        assert self._session is not None
        out = CIMultiDict(headers)
        for name in _HANDSHAKE_HEADERS:
            out.popall(name, None)
        try:
            ws = await self._session.ws_connect(
                URL(url, encoded=True),
                headers=out,
                protocols=protocols,
                heartbeat=heartbeat,
                max_msg_size=max_msg_size,
                compress=0,
            )
        except aiohttp.WSServerHandshakeError as exc:
            # The upstream answered the upgrade with plain HTTP: the proxy relays that status.
            refused = UpstreamRefusedUpgrade(exc.status)
            refused.__cause__ = exc
            raise refused from exc
        except Exception as exc:
            error = _wrap(exc)
        else:
            return UpstreamWebSocket(ws)
        raise error


def _head(method: str, target: str, headers: Mapping[str, str], host_line: str, framing: str) -> bytes:
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


class UpstreamWebSocket:
    """An open websocket to an upstream. Sends raise ConnectionResetError once it is gone, as the
    browser leg's do; `receive()` returns CLOSE/CLOSED/ERROR messages instead of raising."""

    __slots__ = ("_ws",)

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[Literal[True]]) -> None:
        self._ws = ws

    @property
    def protocol(self) -> str | None:
        """The subprotocol the upstream chose; offer the browser exactly this one."""
        return self._ws.protocol

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def receive(self) -> aiohttp.WSMessage:
        return await self._ws.receive()

    def __aiter__(self) -> AsyncIterator[aiohttp.WSMessage]:
        """Messages until the upstream closes (the CLOSE message itself is not yielded)."""
        return aiter(self._ws)

    async def send_str(self, data: str) -> None:
        await self._ws.send_str(data)

    async def send_bytes(self, data: bytes) -> None:
        await self._ws.send_bytes(data)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> None:
        await self._ws.close(code=code, message=message)


__all__ = [
    "ERROR_TABLE",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamRefusedUpgrade",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "UpstreamWebSocket",
    "upstream_error_class",
]
