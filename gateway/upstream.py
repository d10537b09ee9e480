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

The parts live in three modules: this one (the public interface: `UpstreamResponse`, the pool
`UpstreamClient`, `UpstreamWebSocket`, and the errors re-exported from `gateway.upstream_errors`),
`gateway.upstream_errors` (the error classes, `ERROR_TABLE`, `upstream_error_class`) and
`gateway.upstream_conn` (one connection and one exchange of the plain-HTTP transport).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Final, Literal, Protocol, cast
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.upstream_conn import Conn, Exchange, head, wrap
from gateway.upstream_errors import (
    ERROR_TABLE,
    UpstreamError,
    UpstreamRefusedUpgrade,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_error_class,
)

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
_DNS_TTL: Final = 60.0


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


# ---- the pool ----------------------------------------------------------------------------------


class Site:
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
        self.idle: list[Conn] = []  # a stack: the most recently used connection is reused first
        self.busy = 0  # connections handed out or being opened


class _Waiter:
    __slots__ = ("future", "site")

    def __init__(self, site: Site, future: asyncio.Future[Conn | None]) -> None:
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
        self._sites: dict[str, Site] = {}
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
            site = self._sites[origin] = Site(origin)
        if body is None:
            framing = ""
        elif content_length is None:
            framing = "Transfer-Encoding: chunked\r\n"
        else:
            framing = f"Content-Length: {content_length}\r\n"
        request_head = head(method, target, headers, site.host_line, framing)
        return Exchange(self, site, method, request_head, body, content_length)

    # -- connections ---------------------------------------------------------------------------
    async def _acquire(self, site: Site, fresh: bool) -> Conn:
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

    async def _wait_for_slot(self, site: Site, deadline: float) -> Conn | None:
        """Queue for a slot: the result is a connection handed over with its slot, or None (a slot)."""
        future: asyncio.Future[Conn | None] = self._loop.create_future()
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

    def _pop_idle(self, site: Site) -> Conn | None:
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

    async def _connect_in_slot(self, site: Site, deadline: float) -> Conn:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._connect(site)
        except BaseException as exc:
            self._free_slot(site)
            if isinstance(exc, Exception) and not isinstance(exc, UpstreamError):
                raise wrap(exc) from exc
            raise

    async def _connect(self, site: Site) -> Conn:
        loop = self._loop
        tls: ssl.SSLContext | None = None
        if site.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        addresses = [site.host] if site.is_ip else await self._resolve(site)
        error: Exception | None = None
        for index, address in enumerate(addresses):
            conn = Conn(self, site)
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

    async def _resolve(self, site: Site) -> list[str]:
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

    def _release(self, conn: Conn, reuse: bool) -> None:
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

    def _free_slot(self, site: Site) -> None:
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

    def _forget_idle(self, conn: Conn) -> None:
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
            error = wrap(exc)
        else:
            return UpstreamWebSocket(ws)
        raise error


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
