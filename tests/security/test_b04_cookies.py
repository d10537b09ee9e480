"""SECURITY.md B.4 — cookies (items 71–77)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.config_load import config_from_dict
from tests.conftest import PASSWORD
from tests.security.conftest import HarnessFactory
from tests.security.helpers import API, NAV, SAME_ORIGIN, Harness, cookie_header

HTTPS = {"server": {"public_url": "https://gw.example"}, "cookies": {"secure": True}}
HTTPS_ORIGIN = {"Origin": "https://gw.example"}


async def secure_login(h: Harness) -> Any:
    await h.register()
    resp = await h.client.post(
        "/auth/login", json={"email": "alice@example.com", "password": PASSWORD}, headers=HTTPS_ORIGIN
    )
    assert resp.status == 200
    h.keep_secret(*(m.value for m in resp.cookies.values()))
    return resp


async def test_b4_071_session_cookie_attributes(make_harness: HarnessFactory) -> None:
    """Over HTTPS both cookies are `__Host-` prefixed, Secure, HttpOnly, Path=/, without Domain,
    with an explicit SameSite; Max-Age follows DESIGN §5 (access TTL; min(idle, session left));
    each Set-Cookie stays under 4096 bytes; the response is no-store."""
    h = await make_harness(**HTTPS)
    resp = await secure_login(h)
    raw = resp.headers.getall("Set-Cookie")
    assert sorted(c.split("=", 1)[0] for c in raw) == ["__Host-gw_access", "__Host-gw_refresh"]
    for line in raw:
        attrs = [a.strip().lower() for a in line.split(";")[1:]]
        assert "secure" in attrs and "httponly" in attrs and "path=/" in attrs
        assert "samesite=lax" in attrs
        assert not any(a.startswith("domain") for a in attrs)
        assert len(line.encode()) <= 4096
    ages = {m.key: int(m["max-age"]) for m in resp.cookies.values()}
    assert ages == {
        "__Host-gw_access": int(h.config.tokens.access_ttl),
        "__Host-gw_refresh": int(h.config.tokens.refresh_ttl),
    }
    assert resp.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("public_url", "secure"),
    [
        ("https://gw.example", True),
        ("http://gw.example", True),
        ("http://localhost:8080", False),
        ("http://127.0.0.1:8080", False),
    ],
)
def test_b4_071_secure_auto_fails_closed_off_localhost(public_url: str, secure: bool) -> None:
    """`secure = "auto"` turns Secure off only for plain HTTP on this machine: a plain-HTTP
    deployment elsewhere gets Secure cookies, which browsers will not send back (fails closed)."""
    config = config_from_dict(
        {"server": {"public_url": public_url}, "routes": [{"path": "/", "upstream": "http://127.0.0.1:9"}]}
    )
    assert config.cookies.secure is secure
    assert config.cookies.access_cookie == ("__Host-gw_access" if secure else "gw_access")


@pytest.mark.parametrize("how", ["one-header", "two-headers"])
@pytest.mark.parametrize("name", ["gw_access", "gw_refresh"])
async def test_b4_072_duplicate_gateway_cookie_is_refused(h: Harness, name: str, how: str) -> None:
    """The same gateway cookie twice (in one Cookie header or across two) is ambiguous: 400,
    neither "first wins" nor "last wins", nothing upstream, no refresh."""
    cookies = await h.session_cookies()
    value = cookies[name]
    if how == "one-header":
        lines = f"Cookie: {name}=forged; {name}={value}\r\n"
    else:
        lines = f"Cookie: {name}={value}\r\nCookie: {name}=forged\r\n"
    with h.unchanged():
        resp = await h.raw(
            f"GET /app/page HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n{lines}"
            "Connection: close\r\n\r\n".encode()
        )
    assert resp.status == 400
    assert b"forged" not in resp.body
    assert any("duplicate cookie" in e for e in h.security_events())


@pytest.mark.parametrize(
    ("lookalike", "stripped"),
    [
        ("__host-gw_refresh", True),
        ("gw_refresh", True),
        ("__Secure-gw_refresh", True),
        ("__HOST-gw_refresh", True),
        ("__Host-GW_REFRESH", False),
    ],
)
async def test_b4_073_lookalike_cookie_names_are_ignored(
    make_harness: HarnessFactory, lookalike: str, stripped: bool
) -> None:
    """With `__Host-` names, a valid refresh token under a look-alike name (which a sibling
    subdomain or a plain-HTTP page could plant) is never used: exact name match only. Spellings
    of our name under another prefix are not passed upstream either; a name differing in case is
    another cookie (names are case-sensitive, RFC 6265) and belongs to the app."""
    h = await make_harness(**HTTPS)
    resp = await secure_login(h)
    rt = resp.cookies["__Host-gw_refresh"].value
    with h.unchanged():
        denied = await h.client.get("/app/page", headers={**API, "Cookie": f"{lookalike}={rt}"})
    assert denied.status == 401 and "__Host-gw_access" not in denied.headers.get("Set-Cookie", "")
    public = await h.client.get("/public/x", headers={**API, "Cookie": f"{lookalike}={rt}; app=1"})
    assert public.status == 200
    sent = [v for k, v in h.recorder.last["headers"] if k.lower() == "cookie"]
    assert sent == (["app=1"] if stripped else [f"{lookalike}={rt}; app=1"])


async def test_b4_074_gateway_cookies_stay_at_the_gateway(h: Harness) -> None:
    """The upstream gets the app's own cookies exactly as sent and none of the gateway's; with
    only gateway cookies it gets no Cookie header at all."""
    cookies = await h.session_cookies()
    mixed = (
        f'app_a=1; gw_access={cookies["gw_access"]}; app_b="x y"; gw_refresh={cookies["gw_refresh"]}; z=%20'
    )
    assert (await h.client.get("/app/page", headers={**API, "Cookie": mixed})).status == 200
    sent = [v for k, v in h.recorder.last["headers"] if k.lower() == "cookie"]
    assert sent == ['app_a=1; app_b="x y"; z=%20']
    assert (await h.client.get("/app/page", headers={**API, "Cookie": cookie_header(cookies)})).status == 200
    assert not [v for k, v in h.recorder.last["headers"] if k.lower() == "cookie"]
    for entry in h.recorder.requests:
        flat = repr(entry["headers"])
        assert cookies["gw_access"] not in flat and cookies["gw_refresh"] not in flat


async def test_b4_075_upstream_cannot_set_or_overwrite_gateway_cookies(h: Harness) -> None:
    """Set-Cookie from the upstream naming a gateway cookie (any prefix or case) is dropped; the
    app's own cookies pass."""
    resp = await h.client.get("/public/set-gateway-cookies", headers=API)
    assert resp.status == 200
    assert resp.headers.getall("Set-Cookie") == ["app_session=kept; Path=/"]


