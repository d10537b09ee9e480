"""SECURITY.md B.8 — redirects: `next` after login, logout, and the way to the login page
(items 115–118)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import PASSWORD
from tests.security.helpers import API, NAV, SAME_ORIGIN, Harness

VECTORS = [
    "https://evil.example",
    "//evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "/\t/evil.example",
    "/ /evil.example",
    "/\x0b/evil.example",
    "/\r\n/evil.example",
    "/./\\evil.com",
    "/./../../\\evil.com",
    "javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "http://localhost:8080.evil.example/",
    "http://localhost:8080@evil.example/",
    "http://localhost:8080/",
    "https://localhost:8080/",
    "http://localhost:8443/",
    "/%2F%2Fevil.example",
    "%2F%2Fevil.example",
    "/%5Cevil.example",
    "/%09/evil.example",
    "///evil.example",
    "/.//evil.example",
    "/..//evil.example",
    "evil.example",
    "//evil.example/redirect?rd=x",
    "\x00/evil",
    " //evil.example",
    "/\u3000/evil.example",
    "/%E3%80%80/evil.example",
]


async def form_login(h: Harness, next_value: str) -> str:
    resp = await h.client.post(
        "/auth/login",
        data={"email": "alice@example.com", "password": PASSWORD, "next": next_value},
        headers=SAME_ORIGIN,
        allow_redirects=False,
    )
    assert resp.status == 303
    h.keep_secret(*(m.value for m in resp.cookies.values()))
    return str(resp.headers["Location"])


@pytest.mark.parametrize("vector", VECTORS)
async def test_b8_115_open_redirect_vectors_fall_back_to_root(h: Harness, vector: str) -> None:
    """Every vector from oauth2-proxy's validator table, as `next` of a form login: 303 to "/",
    and the login page never renders it as the form's next either."""
    await h.register()
    assert await form_login(h, vector) == "/"
    page = await h.client.get("/auth/login", params={"next": vector}, headers=NAV)
    assert page.status == 200
    assert "evil" not in await page.text()


@pytest.mark.parametrize(
    "good", ["/app/page?x=1&y=%20", "/", "/a/b.c/d?next=/x#frag", "/redirect?rd=evil.example#//evil"]
)
async def test_b8_115_same_origin_paths_are_kept(h: Harness, good: str) -> None:
    await h.register()
    assert await form_login(h, good) == good


@pytest.mark.parametrize("vector", ["//evil.example", "https://evil.example/", "/\\evil.example"])
async def test_b8_116_logout_has_no_caller_chosen_destination(h: Harness, vector: str) -> None:
    """Logout takes no return URL: a form logout always lands on the gateway's own page, whatever
    `next`/`rd`/`return_to` says."""
    resp = await h.client.post(
        "/auth/logout",
        data={"next": vector, "rd": vector, "return_to": vector},
        headers=SAME_ORIGIN,
        allow_redirects=False,
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/auth/logout"


@pytest.mark.parametrize(
    "vector", ["/ok%0d%0aSet-Cookie:x=1", "/ok\r\nSet-Cookie: x=1", "/ok%0aLocation:%20//evil", "/ok%00"]
)
async def test_b8_117_header_injection_through_next_is_rejected(h: Harness, vector: str) -> None:
    await h.register()
    resp = await h.client.post(
        "/auth/login",
        data={"email": "alice@example.com", "password": PASSWORD, "next": vector},
        headers=SAME_ORIGIN,
        allow_redirects=False,
    )
    h.keep_secret(*(m.value for m in resp.cookies.values()))
    assert resp.headers["Location"] == "/"
    assert all(not c.startswith("x=") for c in resp.headers.getall("Set-Cookie"))


async def test_b8_118_navigation_is_redirected_and_api_calls_get_401(h: Harness) -> None:
    """A browser navigation gets 302 to the login page with a relative, encoded next; fetch/XHR,
    JSON clients and POSTs get 401 JSON; none reaches the upstream."""
    with h.unchanged():
        nav = await h.client.get("/app/page?x=1", headers=NAV, allow_redirects=False)
        fetch = await h.client.get("/app/page?x=1", headers={**API, "Sec-Fetch-Mode": "cors"})
        xhr = await h.client.get("/app/page", headers={"X-Requested-With": "XMLHttpRequest"})
        post = await h.client.post("/app/page", data=b"a=1", headers={"Accept": "text/html"})
    assert nav.status == 302
    location = nav.headers["Location"]
    assert location == "/auth/login?next=%2Fapp%2Fpage%3Fx%3D1"
    assert not urlsplit(location).netloc
    assert parse_qs(urlsplit(location).query)["next"] == ["/app/page?x=1"]
    assert nav.headers["Cache-Control"] == "no-store"
    for resp in (fetch, xhr, post):
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert (await resp.json())["error"] == "unauthenticated"
