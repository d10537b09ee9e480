"""The upstream leg against real loopback servers: byte-exact forwarding, framing, no invented headers,
no shared cookies, no redirects, streaming, and the one table that maps transport errors."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
import aiohttp.client_exceptions
import pytest
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from pytest_aiohttp import AiohttpServer

from gateway.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_error_class,
)
from upstream_example import create_app
from upstream_example.api import pattern_chunks

MiB = 1024 * 1024
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Seen:
    """One request as it arrived on the wire."""

    head: bytes  # request line and header lines, without the blank line
    body: bytes  # de-chunked when it came chunked
    connection: int  # which TCP connection carried it

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def headers(self) -> list[tuple[str, str]]:
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        return [(name.lower(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]

    def header(self, name: str) -> str | None:
        return dict(self.headers).get(name)


@dataclass
class RawUpstream:
    """Records each request's bytes and answers with canned bytes, keeping the connection open, so a
    framing mistake shows up as a hang or a misparsed reply."""

    respond: Callable[[Seen], bytes]
    origin: str = ""
    seen: list[Seen] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
            seen = Seen(head, b"", id(writer))
            if (length := seen.header("content-length")) is not None:
                seen.body = await reader.readexactly(int(length))
            elif seen.header("transfer-encoding") == "chunked":
                seen.body = await _read_chunked(reader)
            self.seen.append(seen)
            writer.write(self.respond(seen))
            await writer.drain()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    await reader.readuntil(b"\r\n")  # no trailers: the blank line that ends the message
    return body


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TcpFactory = Callable[[Handler], Awaitable[str]]
RawFactory = Callable[..., Awaitable[RawUpstream]]


@pytest.fixture
async def tcp_server() -> AsyncIterator[TcpFactory]:
    """Starts loopback TCP servers running a handler per connection; returns each one's origin and
    closes every connection at teardown."""
    servers: list[asyncio.Server] = []
    connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(handler: Handler) -> str:
        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections[task] = writer
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # the client went away, as it may
            finally:
                writer.close()

        server = await asyncio.start_server(connection, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
    for writer in connections.values():
        writer.close()  # handlers waiting to read see the end of the stream and return
    if connections:
        await asyncio.wait(connections, timeout=2)


@pytest.fixture
def raw_upstream(tcp_server: TcpFactory) -> RawFactory:
    async def start(respond: Callable[[Seen], bytes] = lambda _: OK) -> RawUpstream:
        upstream = RawUpstream(respond)
        upstream.origin = await tcp_server(upstream.serve)
        return upstream

    return start


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    async with UpstreamClient(connect_timeout=2.0, read_timeout=2.0) as upstream_client:
        yield upstream_client


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def fetch(
    client: UpstreamClient,
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    body: Iterable[bytes] | None = None,
    length: int | None = None,
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    stream = None if body is None else chunks_of(*body)
    async with client.request(method, url, headers or {}, stream, length) as response:
        data = b"".join([chunk async for chunk in response.body()])
        return response.status, response.headers, data


async def test_path_and_query_reach_upstream_byte_for_byte(
    client: UpstreamClient, raw_upstream: RawFactory
) -> None:
    """Encoded slashes, `%21`, `%7E`, `;` parameters, `+`, empty keys and repeated keys are not requoted."""
    upstream = await raw_upstream()
    target = "/a%2Fb/c%21d;x=1/%7E?q=%2F+a%20b&x=!%21&e&=&dup=1&dup=2"
    await fetch(client, "GET", upstream.origin + target)
    assert upstream.seen[0].request_line == b"GET " + target.encode() + b" HTTP/1.1"


@pytest.mark.parametrize(
    ("method", "body", "expected"),
    [
        ("GET", None, {"host", "x-probe"}),
        ("POST", [b"data"], {"host", "x-probe", "transfer-encoding"}),
    ],
    ids=["get", "streamed-post"],
)
async def test_no_headers_are_invented(
    client: UpstreamClient,
    raw_upstream: RawFactory,
    method: str,
    body: list[bytes] | None,
    expected: set[str],
) -> None:
    """No User-Agent, Accept, Accept-Encoding or Content-Type is sent unless the caller sent it."""
    upstream = await raw_upstream()
    await fetch(client, method, upstream.origin + "/", {"X-Probe": "1"}, body)
    assert {name for name, _ in upstream.seen[0].headers} == expected


async def test_caller_headers_are_sent_as_given(client: UpstreamClient, raw_upstream: RawFactory) -> None:
    """The caller's Host wins over the URL's, and repeated header names arrive as separate lines in order."""
    upstream = await raw_upstream()
    headers = CIMultiDict([("Host", "intranet.example"), ("X-Dup", "1"), ("X-Dup", "2")])
    await fetch(client, "GET", upstream.origin + "/", headers)
    assert upstream.seen[0].headers == [("host", "intranet.example"), ("x-dup", "1"), ("x-dup", "2")]


async def test_get_without_body_is_sent_without_framing(
    client: UpstreamClient, raw_upstream: RawFactory
) -> None:
    """A GET without a body carries neither Transfer-Encoding nor Content-Length (legacy servers choke)."""
    upstream = await raw_upstream()
    await fetch(client, "GET", upstream.origin + "/")
    assert upstream.seen[0].header("transfer-encoding") is None
    assert upstream.seen[0].header("content-length") is None


async def test_known_length_body_is_sent_unchunked(client: UpstreamClient, raw_upstream: RawFactory) -> None:
    """A body whose length is known goes out with that Content-Length and without chunking."""
    upstream = await raw_upstream()
    await fetch(client, "POST", upstream.origin + "/", body=[b"hello ", b"world"], length=11)
    assert upstream.seen[0].header("content-length") == "11"
    assert upstream.seen[0].header("transfer-encoding") is None
    assert upstream.seen[0].body == b"hello world"


async def test_unknown_length_body_is_sent_chunked(client: UpstreamClient, raw_upstream: RawFactory) -> None:
    """A body of unknown length goes out chunked, with no Content-Length."""
    upstream = await raw_upstream()
    await fetch(client, "PUT", upstream.origin + "/", body=[b"hello ", b"world"])
    assert upstream.seen[0].header("transfer-encoding") == "chunked"
    assert upstream.seen[0].header("content-length") is None
    assert upstream.seen[0].body == b"hello world"


async def test_callers_framing_headers_are_replaced(client: UpstreamClient, raw_upstream: RawFactory) -> None:
    """A caller's Content-Length and Transfer-Encoding give way to the client's own framing."""
    upstream = await raw_upstream()
    headers = {"Transfer-Encoding": "chunked", "Content-Length": "999"}
    await fetch(client, "POST", upstream.origin + "/", headers, [b"hello"], length=5)
    assert upstream.seen[0].header("content-length") == "5"
    assert upstream.seen[0].header("transfer-encoding") is None


async def test_every_set_cookie_is_returned(client: UpstreamClient, raw_upstream: RawFactory) -> None:
    """Two Set-Cookie headers from the upstream both reach the caller, in order."""
    reply = (
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; Path=/x\r\nContent-Length: 0\r\n\r\n"
    )
    upstream = await raw_upstream(lambda _: reply)
    _, headers, _ = await fetch(client, "GET", upstream.origin + "/")
    assert headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/x"]


async def test_large_response_headers_pass(client: UpstreamClient, raw_upstream: RawFactory) -> None:
    """A 20 kB Set-Cookie (legacy SSO) is accepted rather than rejected by the default 8190-byte limit."""
    cookie = "sso=" + "v" * 20000
    upstream = await raw_upstream(
        lambda _: f"HTTP/1.1 200 OK\r\nSet-Cookie: {cookie}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    _, headers, _ = await fetch(client, "GET", upstream.origin + "/")
    assert headers["Set-Cookie"] == cookie


async def test_compressed_body_passes_untouched(client: UpstreamClient, raw_upstream: RawFactory) -> None:
    """A gzip body arrives byte for byte with its Content-Encoding and Content-Length, not decompressed."""
    encoded = gzip.compress(b"legacy page " * 100)
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(encoded)}\r\n\r\n"
    upstream = await raw_upstream(lambda _: head.encode() + encoded)
    _, headers, data = await fetch(client, "GET", upstream.origin + "/", {"Accept-Encoding": "gzip"})
    assert data == encoded
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Length"] == str(len(encoded))


@pytest.mark.parametrize(
    ("method", "status_line", "kept"),
    [
        ("HEAD", b"200 OK", "Content-Length"),
        ("GET", b"204 No Content", "X-Kept"),
        ("GET", b"304 Not Modified", "ETag"),
    ],
    ids=["head", "204", "304"],
)
async def test_bodiless_responses_are_framed_correctly(
    client: UpstreamClient, raw_upstream: RawFactory, method: str, status_line: bytes, kept: str
) -> None:
    """HEAD, 204 and 304 yield no body even with a Content-Length, and the connection stays usable."""

    def respond(seen: Seen) -> bytes:
        if seen.request_line.startswith(b"GET /next "):
            return OK
        return b"HTTP/1.1 " + status_line + b'\r\nContent-Length: 1234\r\nETag: "v1"\r\nX-Kept: 1\r\n\r\n'

    upstream = await raw_upstream(respond)
    _, headers, data = await fetch(client, method, upstream.origin + "/")
    assert data == b""
    assert kept in headers
    assert (await fetch(client, "GET", upstream.origin + "/next"))[2] == b"ok"
    assert upstream.seen[0].connection == upstream.seen[1].connection


async def test_connection_with_unread_body_is_not_reused(
    client: UpstreamClient, raw_upstream: RawFactory
) -> None:
    """Leaving an exchange before its body ends closes that connection instead of pooling it mid-message."""
    upstream = await raw_upstream(lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    async with client.request("GET", upstream.origin + "/", {}, None, None) as response:
        assert response.status == 200
    async with client.request("GET", upstream.origin + "/", {}, None, None):
        pass
    assert upstream.seen[0].connection != upstream.seen[1].connection


async def test_upstream_cookies_are_not_replayed(
    client: UpstreamClient, aiohttp_server: AiohttpServer
) -> None:
    """A cookie the upstream set on one user's response never rides on the next request (SECURITY 137)."""

    async def set_cookie(request: web.Request) -> web.Response:
        response = web.Response(text="set")
        response.set_cookie("upsess", "A", path="/")
        return response

    async def show_cookie(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("Cookie", "<none>"))

    app = web.Application()
    app.router.add_get("/set", set_cookie)
    app.router.add_get("/show", show_cookie)
    server = await aiohttp_server(app)
    origin = f"http://localhost:{server.port}"  # a host name: aiohttp's jar skips IP-literal hosts
    await fetch(client, "GET", origin + "/set")
    assert (await fetch(client, "GET", origin + "/show"))[2] == b"<none>"


