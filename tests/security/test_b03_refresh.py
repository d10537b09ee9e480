"""SECURITY.md B.3 — refresh, rotation, reuse, logout (items 50–70).

Rotation bookkeeping is read straight from the SQLite file: `refresh_tokens` rows are
(token_hash, session_id, generation, issued_at, expires_at, rotated_at, successor_hash) and
`sessions` rows end with (revoked_at, revoke_reason).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import sqlite3
from typing import Any

import pytest

from gateway.keys import ACCOUNTS
from tests.conftest import PASSWORD
from tests.security.conftest import HarnessFactory
from tests.security.helpers import API, NAV, SAME_ORIGIN, Harness, cookie_header

SECURE = {"server": {"public_url": "https://gw.example"}, "cookies": {"secure": True}}


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


async def refresh(h: Harness, token: str, **headers: str) -> Any:
    resp = await h.client.post("/auth/refresh", headers={"Cookie": f"gw_refresh={token}", **headers})
    if resp.status == 200:
        h.keep_secret(resp.cookies["gw_refresh"].value, resp.cookies["gw_access"].value)
    return resp


def new_refresh(resp: Any) -> str:
    return str(resp.cookies["gw_refresh"].value)


def cleared(resp: Any) -> bool:
    morsels = {m.key: m for m in resp.cookies.values()}
    return all(morsels[n].value == "" and morsels[n]["max-age"] == "0" for n in ("gw_access", "gw_refresh"))


def revoked_reasons(h: Harness) -> list[str | None]:
    return [row[8] for row in h.tables()["sessions"]]


async def test_b3_050_refresh_rotates_and_stores_only_digests(h: Harness) -> None:
    """A refresh returns new cookies; the old row gets rotated_at and a successor link; the new
    row is keyed by SHA-256 of the new token; no raw token is anywhere in the database file."""
    rt1 = (await h.session_cookies())["gw_refresh"]
    resp = await refresh(h, rt1)
    assert resp.status == 200
    rt2 = new_refresh(resp)
    assert rt2 != rt1
    rows = {row[0]: row for row in h.refresh_rows()}
    assert set(rows) == {digest(rt1), digest(rt2)}
    old, new = rows[digest(rt1)], rows[digest(rt2)]
    assert old[5] is not None and old[6] == digest(rt2)
    assert new[5] is None and new[2] == old[2] + 1
    with sqlite3.connect(h.db) as db:
        db.execute("PRAGMA wal_checkpoint(FULL)")
    blob = b"".join(p.read_bytes() for p in h.db.parent.glob("gateway.db*"))
    for raw in (rt1, rt2, PASSWORD):
        assert raw.encode() not in blob


async def test_b3_051_reuse_after_grace_revokes_the_whole_session(h: Harness, clock: Any) -> None:
    """RT1 after its grace window: 401 + cleared cookies, the current head RT2 dies too, the
    session's access tokens die at once, and a security event names session, user and address."""
    rt1 = (await h.session_cookies())["gw_refresh"]
    first = await refresh(h, rt1)
    rt2, access2 = new_refresh(first), (await first.json())["access_token"]
    clock.advance(h.config.tokens.reuse_grace + 1)
    reuse = await refresh(h, rt1)
    assert reuse.status == 401 and cleared(reuse)
    assert revoked_reasons(h) == ["refresh_reuse"]
    with h.unchanged():
        assert (await refresh(h, rt2)).status == 401
    me = await h.client.get("/auth/me", headers={"Authorization": f"Bearer {access2}"})
    assert me.status == 401
    session_id, user_id = h.tables()["sessions"][0][0], h.tables()["users"][0][0]
    events = [e for e in h.security_events() if "reuse detected" in e]
    assert events and session_id in events[0] and user_id in events[0] and "127.0.0.1" in events[0]


async def test_b3_052_second_to_last_token_inside_the_window_is_theft(h: Harness) -> None:
    """RT1 → RT2 → RT3, then RT1 within the grace period: reuse, the session is revoked."""
    rt1 = (await h.session_cookies())["gw_refresh"]
    rt2 = new_refresh(await refresh(h, rt1))
    rt3 = new_refresh(await refresh(h, rt2))
    assert (await refresh(h, rt1)).status == 401
    assert revoked_reasons(h) == ["refresh_reuse"]
    assert (await refresh(h, rt3)).status == 401


