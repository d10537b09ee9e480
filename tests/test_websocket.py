"""Websockets through the gateway: same auth as any request, Origin checked for cookie-authenticated
upgrades, identity on the upstream handshake, messages and close codes relayed, refusals relayed
as plain HTTP, and sockets of a revoked session closed with 1008 (DESIGN §7, SECURITY B.10)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.app import create_app
from gateway.keys import ACCOUNTS
from tests.conftest import Clock, make_config, signed_in


class WsUpstream:
    """An upstream with a websocket echo that records handshake headers, and a refusing path."""

    def __init__(self) -> None:
        self.handshakes: list[dict[str, str]] = []

    def app(self) -> web.Application:
        async def echo(request: web.Request) -> web.StreamResponse:
            self.handshakes.append(dict(request.headers))
            ws = web.WebSocketResponse(protocols=("chat.v1",))
            await ws.prepare(request)
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    if msg.data.startswith("close:"):
                        await ws.close(code=int(msg.data[6:]))
                    else:
                        await ws.send_str("echo:" + msg.data)
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data[::-1])
            return ws

        async def refuse(request: web.Request) -> web.StreamResponse:
            self.handshakes.append(dict(request.headers))
            return web.Response(status=403, text="no sockets for you")

        app = web.Application()
        app.router.add_get("/ws", echo)
        app.router.add_get("/public/ws", echo)
        app.router.add_get("/refuse", refuse)
        return app


@pytest.fixture
async def ws_gateway(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, tmp_path: Any, clock: Clock
) -> Any:
    upstream = WsUpstream()
    server = await aiohttp_server(upstream.app())
    config = make_config(tmp_path, str(server.make_url("")).rstrip("/"))
    client = await aiohttp_client(create_app(config, clock=clock))
    client.upstream = upstream
    return client


async def test_anonymous_upgrade_is_refused_before_the_upstream(ws_gateway: Any) -> None:
    """An unauthenticated upgrade on a required route is 401 and never reaches the upstream."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await ws_gateway.ws_connect("/ws")
    assert err.value.status == 401
    assert ws_gateway.upstream.handshakes == []


async def test_echo_with_identity_and_subprotocol(ws_gateway: Any) -> None:
    """Messages flow both ways, the upstream's subprotocol is relayed and it sees the identity."""
    await signed_in(ws_gateway)
    ws = await ws_gateway.ws_connect(
        "/ws", protocols=("chat.v1", "chat.v2"), headers={"X-Auth-User-Email": "forged"}
    )
    assert ws.protocol == "chat.v1"
    await ws.send_str("hello")
    assert (await ws.receive_str(timeout=5)) == "echo:hello"
    await ws.send_bytes(b"abc")
    assert (await ws.receive_bytes(timeout=5)) == b"cba"
    await ws.close()
    handshake = ws_gateway.upstream.handshakes[-1]
    assert handshake["X-Auth-User-Email"] == "alice@example.com"
    assert "gw_access" not in handshake.get("Cookie", "")


async def test_close_code_is_relayed(ws_gateway: Any) -> None:
    """The upstream's close code reaches the browser."""
    await signed_in(ws_gateway)
    ws = await ws_gateway.ws_connect("/ws")
    await ws.send_str("close:4001")
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 4001


async def test_cross_site_cookie_upgrade_is_403(ws_gateway: Any) -> None:
    """Cross-site websocket hijacking: a cookie-authenticated upgrade from another Origin is 403."""
    await signed_in(ws_gateway)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await ws_gateway.ws_connect("/ws", headers={"Origin": "https://evil.example"})
    assert err.value.status == 403
    assert ws_gateway.upstream.handshakes == []


async def test_same_origin_cookie_upgrade_is_allowed(ws_gateway: Any) -> None:
    """An upgrade whose Origin is the public URL passes."""
    await signed_in(ws_gateway)
    ws = await ws_gateway.ws_connect("/ws", headers={"Origin": "http://localhost:8080"})
    await ws.send_str("x")
    assert (await ws.receive_str(timeout=5)) == "echo:x"
    await ws.close()


async def test_upgrade_with_expired_access_cookie_refreshes(ws_gateway: Any, clock: Clock) -> None:
    """Transparent refresh happens at the upgrade, and the new cookies ride on the 101."""
    await signed_in(ws_gateway)
    clock.advance(400)
    ws = await ws_gateway.ws_connect("/ws")
    await ws.send_str("late")
    assert (await ws.receive_str(timeout=5)) == "echo:late"
    await ws.close()
    assert ws_gateway.upstream.handshakes[-1]["X-Auth-User-Email"] == "alice@example.com"


async def test_upstream_refusal_is_relayed_as_http(ws_gateway: Any) -> None:
    """A non-101 upstream answer becomes that status for the browser, with no tunnel."""
    await signed_in(ws_gateway)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await ws_gateway.ws_connect("/refuse")
    assert err.value.status == 403


async def test_revocation_closes_open_sockets_with_1008(ws_gateway: Any) -> None:
    """Signing out everywhere closes the session's open websocket with policy-violation 1008."""
    await signed_in(ws_gateway)
    ws = await ws_gateway.ws_connect("/ws")
    await ws.send_str("a")
    assert (await ws.receive_str(timeout=5)) == "echo:a"
    await ws_gateway.server.app[ACCOUNTS].logout_all((await (await ws_gateway.get("/auth/me")).json())["id"])
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1008


async def test_socket_of_an_expired_session_is_closed_with_1008(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, tmp_path: Any, clock: Clock
) -> None:
    """When the session's absolute lifetime ends, its open websocket is closed with 1008."""
    upstream = WsUpstream()
    server = await aiohttp_server(upstream.app())
    config = make_config(
        tmp_path, str(server.make_url("")).rstrip("/"), tokens={"access_ttl": 1.0, "session_ttl": 3600.0}
    )
    gw = await aiohttp_client(create_app(config, clock=clock))
    await signed_in(gw)
    ws = await gw.ws_connect("/ws")
    await ws.send_str("a")
    assert (await ws.receive_str(timeout=5)) == "echo:a"
    clock.advance(3601)
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1008


async def test_socket_of_a_live_session_stays_open(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient, tmp_path: Any, clock: Clock
) -> None:
    """The watchdog leaves a socket alone while its session is alive."""
    upstream = WsUpstream()
    server = await aiohttp_server(upstream.app())
    config = make_config(tmp_path, str(server.make_url("")).rstrip("/"), tokens={"access_ttl": 1.0})
    gw = await aiohttp_client(create_app(config, clock=clock))
    await signed_in(gw)
    ws = await gw.ws_connect("/ws")
    await asyncio.sleep(2.5)
    await ws.send_str("still")
    assert (await ws.receive_str(timeout=5)) == "echo:still"
    await ws.close()
