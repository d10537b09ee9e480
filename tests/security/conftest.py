"""Fixtures for the security checklist: a richer recording upstream, a raw-bytes upstream, and
`h`, the harness around a real gateway run the way `gateway serve` runs it (production access
logger, production log levels). Every token a test obtains through the harness is checked
against the captured logs when the test ends (SECURITY item 142, for every test of the suite).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.app import create_app
from gateway.logs import AccessLogger
from tests.conftest import Clock, Recorder, make_config
from tests.security.helpers import Harness

GZIP_BODY = gzip.compress(b"compressed hello " * 64, mtime=0)  # the same bytes on every import
CANARY = "log capture is working"


def security_upstream_app(recorder: Recorder) -> web.Application:
    """Records every request (method, raw target, headers, body) and answers a few special paths."""

    async def handler(request: web.Request) -> web.StreamResponse:
        entry = await recorder.record(request)
        tail = request.path
        if tail.endswith("/set-gateway-cookies"):
            resp = web.Response(text="fixation attempt")
            for value in (
                "gw_access=evil; Path=/",
                "gw_refresh=evil; Path=/",
                "__Host-gw_refresh=evil; Path=/; Secure",
                "__host-gw_access=evil; Path=/; Secure",
                "app_session=kept; Path=/",
            ):
                resp.headers.add("Set-Cookie", value)
            return resp
        if tail.endswith("/set-user-cookie"):
            resp = web.Response(text="cookie for " + request.headers.get("X-Auth-User-Email", "-"))
            resp.headers.add("Set-Cookie", "upsess=" + request.headers.get("X-Auth-User-Id", "anon"))
            return resp
        if tail.endswith("/redirect-internal"):
            return web.Response(status=302, headers={"Location": "http://internal.example/secret"})
        if tail.endswith("/gzip"):
            return web.Response(
                body=GZIP_BODY, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
            )
        if tail.endswith("/cacheable"):
            return web.Response(text="cache me", headers={"Cache-Control": "public, max-age=3600"})
        if tail.endswith("/slow"):
            await asyncio.sleep(30)
        if "/status/" in tail:
            return web.Response(status=int(tail.rsplit("/", 1)[1]))
        payload = {k: v for k, v in entry.items() if k != "body"}
        payload["body"] = entry["body"].decode("utf-8", "replace")
        return web.json_response(payload)

    async def websocket(request: web.Request) -> web.StreamResponse:
        recorder.requests.append(
            {"method": "WS", "path": request.raw_path, "headers": list(request.headers.items()), "body": b""}
        )
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
        return ws

    async def websocket_setting_a_cookie(request: web.Request) -> web.StreamResponse:
        """Sets a per-user cookie on its 101: a shared client cookie jar would replay it."""
        recorder.requests.append(
            {"method": "WS", "path": request.raw_path, "headers": list(request.headers.items()), "body": b""}
        )
        ws = web.WebSocketResponse()
        ws.set_cookie("upsess", request.headers.get("X-Auth-User-Id", "anon"))
        await ws.prepare(request)
        await ws.close()
        return ws

    async def refuse_websocket(request: web.Request) -> web.StreamResponse:
        recorder.requests.append(
            {"method": "WS", "path": request.raw_path, "headers": list(request.headers.items()), "body": b""}
        )
        return web.Response(status=403, text="this app has no websockets")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/public/ws", websocket)
    app.router.add_get("/ws-refused", refuse_websocket)
    app.router.add_get("/ws-set-cookie", websocket_setting_a_cookie)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer, recorder: Recorder) -> str:
    """Overrides the suite-wide upstream: the same recording, more special paths."""
    server = await aiohttp_server(security_upstream_app(recorder))
    return str(server.make_url("")).rstrip("/")


class RawUpstream:
    """A TCP upstream that records the exact request bytes and answers with canned bytes."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                piece = await asyncio.wait_for(reader.read(65536), 5)
                if not piece:
                    break
                data += piece
            head, _, rest = data.partition(b"\r\n\r\n")
            if b"chunked" in head.lower():
                while not rest.endswith(b"0\r\n\r\n"):
                    piece = await asyncio.wait_for(reader.read(65536), 5)
                    if not piece:
                        break
                    rest += piece
            else:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                while len(rest) < length:
                    piece = await asyncio.wait_for(reader.read(65536), 5)
                    if not piece:
                        break
                    rest += piece
            self.received.append(head + b"\r\n\r\n" + rest)
            writer.write(self.response)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    up = RawUpstream()
    up.server = await asyncio.start_server(up._serve, "127.0.0.1", 0)
    try:
        yield up
    finally:
        up.server.close()
        await up.server.wait_closed()


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(
    aiohttp_client: AiohttpClient,
    tmp_path: Path,
    upstream: str,
    recorder: Recorder,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[HarnessFactory]:
    """`await make_harness(**sections)`: a gateway over the recording upstream, configured like
    `make_config` (sections replace fields). Several calls share one SQLite file and key file, as
    several processes of one deployment do."""
    # As in production (gateway.logs.setup_logging): aiohttp's parser-error log holds raw bytes.
    # (Set on the logger only: caplog.set_level would also raise the capturing handler's level.)
    server_log = logging.getLogger("aiohttp.server")
    server_level = server_log.level
    server_log.setLevel(logging.CRITICAL)
    caplog.set_level(logging.INFO)  # the production default level
    caplog.set_level(logging.DEBUG, logger="gateway")
    made: list[Harness] = []

    async def factory(*, upstream_url: str | None = None, **sections: Any) -> Harness:
        config = make_config(tmp_path, upstream_url or upstream, **sections)
        server = TestServer(create_app(config, clock=clock))
        # As `gateway serve` runs it: the gateway's access logger (the path only, never a query).
        await server.start_server(
            access_log_class=AccessLogger, access_log=logging.getLogger("gateway.access")
        )
        client: TestClient[Any, Any] = await aiohttp_client(server, cookie_jar=aiohttp.DummyCookieJar())
        harness = Harness(client, recorder, tmp_path / "gateway.db", caplog)
        logging.getLogger("gateway.tests").debug(CANARY)
        made.append(harness)
        return harness

    yield factory
    server_log.setLevel(server_level)

    # SECURITY item 142 for every test: no token, cookie value or password the harness saw was logged.
    records = caplog.get_records("setup") + caplog.get_records("call")
    logged = made[0].logged_text(records) if made else ""
    assert not made or CANARY in logged, "nothing was captured: the log check would prove nothing"
    for harness in made:
        for secret in harness.secrets:
            if len(secret) >= 16:
                assert secret not in logged, "a secret reached the logs"


@pytest.fixture
async def h(make_harness: HarnessFactory) -> Harness:
    """A gateway with the default test settings (routes /, /public, /optional, /admin)."""
    return await make_harness()
