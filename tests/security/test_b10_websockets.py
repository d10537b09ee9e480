"""SECURITY.md B.10 — websockets (items 126–130). The recording upstream serves an echo socket at
`/ws` and refuses upgrades at `/ws-refused`."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

import aiohttp
import pytest

from gateway.keys import ACCOUNTS
from tests.security.helpers import Harness, cookie_header

ORIGIN = {"Origin": "http://localhost:8080"}


def handshake_headers(h: Harness) -> dict[str, str]:
    return {k.lower(): v for k, v in h.recorder.last["headers"]}


async def test_b10_126_cross_site_websocket_hijacking_is_refused(h: Harness) -> None:
    """A cookie-authenticated upgrade from another origin is refused before any upstream contact."""
    cookies = await h.session_cookies()
    for origin in ("https://evil.example", "null", "http://localhost:8080.evil.example"):
        with h.unchanged(), pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await h.client.ws_connect("/ws", headers={"Origin": origin, "Cookie": cookie_header(cookies)})
        assert refused.value.status == 403


async def test_b10_127_upgrade_needs_a_session_and_carries_only_the_gateways_identity(
    h: Harness, clock: Any
) -> None:
    """No session: 401 before the upgrade. An expired access cookie with a valid refresh cookie:
    refreshed, then upgraded, with the gateway's identity on the upstream handshake and the
    client's spoofed identity headers gone."""
    with h.unchanged(), pytest.raises(aiohttp.WSServerHandshakeError) as anonymous:
        await h.client.ws_connect("/ws", headers=ORIGIN)
    assert anonymous.value.status == 401
    cookies = await h.session_cookies()
    clock.advance(h.config.tokens.access_ttl + h.config.tokens.leeway + 1)
    ws = await h.client.ws_connect(
        "/ws",
        headers={
            **ORIGIN,
            "Cookie": cookie_header(cookies),
            "X-Auth-User-Id": "admin",
            "X_Auth_User_Roles": "admin",
        },
    )
    try:
        await ws.send_str("hi")
        assert (await ws.receive(timeout=5)).data == "echo:hi"
    finally:
        await ws.close()
    seen = handshake_headers(h)
    assert seen["x-auth-user-email"] == "alice@example.com"
    assert seen["x-auth-user-id"] != "admin" and seen["x-auth-user-roles"] == "user"
    assert "x_auth_user_roles" not in seen
    assert "gw_refresh" not in seen.get("cookie", "")


async def test_b10_128_upstream_refusing_the_upgrade_is_relayed_as_plain_http(h: Harness) -> None:
    cookies = await h.session_cookies()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await h.client.ws_connect("/ws-refused", headers={**ORIGIN, "Cookie": cookie_header(cookies)})
    assert refused.value.status == 403  # the upstream's status, no 101, no tunnel


@pytest.mark.parametrize("how", ["logout", "logout-all", "admin-disable"])
async def test_b10_129_socket_of_an_ended_session_is_closed_with_1008(h: Harness, how: str) -> None:
    cookies = await h.session_cookies()
    ws = await h.client.ws_connect("/ws", headers={**ORIGIN, "Cookie": cookie_header(cookies)})
    try:
        await ws.send_str("a")
        assert (await ws.receive_str(timeout=5)) == "echo:a"
        if how == "admin-disable":
            await h.app[ACCOUNTS].set_disabled("alice@example.com", True)
        else:
            out = await h.client.post(f"/auth/{how}", headers={**ORIGIN, "Cookie": cookie_header(cookies)})
            assert out.status == 204
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1008  # the code in the gateway's close frame ("policy violation")
    finally:
        await ws.close()


async def test_b10_130_oversized_message_closes_with_1009(h: Harness) -> None:
    """A frame announcing more than the gateway's 4 MiB message limit gets close code 1009
    ("message too big") at once, before its payload is read (raw socket: a client library
    would refuse to build such a frame)."""
    cookies = await h.session_cookies()
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    try:
        writer.write(
            (
                "GET /ws HTTP/1.1\r\nHost: localhost:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://localhost:8080\r\nCookie: {cookie_header(cookies)}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        size = 4 * 1024 * 1024 + 1
        writer.write(bytes([0x82, 0x80 | 127]) + struct.pack("!Q", size) + b"mask" + b"x" * 1024)
        frame = await asyncio.wait_for(reader.readexactly(4), 5)
        assert frame[0] == 0x88  # FIN + close
        assert struct.unpack("!H", frame[2:4])[0] == 1009
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
