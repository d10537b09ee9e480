"""Refresh rotation over HTTP: single use, coalescing, the grace window, reuse detection, expiry
(DESIGN §6, SECURITY C.2 and B.3)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from gateway.keys import ACCOUNTS
from tests.conftest import PASSWORD, GatewayFactory, signed_in


def refresh_cookie(client: Any) -> str:
    return next(c.value for c in client.session.cookie_jar if c.key == "gw_refresh")


async def post_refresh(client: Any, token: str) -> Any:
    client.session.cookie_jar.clear()
    return await client.post("/auth/refresh", cookies={"gw_refresh": token})


async def test_refresh_rotates_and_old_token_cannot_be_used_after_grace(gw: Any, clock: Any) -> None:
    """A refresh returns new cookies; after the grace window the spent token revokes the session."""
    await signed_in(gw)
    rt1 = refresh_cookie(gw)
    first = await post_refresh(gw, rt1)
    assert first.status == 200
    rt2 = first.cookies["gw_refresh"].value
    assert rt2 != rt1
    clock.advance(11)  # past reuse_grace (10 s)
    reuse = await post_refresh(gw, rt1)
    assert reuse.status == 401
    assert (await reuse.json())["error"] == "invalid_refresh_token"
    assert all("Max-Age=0" in c for c in reuse.headers.getall("Set-Cookie"))
    # The whole family is dead: the current head RT2 fails too (SECURITY item 51).
    assert (await post_refresh(gw, rt2)).status == 401


async def test_reuse_kills_outstanding_access_tokens_at_once(gw: Any, clock: Any) -> None:
    """After reuse detection the session's unexpired access token is rejected immediately."""
    await signed_in(gw)
    rt1 = refresh_cookie(gw)
    rotated = await post_refresh(gw, rt1)
    access = (await rotated.json())["access_token"]
    assert (await gw.get("/auth/me", headers={"Authorization": f"Bearer {access}"})).status == 200
    clock.advance(11)
    assert (await post_refresh(gw, rt1)).status == 401
    assert (await gw.get("/auth/me", headers={"Authorization": f"Bearer {access}"})).status == 401


async def test_retry_within_grace_gets_the_same_successor(gw: Any, clock: Any) -> None:
    """The previous token presented again within reuse_grace gets the same successor, no revocation."""
    await signed_in(gw)
    rt1 = refresh_cookie(gw)
    a = await post_refresh(gw, rt1)
    clock.advance(5)
    b = await post_refresh(gw, rt1)
    assert a.status == b.status == 200
    assert a.cookies["gw_refresh"].value == b.cookies["gw_refresh"].value
    assert (await post_refresh(gw, b.cookies["gw_refresh"].value)).status == 200


async def test_second_to_last_token_within_grace_is_theft(gw: Any, clock: Any) -> None:
    """RT1 → RT2 → RT3, then RT1 again inside the window: reuse, session revoked (SECURITY item 52)."""
    await signed_in(gw)
    rt1 = refresh_cookie(gw)
    rt2 = (await post_refresh(gw, rt1)).cookies["gw_refresh"].value
    rt3 = (await post_refresh(gw, rt2)).cookies["gw_refresh"].value
    assert (await post_refresh(gw, rt1)).status == 401
    assert (await post_refresh(gw, rt3)).status == 401


async def test_concurrent_refreshes_with_one_token_all_succeed(gw: Any) -> None:
    """20 parallel refreshes with one token all succeed with the same successor; the session lives."""
    await signed_in(gw)
    rt1 = refresh_cookie(gw)
    gw.session.cookie_jar.clear()
    responses = await asyncio.gather(
        *[gw.post("/auth/refresh", cookies={"gw_refresh": rt1}) for _ in range(20)]
    )
    assert [r.status for r in responses] == [200] * 20
    successors = {r.cookies["gw_refresh"].value for r in responses}
    assert len(successors) == 1
    assert (await post_refresh(gw, successors.pop())).status == 200


async def test_unknown_refresh_token_is_401_without_revoking_anything(gw: Any) -> None:
    """A random refresh token is refused and does not disturb the real session."""
    await signed_in(gw)
    real = refresh_cookie(gw)
    assert (await post_refresh(gw, "A" * 43)).status == 401
    assert (await post_refresh(gw, real)).status == 200


async def test_refresh_without_token_is_401(gw: Any) -> None:
    """No cookie and no body: 401 invalid_refresh_token."""
    resp = await gw.post("/auth/refresh")
    assert resp.status == 401


async def test_idle_timeout_ends_the_session(gw: Any, clock: Any) -> None:
    """A session unused for longer than refresh_ttl cannot refresh."""
    await signed_in(gw)
    rt1 = refresh_cookie(gw)
    clock.advance(1801)
    assert (await post_refresh(gw, rt1)).status == 401


async def test_absolute_lifetime_is_never_extended(make_gateway: GatewayFactory, clock: Any) -> None:
    """Refreshing often cannot keep a session alive past session_ttl, and the refresh cookie's
    Max-Age shrinks to the time left."""
    gw = await make_gateway(tokens={"session_ttl": 3600.0, "refresh_ttl": 1800.0})
    await signed_in(gw)
    token = refresh_cookie(gw)
    for _ in range(3):
        clock.advance(1000)
        resp = await post_refresh(gw, token)
        assert resp.status == 200
        token = resp.cookies["gw_refresh"].value
    assert resp.cookies["gw_refresh"]["max-age"] == "600"
    clock.advance(601)
    assert (await post_refresh(gw, token)).status == 401


async def test_database_holds_no_raw_refresh_token(gw: Any, tmp_path: Path) -> None:
    """The SQLite file never contains a raw refresh token, only digests (SECURITY item 50)."""
    await signed_in(gw)
    tokens = [refresh_cookie(gw)]
    tokens.append((await post_refresh(gw, tokens[0])).cookies["gw_refresh"].value)
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        db.execute("PRAGMA wal_checkpoint(FULL)")
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("gateway.db*"))
    for token in tokens:
        assert token.encode() not in blob
    assert PASSWORD.encode() not in blob


async def test_disabled_user_cannot_refresh(gw: Any) -> None:
    """Disabling a user revokes the session: its refresh token and access token stop working."""
    body = await signed_in(gw)
    rt = refresh_cookie(gw)
    accounts = gw.server.app[ACCOUNTS]
    await accounts.set_disabled("alice@example.com", True)
    assert (await post_refresh(gw, rt)).status == 401
    resp = await gw.get("/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert resp.status == 401
    again = await gw.post("/auth/login", json={"email": "alice@example.com", "password": PASSWORD})
    assert again.status == 401