async def test_redirects_are_returned_not_followed(client: UpstreamClient, raw_upstream: RawFactory) -> None:
    """A 302 goes back to the caller with its Location, and the redirect target is never requested."""
    upstream = await raw_upstream(
        lambda _: b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"
    )
    status, headers, _ = await fetch(client, "GET", upstream.origin + "/")
    assert (status, headers["Location"]) == (302, "/elsewhere")
    assert len(upstream.seen) == 1


async def test_refused_connection_is_unavailable(client: UpstreamClient, unused_tcp_port: int) -> None:
    """Nothing listening on the upstream's port raises UpstreamUnavailable (502)."""
    with pytest.raises(UpstreamUnavailable):
        await fetch(client, "GET", f"http://127.0.0.1:{unused_tcp_port}/")


async def test_upstream_closing_mid_body_is_unavailable(
    client: UpstreamClient, tcp_server: TcpFactory
) -> None:
    """An upstream closing before its Content-Length is complete makes body() raise UpstreamUnavailable."""

    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()

    origin = await tcp_server(short)
    async with client.request("GET", origin + "/", {}, None, None) as response:
        with pytest.raises(UpstreamUnavailable):
            async for _ in response.body():
                pass


def stall_after(head: bytes) -> Handler:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        await reader.read()  # silent until the client (or the teardown) closes the connection

    return stall