async def test_b3_053_parallel_requests_with_one_expired_session_share_one_rotation(
    h: Harness, clock: Any
) -> None:
    """Ten concurrent proxied requests with the same expired access cookie and RT1: all reach the
    upstream, every response sets the same RT2, exactly one rotation is stored, no revocation."""
    cookies = await h.session_cookies()
    clock.advance(h.config.tokens.access_ttl + h.config.tokens.leeway + 1)
    header = {**API, "Cookie": cookie_header(cookies)}
    responses = await asyncio.gather(*[h.client.get(f"/app/{i}", headers=header) for i in range(10)])
    assert [r.status for r in responses] == [200] * 10
    assert len(h.recorder) == 10
    successors = {new_refresh(r) for r in responses}
    assert len(successors) == 1
    rows = h.refresh_rows()
    assert len(rows) == 2 and sum(row[5] is not None for row in rows) == 1
    assert revoked_reasons(h) == [None]
    after = await h.client.get("/app/after", headers={**API, "Cookie": f"gw_refresh={successors.pop()}"})
    assert after.status == 200


async def test_b3_054_parallel_refresh_across_two_processes_sharing_sqlite(
    make_harness: HarnessFactory, clock: Any
) -> None:
    """The same race split across two gateway instances on one SQLite file: one rotation is
    persisted, every answer carries the identical RT2, nobody gets a 5xx, nothing is revoked."""
    first = await make_harness()
    second = await make_harness()
    cookies = await first.session_cookies()
    clock.advance(first.config.tokens.access_ttl + first.config.tokens.leeway + 1)
    header = {**API, "Cookie": cookie_header(cookies)}
    responses = await asyncio.gather(
        *[(first if i % 2 else second).client.get(f"/app/{i}", headers=header) for i in range(10)]
    )
    assert [r.status for r in responses] == [200] * 10
    assert len({new_refresh(r) for r in responses}) == 1
    rows = first.refresh_rows()
    assert len(rows) == 2 and sum(row[5] is not None for row in rows) == 1
    assert revoked_reasons(first) == [None]


async def test_b3_055_lost_response_retry_inside_the_window_gets_the_same_successor(
    h: Harness, clock: Any
) -> None:
    """The client never saw RT2 and retries with RT1 two seconds later: the same RT2, no new
    rotation. After the window the same retry is reuse."""
    rt1 = (await h.session_cookies())["gw_refresh"]
    rt2 = new_refresh(await refresh(h, rt1))
    clock.advance(2)
    with h.unchanged():
        retry = await refresh(h, rt1)
    assert retry.status == 200 and new_refresh(retry) == rt2
    clock.advance(h.config.tokens.reuse_grace)
    assert (await refresh(h, rt1)).status == 401
    assert revoked_reasons(h) == ["refresh_reuse"]


async def test_b3_056_idle_expired_refresh_token_is_refused_without_theft(h: Harness, clock: Any) -> None:
    rt1 = (await h.session_cookies())["gw_refresh"]
    clock.advance(h.config.tokens.refresh_ttl + 1)
    with h.unchanged():
        resp = await refresh(h, rt1)
    assert resp.status == 401 and cleared(resp)
    assert revoked_reasons(h) == [None]


async def test_b3_057_absolute_lifetime_ends_an_active_session(
    make_harness: HarnessFactory, clock: Any
) -> None:
    """Refreshing every 20 minutes keeps the session alive only until session_ttl; each new token
    expires at min(now + idle, the session's end)."""
    h = await make_harness(tokens={"session_ttl": 3600.0, "refresh_ttl": 1800.0})
    token = (await h.session_cookies())["gw_refresh"]
    started = clock.now
    for _ in range(2):
        clock.advance(1200)
        resp = await refresh(h, token)
        assert resp.status == 200
        token = new_refresh(resp)
    row = next(r for r in h.refresh_rows() if r[0] == digest(token))
    assert row[4] == min(clock.now + 1800, started + 3600)
    clock.advance(1201)
    with h.unchanged():
        resp = await refresh(h, token)
    assert resp.status == 401 and cleared(resp)


async def test_b3_058_unknown_refresh_token_is_refused_and_revokes_nothing(h: Harness) -> None:
    """A well-formed random token: 401 + cleared cookies, no write, the real session lives on."""
    real = (await h.session_cookies())["gw_refresh"]
    with h.unchanged():
        resp = await refresh(h, "A" * 43)
    assert resp.status == 401 and cleared(resp)
    assert (await refresh(h, real)).status == 200


