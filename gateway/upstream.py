"""The upstream leg: one pooled HTTP client behind a small interface, with transport errors mapped once.

The proxy reaches legacy apps only through `UpstreamClient`, so the aiohttp client underneath can be
swapped for a leaner one without touching the proxy: no aiohttp client type crosses this boundary
(websocket messages are aiohttp's `WSMessage`, the type the browser leg uses too).

    UpstreamError
    ├── UpstreamUnavailable     refused, reset, DNS, TLS, malformed response: the proxy answers 502
    └── UpstreamTimeout         connect (incl. waiting for a pooled connection) or idle read: 504

An exception raised by the caller's request-body iterator (a size cap, a browser that went away)
reaches the caller as itself, never wrapped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Final, Literal, Protocol

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# aiohttp invents these when absent; upstreams must see only what the client sent (AIOHTTP.md §1.7).
_SKIP_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# Framing belongs to this module (from `content_length`); a caller's copy would conflict or lie.
_FRAMING_HEADERS: Final = ("Content-Length", "Transfer-Encoding")
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


# First match wins. aiohttp's timeouts are ClientErrors too, so they come first; asyncio.TimeoutError
# is TimeoutError, an OSError, so it precedes the OSError row as well.
ERROR_TABLE: Final[tuple[tuple[type[Exception], type[UpstreamError]], ...]] = (
    (asyncio.TimeoutError, UpstreamTimeout),  # ServerTimeoutError, ConnectionTimeoutError, SocketTimeoutError
    (aiohttp.ClientError, UpstreamUnavailable),  # refused, DNS, TLS, disconnected, bad framing, handshake
    (OSError, UpstreamUnavailable),  # a socket error aiohttp let through unwrapped
)


def upstream_error_class(exc_type: type[BaseException]) -> type[UpstreamError] | None:
    """The `UpstreamError` subclass a transport exception maps to; None lets it propagate as is."""
    for source, target in ERROR_TABLE:
        if issubclass(exc_type, source):
            return target
    return None


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

    def body(self) -> AsyncIterator[bytes]:
        """The body bytes as they arrive (nothing for HEAD, 1xx, 204, 304); raises `UpstreamError`."""
        ...


class _BodyTap:
    """The caller's body iterator, remembering what it raised: aiohttp reports that only as the
    `__cause__` of a ClientConnectionError, indistinguishable from a socket error by type."""

    __slots__ = ("error", "source")

    def __init__(self, source: AsyncIterable[bytes]) -> None:
        self.source = source
        self.error: Exception | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        iterator = aiter(self.source)
        while True:
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            except Exception as exc:
                self.error = exc
                raise
            yield chunk


def _translate(exc: Exception, tap: _BodyTap | None) -> Exception:
    if tap is not None and tap.error is not None:
        return tap.error
    target = upstream_error_class(type(exc))
    if target is None:
        return exc
    error = target(f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class _Response:
    __slots__ = ("_resp", "_tap", "headers", "reason", "status")

    def __init__(self, resp: aiohttp.ClientResponse, tap: _BodyTap | None) -> None:
        self._resp = resp
        self._tap = tap
        self.status = resp.status
        self.reason = resp.reason or ""
        self.headers = resp.headers

    async def body(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        while True:
            try:
                chunk = await content.readany()  # whatever has arrived: no extra copies (AIOHTTP.md §1.10)
            except Exception as exc:
                error = _translate(exc, self._tap)
            else:
                if not chunk:
                    return
                yield chunk
                continue
            raise error  # outside the except block, so the error's own context is left alone


class _Exchange:
    """`async with` one request: sends it and reads the head on entry; on exit returns the connection
    to the pool if the body was read to its end, and closes it otherwise."""

    __slots__ = ("_open", "_request", "_tap")

    def __init__(
        self,
        open_request: Callable[[], AbstractAsyncContextManager[aiohttp.ClientResponse]],
        tap: _BodyTap | None,
    ) -> None:
        self._open = open_request  # deferred, so an exchange never entered leaves nothing behind
        self._request: AbstractAsyncContextManager[aiohttp.ClientResponse] | None = None
        self._tap = tap

    async def __aenter__(self) -> UpstreamResponse:
        self._request = self._open()
        try:
            resp = await self._request.__aenter__()
        except Exception as exc:
            error = _translate(exc, self._tap)
        else:
            return _Response(resp, self._tap)
        raise error

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._request is not None
        await self._request.__aexit__(exc_type, exc, tb)


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


class UpstreamClient:
    """One connection pool for every upstream, for the life of a worker process.

    It never follows redirects, never keeps cookies (one user's upstream cookie must not ride on
    the next user's request), never decompresses, never invents headers, and sends the path and
    query exactly as given. `read_timeout` is an idle timer re-armed by every chunk received, so
    long downloads and long polls are never cut off while data flows.
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
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._limits = (limit, limit_per_host, keepalive_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the pool; must run inside the event loop that will use it (e.g. in cleanup_ctx)."""
        if self._session is not None:
            raise RuntimeError("UpstreamClient.start() was already called")
        limit, limit_per_host, keepalive_timeout = self._limits
        connector = aiohttp.TCPConnector(
            limit=limit, limit_per_host=limit_per_host, keepalive_timeout=keepalive_timeout, ttl_dns_cache=60
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            max_line_size=_MAX_HEADER_BYTES,
            max_field_size=_MAX_HEADER_BYTES,
            trust_env=False,  # never route legacy traffic through an HTTP_PROXY from the environment
        )

    async def close(self) -> None:
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

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient is not started: await start() (or use `async with`) first")
        return self._session

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
        otherwise the body goes chunked. Errors while sending or reading the head are raised on entry.
        """
        session = self._open_session()
        out = CIMultiDict(headers)
        for name in _FRAMING_HEADERS:
            out.popall(name, None)
        tap = None if body is None else _BodyTap(body)
        if tap is not None and content_length is not None:
            out["Content-Length"] = str(content_length)
        target = URL(url, encoded=True)  # never params=, which re-encodes the query (AIOHTTP.md §1.2)
        data = None if tap is None else tap.chunks()
        return _Exchange(
            lambda: session.request(method, target, headers=out, data=data, allow_redirects=False), tap
        )

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
        session = self._open_session()
        out = CIMultiDict(headers)
        for name in _HANDSHAKE_HEADERS:
            out.popall(name, None)
        try:
            ws = await session.ws_connect(
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
            error = _translate(exc, None)
        else:
            return UpstreamWebSocket(ws)
        raise error