async def test_slow_upstream_is_timeout(tcp_server: TcpFactory) -> None:
    """An upstream that sends no response head within the read timeout raises UpstreamTimeout (504)."""
    origin = await tcp_server(stall_after(b""))
    async with UpstreamClient(connect_timeout=1.0, read_timeout=0.2) as client:
        with pytest.raises(UpstreamTimeout):
            await fetch(client, "GET", origin + "/")


async def test_stalled_body_is_timeout(tcp_server: TcpFactory) -> None:
    """An upstream that goes silent mid-body makes body() raise UpstreamTimeout."""
    origin = await tcp_server(stall_after(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"))
    async with (
        UpstreamClient(connect_timeout=1.0, read_timeout=0.2) as client,
        client.request("GET", origin + "/", {}, None, None) as response,
    ):
        with pytest.raises(UpstreamTimeout):
            async for _ in response.body():
                pass


async def test_read_timeout_is_idle_not_total(tcp_server: TcpFactory) -> None:
    """A response that keeps trickling outlives the read timeout: only silence longer than it fails."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
        for _ in range(8):
            await asyncio.sleep(0.1)
            writer.write(b"x")
        await reader.read()

    origin = await tcp_server(trickle)
    async with UpstreamClient(connect_timeout=1.0, read_timeout=0.3) as client:
        assert (await fetch(client, "GET", origin + "/"))[2] == b"x" * 8


class BodyTooLarge(Exception):
    """Stands for the proxy's size cap."""


@pytest.mark.parametrize("length", [None, 100], ids=["chunked", "content-length"])
@pytest.mark.parametrize("sent_first", [0, 2], ids=["at-start", "mid-stream"])
async def test_body_iterator_error_propagates_as_itself(
    client: UpstreamClient, raw_upstream: RawFactory, length: int | None, sent_first: int
) -> None:
    """An exception raised by the request-body iterator reaches the caller as that very exception."""
    error = BodyTooLarge()

    async def capped() -> AsyncIterator[bytes]:
        for _ in range(sent_first):
            yield b"x" * 10
            await asyncio.sleep(0.01)
        raise error

    upstream = await raw_upstream()
    with pytest.raises(BodyTooLarge) as raised:
        async with client.request("POST", upstream.origin + "/", {}, capped(), length):
            pass
    assert raised.value is error


async def test_large_download_streams_with_bounded_memory(
    client: UpstreamClient, aiohttp_server: AiohttpServer
) -> None:
    """64 MiB arrive intact in many small chunks while memory stays far below the body's size."""
    size = 64 * MiB
    server = await aiohttp_server(create_app())
    expected = hashlib.sha256()
    for chunk in pattern_chunks(size):
        expected.update(chunk)
    digest, sizes = hashlib.sha256(), []
    tracemalloc.start()
    try:
        async with client.request(
            "GET", str(server.make_url(f"/download?size={size}")), {}, None, None
        ) as resp:
            async for chunk in resp.body():
                digest.update(chunk)
                sizes.append(len(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (sum(sizes), digest.hexdigest()) == (size, expected.hexdigest())
    assert max(sizes) <= MiB and len(sizes) >= 64
    assert peak < 8 * MiB


async def test_websocket_relays_and_negotiates(client: UpstreamClient, aiohttp_server: AiohttpServer) -> None:
    """The upstream websocket picks from the offered subprotocols and echoes text, bytes and the close code;
    handshake headers passed by the caller are dropped rather than forwarded."""
    server = await aiohttp_server(create_app())
    stray = {"Sec-WebSocket-Protocol": "bogus", "Sec-WebSocket-Key": "forged", "Upgrade": "h2c"}
    ws = await client.websocket(str(server.make_url("/ws")), stray, ["echo.v2"])
    assert ws.protocol == "echo.v2"
    await ws.send_str("hello")
    assert (await ws.receive()).data == "hello"
    await ws.send_bytes(b"\x00\x01")
    assert (await ws.receive()).data == b"\x00\x01"
    await ws.send_str("close:4001")
    assert (await ws.receive()).type is WSMsgType.CLOSE
    assert ws.close_code == 4001


async def test_idle_websocket_outlives_read_timeout(aiohttp_server: AiohttpServer) -> None:
    """The HTTP read timeout does not apply to an upgraded websocket, so a quiet one stays open."""
    server = await aiohttp_server(create_app())
    async with UpstreamClient(connect_timeout=1.0, read_timeout=0.2) as client:
        ws = await client.websocket(str(server.make_url("/ws")), {}, heartbeat=None)
        await asyncio.sleep(0.6)
        await ws.send_str("still there")
        assert (await ws.receive()).data == "still there"
        await ws.close()


async def test_websocket_refused_upgrade_is_unavailable(
    client: UpstreamClient, aiohttp_server: AiohttpServer
) -> None:
    """An upstream that answers the upgrade with plain HTTP raises UpstreamUnavailable."""
    server = await aiohttp_server(create_app())
    with pytest.raises(UpstreamUnavailable):
        await client.websocket(str(server.make_url("/public/")), {})


async def test_request_before_start_fails_loudly() -> None:
    """Using a client that was never started raises an error that says how to start it."""
    with pytest.raises(RuntimeError, match="start"):
        UpstreamClient(connect_timeout=1.0, read_timeout=1.0).request(
            "GET", "http://127.0.0.1:1/", {}, None, None
        )


# Every exception class aiohttp's client exports, with the class it must become. A new aiohttp class
# fails test_every_aiohttp_client_error_is_listed until someone decides its mapping here.
ERROR_MAPPING: dict[type[BaseException], type[UpstreamError] | None] = {
    aiohttp.ClientError: UpstreamUnavailable,
    aiohttp.ClientConnectionError: UpstreamUnavailable,
    aiohttp.ClientConnectionResetError: UpstreamUnavailable,
    aiohttp.ClientOSError: UpstreamUnavailable,
    aiohttp.ClientConnectorError: UpstreamUnavailable,
    aiohttp.ClientProxyConnectionError: UpstreamUnavailable,
    aiohttp.ClientSSLError: UpstreamUnavailable,
    aiohttp.ClientConnectorDNSError: UpstreamUnavailable,
    aiohttp.ClientConnectorSSLError: UpstreamUnavailable,
    aiohttp.ClientConnectorCertificateError: UpstreamUnavailable,
    aiohttp.ConnectionTimeoutError: UpstreamTimeout,
    aiohttp.SocketTimeoutError: UpstreamTimeout,
    aiohttp.ServerConnectionError: UpstreamUnavailable,
    aiohttp.ServerTimeoutError: UpstreamTimeout,
    aiohttp.ServerDisconnectedError: UpstreamUnavailable,
    aiohttp.ServerFingerprintMismatch: UpstreamUnavailable,
    aiohttp.ClientResponseError: UpstreamUnavailable,
    aiohttp.ClientHttpProxyError: UpstreamUnavailable,
    aiohttp.WSServerHandshakeError: UpstreamUnavailable,
    aiohttp.ContentTypeError: UpstreamUnavailable,
    aiohttp.ClientPayloadError: UpstreamUnavailable,
    aiohttp.UploadAbortedError: UpstreamUnavailable,
    aiohttp.InvalidURL: UpstreamUnavailable,
    aiohttp.InvalidUrlClientError: UpstreamUnavailable,
    aiohttp.RedirectClientError: UpstreamUnavailable,
    aiohttp.NonHttpUrlClientError: UpstreamUnavailable,
    aiohttp.InvalidUrlRedirectClientError: UpstreamUnavailable,
    aiohttp.NonHttpUrlRedirectClientError: UpstreamUnavailable,
    aiohttp.WSMessageTypeError: None,  # a TypeError from receive_str()/receive_json(), never called here
    asyncio.TimeoutError: UpstreamTimeout,
    ConnectionRefusedError: UpstreamUnavailable,
    ConnectionResetError: UpstreamUnavailable,
}


@pytest.mark.parametrize("exc_type", list(ERROR_MAPPING), ids=lambda exc_type: exc_type.__name__)
def test_error_table_maps_each_transport_error(exc_type: type[BaseException]) -> None:
    """Each aiohttp and socket error maps to the UpstreamError subclass the proxy answers 502 or 504 for."""
    assert upstream_error_class(exc_type) is ERROR_MAPPING[exc_type]


def test_every_aiohttp_client_error_is_listed() -> None:
    """Every exception class aiohttp's client exports has a decided mapping above."""
    exported = {getattr(aiohttp.client_exceptions, name) for name in aiohttp.client_exceptions.__all__}
    assert {cls for cls in exported if isinstance(cls, type)} <= ERROR_MAPPING.keys()


# ---- the transport: framing, keep-alive, the pool ------------------------------------------------


async def test_interim_responses_are_skipped(client: UpstreamClient, raw_upstream: RawFactory) -> None:
    """`100 Continue` (and any other 1xx) before the final response is skipped, not returned."""
    upstream = await raw_upstream(
        lambda _: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    )
    status, headers, data = await fetch(client, "POST", upstream.origin + "/", body=[b"x"], length=1)
    assert (status, data, "Link" in headers) == (200, b"ok", False)
    assert (await fetch(client, "GET", upstream.origin + "/"))[2] == b"ok"
    assert upstream.seen[0].connection == upstream.seen[1].connection


async def test_chunked_response_is_dechunked_and_connection_reused(
    client: UpstreamClient, raw_upstream: RawFactory
) -> None:
    """A chunked response arrives without its framing and leaves the connection reusable."""
    upstream = await raw_upstream(
        lambda _: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert (await fetch(client, "GET", upstream.origin + "/"))[2] == b"abcde"
    assert (await fetch(client, "GET", upstream.origin + "/"))[2] == b"abcde"
    assert upstream.seen[0].connection == upstream.seen[1].connection


async def test_response_without_length_is_read_until_close(
    client: UpstreamClient, tcp_server: TcpFactory
) -> None:
    """Neither Content-Length nor chunked: the body is everything until the upstream closes."""
    connections = 0

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nfirst part, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"second part")
        await writer.drain()

    origin = await tcp_server(until_close)
    assert (await fetch(client, "GET", origin + "/"))[2] == b"first part, second part"
    assert (await fetch(client, "GET", origin + "/"))[2] == b"first part, second part"
    assert connections == 2


async def test_connection_close_is_honoured(client: UpstreamClient, raw_upstream: RawFactory) -> None:
    """A response with `Connection: close` is the connection's last: the next request opens another."""
    upstream = await raw_upstream(
        lambda _: b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    )
    await fetch(client, "GET", upstream.origin + "/")
    await fetch(client, "GET", upstream.origin + "/")
    assert upstream.seen[0].connection != upstream.seen[1].connection


def closes_second_request(replies: dict[str, bytes] | None = None) -> tuple[Handler, list[bytes]]:
    """An upstream that answers the first request of each connection and closes the connection when
    a second one arrives on it: the race of a keep-alive timeout on the upstream's side."""
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b"\r\n", 1)[0])
        if (length := _content_length(head)) is not None:
            await reader.readexactly(length)
        writer.write(OK)
        await writer.drain()
        second = await reader.readuntil(b"\r\n\r\n")
        seen.append(second.split(b"\r\n", 1)[0])
        writer.write((replies or {}).get("second", b""))
        await writer.drain()
        writer.transport.abort()

    return handler, seen


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


async def test_stale_pooled_connection_is_retried_for_idempotent_requests(
    client: UpstreamClient, tcp_server: TcpFactory
) -> None:
    """A GET on a pooled connection the upstream closes before answering is retried on a new one."""
    handler, seen = closes_second_request()
    origin = await tcp_server(handler)
    assert (await fetch(client, "GET", origin + "/one"))[2] == b"ok"
    assert (await fetch(client, "GET", origin + "/two"))[2] == b"ok"
    assert seen == [b"GET /one HTTP/1.1", b"GET /two HTTP/1.1", b"GET /two HTTP/1.1"]


async def test_stale_pooled_connection_is_not_retried_with_a_body(
    client: UpstreamClient, tcp_server: TcpFactory
) -> None:
    """A POST whose pooled connection closes is not replayed (its body was consumed): 502."""
    handler, seen = closes_second_request()
    origin = await tcp_server(handler)
    await fetch(client, "GET", origin + "/one")
    with pytest.raises(UpstreamUnavailable):
        await fetch(client, "POST", origin + "/two", body=[b"data"], length=4)
    assert seen == [b"GET /one HTTP/1.1", b"POST /two HTTP/1.1"]


async def test_partial_response_is_not_retried(client: UpstreamClient, tcp_server: TcpFactory) -> None:
    """Once any byte of the response arrived, a closed connection is an error, even for a GET."""
    handler, seen = closes_second_request({"second": b"HTTP/1.1 200 OK\r\nContent-"})
    origin = await tcp_server(handler)
    await fetch(client, "GET", origin + "/one")
    with pytest.raises(UpstreamUnavailable):
        await fetch(client, "GET", origin + "/two")
    assert len(seen) == 2


async def test_pool_is_bounded_per_host_and_waiters_are_served(tcp_server: TcpFactory) -> None:
    """With limit_per_host=2, six concurrent requests share two connections and all succeed."""
    open_now = most = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(0.05)
                writer.write(OK)
                await writer.drain()
        finally:
            open_now -= 1

    origin = await tcp_server(slow)
    async with UpstreamClient(connect_timeout=2.0, read_timeout=2.0, limit_per_host=2) as client:
        results = await asyncio.gather(*(fetch(client, "GET", origin + f"/{i}") for i in range(6)))
    assert [r[2] for r in results] == [b"ok"] * 6
    assert most == 2


async def test_waiting_for_a_pooled_connection_counts_as_connect_timeout(tcp_server: TcpFactory) -> None:
    """A request that cannot get a connection within connect_timeout raises UpstreamTimeout (504)."""
    origin = await tcp_server(stall_after(b""))
    async with UpstreamClient(connect_timeout=0.2, read_timeout=5.0, limit_per_host=1) as client:
        first = asyncio.create_task(fetch(client, "GET", origin + "/"))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamTimeout):
            await fetch(client, "GET", origin + "/")
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_switching_protocols_on_a_plain_request_is_unavailable(
    client: UpstreamClient, raw_upstream: RawFactory
) -> None:
    """A 101 answer to a request that asked for no upgrade is not HTTP the proxy can relay."""
    upstream = await raw_upstream(
        lambda _: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"
    )
    with pytest.raises(UpstreamUnavailable):
        await fetch(client, "GET", upstream.origin + "/")


@pytest.mark.parametrize(
    "reply",
    [
        b"not http at all\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    ],
    ids=["garbage", "cl-and-te", "two-lengths"],
)
async def test_malformed_response_is_unavailable(
    client: UpstreamClient, raw_upstream: RawFactory, reply: bytes
) -> None:
    """A response llhttp refuses (smuggling-shaped framing included) raises UpstreamUnavailable."""
    upstream = await raw_upstream(lambda _: reply)
    with pytest.raises(UpstreamUnavailable):
        await fetch(client, "GET", upstream.origin + "/")


@pytest.mark.parametrize(
    ("target", "headers"),
    [("/", {"X-Evil": "a\r\nX-Admin: 1"}), ("/", {"X-Evil": "a\nb"}), ("/a b", {})],
    ids=["crlf-value", "lf-value", "space-in-target"],
)
async def test_header_injection_is_refused(
    client: UpstreamClient, raw_upstream: RawFactory, target: str, headers: dict[str, str]
) -> None:
    """A CR, LF or control character in a header, or a space in the target, never reaches the wire."""
    upstream = await raw_upstream()
    with pytest.raises(ValueError):
        client.request("GET", upstream.origin + target, headers, None, None)
    assert upstream.seen == []


async def test_early_response_during_upload_is_returned(
    client: UpstreamClient, tcp_server: TcpFactory
) -> None:
    """An upstream that answers before reading the body (413) is relayed; the connection is dropped."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        await reader.read()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 65536
            await asyncio.sleep(0.01)

    origin = await tcp_server(refuse)
    async with client.request("POST", origin + "/", {}, endless(), None) as response:
        assert response.status == 413
        assert b"".join([chunk async for chunk in response.body()]) == b"big"


async def test_upstream_that_stops_reading_the_body_is_timeout(tcp_server: TcpFactory) -> None:
    """An upload the upstream stops reading fails with UpstreamTimeout once writes stall for read_timeout."""

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await writer.wait_closed()  # never reads again; returns once the client gives up

    async def plenty() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 1024 * 1024
            await asyncio.sleep(0)

    origin = await tcp_server(deaf)
    async with UpstreamClient(connect_timeout=1.0, read_timeout=0.3) as client:
        with pytest.raises(UpstreamTimeout):
            async with client.request("POST", origin + "/", {}, plenty(), None):
                pass


async def test_host_header_comes_from_the_url_when_not_given(
    client: UpstreamClient, raw_upstream: RawFactory
) -> None:
    """Without a caller's Host, the URL's host and port are sent, as the only Host header, first."""
    upstream = await raw_upstream()
    await fetch(client, "GET", upstream.origin + "/", {"X-Probe": "1"})
    assert upstream.seen[0].headers[0] == ("host", upstream.origin.removeprefix("http://"))