@pytest.mark.parametrize(
    "cookie",
    [
        'gw_refresh=""',
        "gw_refresh=" + "A" * 10_000,
        "gw_refresh=%%%***!!!",
        'gw_refresh="a;b"',
        'gw_refresh=abc\\"def',
        "gw_refresh=a; gw_refresh=b",
    ],
    ids=["empty", "10kb", "non-b64url", "quoted-semicolon", "escaped-quote", "duplicate"],
)
async def test_b3_059_malformed_refresh_cookie_is_refused_cleanly(h: Harness, cookie: str) -> None:
    """Malformed refresh cookies get 401 (or 400 when duplicated), never a 500, and no write,
    both on /auth/refresh and on a proxied request."""
    await h.session_cookies()
    with h.unchanged():
        endpoint = await h.client.post("/auth/refresh", headers={"Cookie": cookie})
        proxied = await h.client.get("/app/page", headers={**API, "Cookie": cookie})
    assert endpoint.status in (400, 401)
    assert proxied.status in (400, 401)


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}, {"Origin": "null"}],
    ids=["fetch-cross-site", "foreign-origin", "null-origin"],
)
async def test_b3_060_cross_site_refresh_is_403_without_rotation(h: Harness, headers: dict[str, str]) -> None:
    rt1 = (await h.session_cookies())["gw_refresh"]
    with h.unchanged():
        resp = await refresh(h, rt1, **headers)
    assert resp.status == 403


async def test_b3_061_expired_access_token_of_another_session_does_not_refresh(
    h: Harness, clock: Any
) -> None:
    """An expired access JWT of session A with the refresh cookie of session B: 401, cookies
    cleared, no rotation, a security event."""
    a = await h.session_cookies("alice@example.com")
    b = await h.session_cookies("bob@example.com")
    clock.advance(h.config.tokens.access_ttl + h.config.tokens.leeway + 1)
    with h.unchanged():
        resp = await h.client.get(
            "/app/page",
            headers={**API, "Cookie": f"gw_access={a['gw_access']}; gw_refresh={b['gw_refresh']}"},
        )
    assert resp.status == 401 and cleared(resp)
    assert any("session mismatch" in e for e in h.security_events())


async def test_b3_062_tampered_access_cookie_never_triggers_a_refresh(h: Harness) -> None:
    cookies = await h.session_cookies()
    head, body, sig = cookies["gw_access"].split(".")
    tampered = f"{head}.{body}.{sig[::-1]}"
    with h.unchanged():
        resp = await h.client.get(
            "/app/page",
            headers={**API, "Cookie": f"gw_access={tampered}; gw_refresh={cookies['gw_refresh']}"},
        )
    assert resp.status == 401 and cleared(resp)


async def test_b3_063_transparent_refresh_response_is_never_cacheable(h: Harness, clock: Any) -> None:
    """Expired access cookie + valid RT on a page the upstream marks public/cacheable: the
    upstream gets identity, the browser gets the body, both new cookies and Cache-Control:
    no-store instead of the upstream's caching header."""
    cookies = await h.session_cookies()
    clock.advance(h.config.tokens.access_ttl + h.config.tokens.leeway + 1)
    resp = await h.client.get("/app/cacheable", headers={**API, "Cookie": cookie_header(cookies)})
    assert resp.status == 200 and await resp.text() == "cache me"
    assert resp.headers.getall("Cache-Control") == ["no-store"]
    assert {m.key for m in resp.cookies.values()} == {"gw_access", "gw_refresh"}
    seen = {k.lower(): v for k, v in h.recorder.last["headers"]}
    assert seen["x-auth-user-email"] == "alice@example.com"


async def test_b3_064_refresh_is_decided_before_any_body_byte_is_forwarded(h: Harness, clock: Any) -> None:
    """A 5 MB POST with an expired access cookie: with a dead RT it is refused and the upstream
    never sees it; with a live RT it reaches the upstream whole, with identity."""
    cookies = await h.session_cookies()
    clock.advance(h.config.tokens.access_ttl + h.config.tokens.leeway + 1)
    body = b"x" * (5 * 1024 * 1024)
    dead = {**cookies, "gw_refresh": "B" * 43}
    with h.unchanged():
        refused = await h.client.post(
            "/app/upload",
            data=io.BytesIO(body),
            headers={**API, **SAME_ORIGIN, "Cookie": cookie_header(dead)},
        )
    assert refused.status == 401
    ok = await h.client.post(
        "/app/upload", data=io.BytesIO(body), headers={**API, **SAME_ORIGIN, "Cookie": cookie_header(cookies)}
    )
    assert ok.status == 200
    assert h.recorder.last["body"] == body


async def test_b3_065_expired_bearer_never_uses_the_refresh_cookie(h: Harness, clock: Any) -> None:
    cookies = await h.session_cookies()
    clock.advance(h.config.tokens.access_ttl + h.config.tokens.leeway + 1)
    with h.unchanged():
        resp = await h.client.get(
            "/app/page",
            headers={
                **API,
                "Authorization": f"Bearer {cookies['gw_access']}",
                "Cookie": f"gw_refresh={cookies['gw_refresh']}",
            },
        )
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert "Set-Cookie" not in resp.headers


