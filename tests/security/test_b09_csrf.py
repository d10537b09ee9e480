"""SECURITY.md B.9 — CSRF on cookie-authenticated requests (items 119–125).

Each refused request carries valid cookies whose access token has *expired*, so the tests also
prove that a forged request never causes a refresh (no write), besides never reaching the app.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.security.helpers import SAME_ORIGIN, Harness, cookie_header


async def expired_session(h: Harness, clock: Any) -> dict[str, str]:
    cookies = await h.session_cookies()
    clock.advance(h.config.tokens.access_ttl + h.config.tokens.leeway + 1)
    return cookies


async def assert_forbidden(
    h: Harness, method: str, headers: dict[str, str], cookies: dict[str, str], **kw: Any
) -> None:
    with h.unchanged():
        resp = await h.client.request(
            method, "/app/form", headers={**headers, "Cookie": cookie_header(cookies)}, **kw
        )
    assert resp.status == 403, (method, headers)
    assert (await resp.json())["error"] == "cross_site_request"
    assert "Set-Cookie" not in resp.headers


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "PROPPATCH"])
async def test_b9_119_cross_site_unsafe_request_is_403(h: Harness, clock: Any, method: str) -> None:
    cookies = await expired_session(h, clock)
    await assert_forbidden(h, method, {"Sec-Fetch-Site": "cross-site"}, cookies, data=b"a=1")
    await assert_forbidden(h, method, {"Origin": "https://evil.example"}, cookies, data=b"a=1")
    await assert_forbidden(h, method, {"Referer": "https://evil.example/page"}, cookies, data=b"a=1")
    # Still there: no refresh happened, the session works from the right origin.
    ok = await h.client.post(
        "/app/form", data=b"a=1", headers={**SAME_ORIGIN, "Cookie": cookie_header(cookies)}
    )
    assert ok.status == 200


async def test_b9_120_requests_without_browser_signals_are_treated_as_non_browser(
    h: Harness, clock: Any
) -> None:
    """DESIGN §7 (a documented departure from the checklist's "block"): every current browser
    sends Sec-Fetch-Site, Origin or Referer on unsafe requests, so a cookie request with none of
    them is a non-browser client and passes. Bearer requests are never CSRF-able: the cross-site
    signals do not matter for them."""
    bearer = (await h.signed_in())["access_token"]
    cross = {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
    via_bearer = await h.client.post(
        "/app/form", data=b"a=1", headers={**cross, "Authorization": f"Bearer {bearer}"}
    )
    assert via_bearer.status == 200
    cookies = dict(h.jar)
    clock.advance(h.config.tokens.access_ttl + h.config.tokens.leeway + 1)
    bare = await h.client.post("/app/form", data=b"a=1", headers={"Cookie": cookie_header(cookies)})
    assert bare.status == 200


@pytest.mark.parametrize("origin", ["null", " null", "NULL"])
async def test_b9_121_null_origin_is_refused(h: Harness, clock: Any, origin: str) -> None:
    """Sandboxed frames and cross-origin redirects send `Origin: null`: never trusted."""
    cookies = await expired_session(h, clock)
    await assert_forbidden(h, "POST", {"Origin": origin}, cookies, data=b"a=1")


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:8080.evil.example",
        "http://evillocalhost:8080",
        "http://localhost:8081",
        "https://localhost:8080",
        "http://localhost",
        "http://localhost:8080@evil.example",
        "http://127.0.0.1:8080",
        "http://LOCALHOST:8080.evil",
    ],
)
async def test_b9_122_origin_look_alikes_are_refused(h: Harness, clock: Any, origin: str) -> None:
    """Exact scheme + host + port comparison with the configured public origin."""
    cookies = await expired_session(h, clock)
    await assert_forbidden(h, "POST", {"Origin": origin}, cookies, data=b"a=1")


async def test_b9_123_sibling_subdomain_is_refused(h: Harness, clock: Any) -> None:
    cookies = await expired_session(h, clock)
    await assert_forbidden(
        h,
        "POST",
        {"Sec-Fetch-Site": "same-site", "Origin": "http://other.localhost:8080"},
        cookies,
        data=b"a=1",
    )
    await assert_forbidden(h, "POST", {"Sec-Fetch-Site": "same-site"}, cookies, data=b"a=1")


async def test_b9_124_cross_site_get_navigation_is_allowed_but_gateway_state_changes_need_post(
    h: Harness,
) -> None:
    """A link from another site (top-level GET) opens an app page; the gateway's state-changing
    endpoints do not change state on GET (405, or the harmless page for GET /auth/logout)."""
    cookies = await h.session_cookies()
    jar = {"Cookie": cookie_header(cookies)}
    nav = await h.client.get(
        "/app/page", headers={**jar, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    )
    assert nav.status == 200
    with h.unchanged():
        for path in ("/auth/logout-all", "/auth/refresh", "/auth/register"):
            resp = await h.client.get(
                path, headers={**jar, "Sec-Fetch-Site": "cross-site", "Accept": "application/json"}
            )
            assert resp.status in (200, 405), path
            assert "Set-Cookie" not in resp.headers
        page = await h.client.get("/auth/logout", headers={**jar, "Sec-Fetch-Site": "cross-site"})
    assert page.status == 200
    assert [row[8] for row in h.tables()["sessions"]] == [None]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"a": 1}'),
        ("application/x-www-form-urlencoded", b"a=1"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n",
        ),
    ],
    ids=["text-plain", "form", "multipart"],
)
async def test_b9_125_simple_content_types_get_the_same_check(
    h: Harness, clock: Any, content_type: str, body: bytes
) -> None:
    """Content types that need no CORS preflight are checked exactly like any other, on proxied
    routes and on the gateway's own endpoints (login CSRF)."""
    cookies = await expired_session(h, clock)
    await assert_forbidden(
        h, "POST", {"Origin": "https://evil.example", "Content-Type": content_type}, cookies, data=body
    )
    with h.unchanged():
        login = await h.client.post(
            "/auth/login", data=body, headers={"Origin": "https://evil.example", "Content-Type": content_type}
        )
    assert login.status == 403