async def test_b4_076_hsts_on_gateway_responses_over_https(make_harness: HarnessFactory) -> None:
    """Over HTTPS every gateway-made response (JSON, errors, pages, redirects) carries
    Strict-Transport-Security of at least a year."""
    h = await make_harness(**HTTPS)
    responses = [
        await h.client.get("/auth/login", headers=NAV),
        await h.client.get("/auth/health"),
        await h.client.get("/app/page", headers=API),
        await h.client.get("/app/page", headers=NAV, allow_redirects=False),
        await h.client.post(
            "/auth/login", json={"email": "a@example.com", "password": "x" * 20}, headers=HTTPS_ORIGIN
        ),
    ]
    for resp in responses:
        hsts = resp.headers.get("Strict-Transport-Security", "")
        match = re.match(r"max-age=(\d+)", hsts)
        assert match and int(match[1]) >= 31_536_000, (resp.url, resp.status, hsts)


async def test_b4_077_tokens_never_appear_in_urls_or_links(h: Harness) -> None:
    """No access token, refresh token or session id in any Location header or page link the
    gateway produces (redirects after login, to login, after logout; the account page)."""
    await h.register()
    form = {"email": "alice@example.com", "password": PASSWORD, "next": "/app/page"}
    login = await h.client.post("/auth/login", data=form, headers=SAME_ORIGIN, allow_redirects=False)
    assert login.status == 303
    cookies = {m.key: m.value for m in login.cookies.values()}
    h.keep_secret(*cookies.values())
    jar = {"Cookie": cookie_header(cookies)}
    seen = [login.headers["Location"]]
    to_login = await h.client.get("/app/page?x=1", headers=NAV, allow_redirects=False)
    seen.append(to_login.headers["Location"])
    account = await h.client.get("/auth/account", headers={**NAV, **jar})
    assert account.status == 200
    seen += re.findall(r'(?:href|action|src)="([^"]*)"', await account.text())
    out = await h.client.post("/auth/logout", data={}, headers={**SAME_ORIGIN, **jar}, allow_redirects=False)
    seen.append(out.headers["Location"])
    session_id = h.tables()["sessions"][0][0]
    for url in seen:
        for secret in (*cookies.values(), session_id):
            assert secret not in url, url