async def test_b3_066_refresh_token_outside_its_cookie_is_ignored_on_the_browser_flow(h: Harness) -> None:
    """A refresh token in a query parameter or a header of a proxied request, or in the query of
    /auth/refresh, does nothing and is not logged. (The JSON body of /auth/refresh is the
    documented channel for native clients: DESIGN §4.)"""
    rt = (await h.session_cookies())["gw_refresh"]
    with h.unchanged():
        query = await h.client.get(f"/app/page?refresh_token={rt}&gw_refresh={rt}", headers=API)
        header = await h.client.get("/app/page", headers={**API, "X-Refresh-Token": rt, "Refresh-Token": rt})
        endpoint = await h.client.post(f"/auth/refresh?refresh_token={rt}")
    assert query.status == header.status == endpoint.status == 401
    assert rt not in h.logged_text()


async def test_b3_067_logout_revokes_and_clears_with_identical_attributes(
    make_harness: HarnessFactory,
) -> None:
    """POST /auth/logout: the session is revoked server-side, both cookies are cleared with the
    same name, Path, Secure, HttpOnly and SameSite they were set with, no-store; afterwards the
    old access token and refresh token are refused."""
    h = await make_harness(**SECURE)
    login = await h.client.post("/auth/login", json={"email": "x@example.com", "password": PASSWORD})
    assert login.status == 401  # no such user yet; register first
    await h.register()
    login = await h.client.post("/auth/login", json={"email": "alice@example.com", "password": PASSWORD})
    set_attrs = {m.key: m for m in login.cookies.values()}
    access, rt = set_attrs["__Host-gw_access"].value, set_attrs["__Host-gw_refresh"].value
    h.keep_secret(access, rt)
    jar = f"__Host-gw_access={access}; __Host-gw_refresh={rt}"
    out = await h.client.post(
        "/auth/logout", headers={**SAME_ORIGIN, "Origin": "https://gw.example", "Cookie": jar}
    )
    assert out.status == 204
    assert out.headers["Cache-Control"] == "no-store"
    gone = {m.key: m for m in out.cookies.values()}
    assert set(gone) == set(set_attrs)
    for name, morsel in gone.items():
        assert morsel.value == "" and morsel["max-age"] == "0"
        for attr in ("path", "secure", "httponly", "samesite", "domain"):
            assert morsel[attr] == set_attrs[name][attr], (name, attr)
    assert revoked_reasons(h) == ["logout"]
    with h.unchanged():
        old_access = await h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {access}"})
        old_refresh = await h.client.post(
            "/auth/refresh", headers={"Origin": "https://gw.example", "Cookie": f"__Host-gw_refresh={rt}"}
        )
    assert old_access.status == 401 and old_refresh.status == 401


async def test_b3_068_logout_edge_cases(h: Harness) -> None:
    """No cookies and an already-revoked RT: 204 + cleared cookies (idempotent). GET is only the
    page: it ends nothing. A cross-site POST is 403 and ends nothing."""
    none = await h.client.post("/auth/logout")
    assert none.status == 204 and cleared(none)
    cookies = await h.session_cookies()
    page = await h.client.get("/auth/logout", headers={**NAV, "Cookie": cookie_header(cookies)})
    assert page.status == 200
    cross = await h.client.post(
        "/auth/logout", headers={"Origin": "https://evil.example", "Cookie": cookie_header(cookies)}
    )
    assert cross.status == 403
    assert revoked_reasons(h) == [None]
    assert (await h.client.post("/auth/logout", headers={"Cookie": cookie_header(cookies)})).status == 204
    again = await h.client.post("/auth/logout", headers={"Cookie": f"gw_refresh={cookies['gw_refresh']}"})
    assert again.status == 204 and cleared(again)


async def test_b3_069_logout_everywhere_ends_other_browsers(h: Harness) -> None:
    laptop = await h.session_cookies()
    h.keep_secret(*laptop.values())
    phone = await h.login()
    out = await h.client.post(
        "/auth/logout-all", headers={"Authorization": f"Bearer {phone['access_token']}"}
    )
    assert out.status == 204
    assert revoked_reasons(h) == ["logout_all", "logout_all"]
    with h.unchanged():
        resp = await h.client.get("/app/page", headers={**API, "Cookie": cookie_header(laptop)})
    assert resp.status == 401 and cleared(resp)


async def test_b3_070_admin_disable_ends_every_session_at_once(h: Harness) -> None:
    cookies = await h.session_cookies()
    bearer = (await h.login())["access_token"]
    await h.app[ACCOUNTS].set_disabled("alice@example.com", True)
    assert set(revoked_reasons(h)) == {"user_disabled"}
    with h.unchanged():
        via_cookie = await h.client.get("/app/page", headers={**API, "Cookie": cookie_header(cookies)})
        via_bearer = await h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {bearer}"})
        via_refresh = await refresh(h, cookies["gw_refresh"])
    assert via_cookie.status == via_bearer.status == via_refresh.status == 401
