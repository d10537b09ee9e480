"""The proxy over HTTP against a recording upstream: routing, deny paths, header hygiene,
identity, CSRF, transparent refresh, streaming and upstream failures (DESIGN §7).

Each attack asserts what must not happen too: no upstream request on deny, no gateway
credential upstream.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from yarl import URL

from gateway.keys import ACCOUNTS
from tests.conftest import GatewayFactory, Recorder, login, register, set_cookie_headers, signed_in

HTML = {
    "Accept": "text/html,application/xhtml+xml",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
}
JSON = {"Accept": "application/json"}


def header(entry: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in entry["headers"] if k.lower() == name.lower()]


async def raw_http(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


# ---- deny paths ---------------------------------------------------------------------------------


async def test_anonymous_navigation_redirects_to_login(gw: Any, recorder: Recorder) -> None:
    """A browser navigation without a session gets 302 to the login page with a relative next."""
    resp = await gw.get("/app/page?x=1&y=%20", headers=HTML, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/auth/login?next=%2Fapp%2Fpage%3Fx%3D1%26y%3D%2520"
    assert len(recorder) == 0


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("GET", JSON),
        ("POST", {"Accept": "text/html"}),
        ("GET", {"X-Requested-With": "XMLHttpRequest"}),
        ("DELETE", {}),
    ],
    ids=["json-get", "post", "xhr", "delete"],
)
async def test_anonymous_api_requests_get_401(
    gw: Any, recorder: Recorder, method: str, headers: dict[str, str]
) -> None:
    """API, XHR and non-GET requests without a session get 401 JSON with WWW-Authenticate: Bearer."""
    resp = await gw.request(method, "/app/data", headers=headers, allow_redirects=False)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert (await resp.json())["error"] == "unauthenticated"
    assert len(recorder) == 0


async def test_form_post_after_the_session_ended_is_401_html_not_a_redirect(
    gw: Any, recorder: Recorder
) -> None:
    """A browser form post without a session gets a 401 page (never a redirect that would drop the
    typed data), telling the person how to resubmit."""
    resp = await gw.post("/app/form", data={"note": "typed"}, headers=HTML, allow_redirects=False)
    assert resp.status == 401
    assert "Location" not in resp.headers
    assert resp.headers["Content-Type"].startswith("text/html")
    text = await resp.text()
    assert "reload this page" in text and "/auth/login?next=%2F" in text
    assert len(recorder) == 0


async def test_route_can_force_status_for_browsers(make_gateway: GatewayFactory, recorder: Recorder) -> None:
    """on_unauthenticated = "status" answers 401 even to a browser navigation."""
    gw = await make_gateway(routes=[{"path": "/", "on_unauthenticated": "status"}])
    resp = await gw.get("/x", headers=HTML, allow_redirects=False)
    assert resp.status == 401
    assert len(recorder) == 0


async def test_missing_role_is_403(gw: Any, recorder: Recorder) -> None:
    """A signed-in user without the route's role gets 403 and the upstream sees nothing."""
    await signed_in(gw)
    resp = await gw.get("/admin/panel", headers=JSON)
    assert resp.status == 403
    assert len(recorder) == 0


async def test_role_grants_access(gw: Any, recorder: Recorder) -> None:
    """A user with the role reaches the role-gated route with roles in the identity header."""
    accounts = gw.server.app[ACCOUNTS]
    await register(gw)
    await accounts.set_roles("alice@example.com", ["user", "admin"])
    await login(gw)
    resp = await gw.get("/admin/panel")
    assert resp.status == 200
    assert header(recorder.last, "X-Auth-User-Roles") == ["user,admin"]


async def test_no_route_is_404(make_gateway: GatewayFactory, recorder: Recorder) -> None:
    """A path no route covers is answered 404 by the gateway itself."""
    gw = await make_gateway(routes=[{"path": "/app", "auth": "public"}])
    assert (await gw.get("/other")).status == 404
    assert (await gw.get("/application")).status == 404
    assert (await gw.get("/app/x")).status == 200
    assert len(recorder) == 1


@pytest.mark.parametrize("method", ["TRACE", "CONNECT"])
async def test_trace_and_connect_are_refused(gw: Any, recorder: Recorder, method: str) -> None:
    """TRACE would echo cookies back; neither it nor CONNECT reaches the upstream."""
    resp = await gw.request(method, "/public/x")
    assert resp.status in (400, 404, 405)
    assert len(recorder) == 0


# ---- identity and header hygiene ---------------------------------------------------------------


async def test_signed_in_request_carries_identity_and_no_gateway_credentials(
    gw: Any, recorder: Recorder
) -> None:
    """Identity headers are added; the gateway's cookies never reach the upstream, the app's do."""
    body = await signed_in(gw)
    resp = await gw.get("/app", cookies={"app_session": "keep-me"})
    assert resp.status == 200
    entry = recorder.last
    assert header(entry, "X-Auth-User-Email") == ["alice@example.com"]
    assert header(entry, "X-Auth-User-Id") == [body["user"]["id"]]
    assert header(entry, "X-Auth-User-Roles") == ["user"]
    assert len(header(entry, "X-Auth-Session-Id")) == 1
    cookies = header(entry, "Cookie")
    assert cookies == ["app_session=keep-me"]
    assert "gw_access" not in str(entry["headers"]) and "gw_refresh" not in str(entry["headers"])


async def test_bearer_request_is_authenticated_and_token_stripped(gw: Any, recorder: Recorder) -> None:
    """A Bearer client is identified and its token is not forwarded upstream."""
    body = await signed_in(gw)
    gw.session.cookie_jar.clear()
    resp = await gw.get("/app", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert resp.status == 200
    assert header(recorder.last, "Authorization") == []
    assert header(recorder.last, "X-Auth-User-Email") == ["alice@example.com"]


SPELLINGS = [
    "X-Auth-User-Email",
    "x-auth-user-email",
    "X_Auth_User_Email",
    "x_auth_user_email",
    "X-AUTH-USER-EMAIL",
    "X_auth-User_email",
]


@pytest.mark.parametrize("route", ["/public/x", "/optional/x", "/app/x"])
@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_forged_identity_headers_never_reach_upstream(
    gw: Any, recorder: Recorder, route: str, spelling: str
) -> None:
    """Every spelling of an identity header sent by the client is removed, on every kind of route;
    on a required route the user's real identity replaces it."""
    await signed_in(gw, "real@example.com")
    resp = await gw.get(route, headers={spelling: "admin@evil.example", "X_Auth_User_Id": "0"})
    assert resp.status == 200
    values = [
        v
        for k, v in recorder.last["headers"]
        if k.lower().replace("_", "-") in ("x-auth-user-email", "x-auth-user-id")
    ]
    assert "admin@evil.example" not in values and "0" not in values
    if route == "/public/x":
        assert values == []


async def test_route_header_override_strips_default_names_too(
    make_gateway: GatewayFactory, recorder: Recorder
) -> None:
    """A route with its own header names (X-WEBAUTH-USER) gets them; forged copies of any configured
    name are removed everywhere."""
    from gateway.config import HeadersConfig

    names = HeadersConfig(email="X-WEBAUTH-USER", user_id="Remote-User")
    gw = await make_gateway(routes=[{"path": "/", "headers": names}, {"path": "/public", "auth": "public"}])
    await signed_in(gw)
    await gw.get("/grafana")
    assert header(recorder.last, "X-WEBAUTH-USER") == ["alice@example.com"]
    await gw.get("/public/p", headers={"X-Webauth-User": "admin", "Remote_User": "admin"})
    assert header(recorder.last, "X-WEBAUTH-USER") == [] and header(recorder.last, "Remote-User") == []


async def test_hop_by_hop_and_connection_listed_headers_are_dropped(gw: Any, recorder: Recorder) -> None:
    """Connection-listed and hop-by-hop headers are not forwarded (RFC 9110 §7.6.1)."""
    await gw.get(
        "/public/h",
        headers={
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
        },
    )
    names = {k.lower() for k, _ in recorder.last["headers"]}
    assert not names & {"x-secret", "keep-alive", "te"}


async def test_forwarded_headers_are_built_by_the_gateway(gw: Any, recorder: Recorder) -> None:
    """X-Forwarded-For from an untrusted client is replaced, not appended to."""
    await gw.get("/public/f", headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example"})
    assert header(recorder.last, "X-Forwarded-For") == ["127.0.0.1"]
    assert header(recorder.last, "X-Forwarded-Host") == ["localhost:8080"]
    assert header(recorder.last, "X-Forwarded-Proto") == ["http"]


async def test_duplicate_authorization_is_400(gw: Any, recorder: Recorder) -> None:
    """Two Authorization headers are refused before anything else (SECURITY item 44)."""
    port = gw.server.port
    data = await raw_http(
        port,
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 400")
    assert len(recorder) == 0


async def test_duplicate_gateway_cookie_is_400(gw: Any, recorder: Recorder) -> None:
    """Two gateway cookies of one name are refused."""
    resp = await gw.get("/app", headers={"Cookie": "gw_access=a; gw_access=b"})
    assert resp.status == 400
    assert len(recorder) == 0


async def test_path_and_query_reach_the_upstream_byte_for_byte(gw: Any, recorder: Recorder) -> None:
    """An already canonical target is forwarded exactly as sent, escapes and all."""
    target = "/public/a/c%21d;x=1/%7E?q=%2F+a%20b&x=!%21&e&=&dup=1&dup=2"
    await gw.get(URL(target, encoded=True))
    assert recorder.last["path"] == target.replace("%7E", "~")


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        ("/public/../admin", "deny"),
        ("/public/%2e%2e/admin", "deny"),
        ("/public/%2E%2E/admin", "deny"),
        ("/public/.%2e/admin", "deny"),
        ("/public/%2e/../admin", "deny"),
        ("/public%2f..%2fadmin", "400"),
        ("/public/..%2Fadmin", "400"),
        ("/%2F/admin", "400"),
        ("/public/%5c../admin", "400"),
        ("/public/..\\admin", "400"),
        ("/public/%00/x", "400"),
        ("/public/secret%23/x", "400"),
        ("/public/%252e%252e/admin", "400"),
        ("/public/..;/admin", "400"),
        ("/public/%c0%ae%c0%ae/admin", "400"),
        ("//admin", "deny"),
        ("/public//../admin", "deny"),
        ("/./admin", "deny"),
        ("/publicity", "deny"),
        ("/%61dmin", "deny"),
    ],
)
async def test_path_bypass_vectors_never_reach_a_protected_path(
    gw: Any, recorder: Recorder, raw: str, expect: str
) -> None:
    """Path tricks that try to escape the public prefix are refused or judged as the protected
    path; the upstream never receives them anonymously (SECURITY B.7)."""
    # A raw socket: aiohttp's test client would resolve the dot-segments before sending.
    data = await raw_http(
        gw.server.port,
        f"GET {raw} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nConnection: close\r\n\r\n".encode(),
    )
    assert data.startswith(b"HTTP/1.1 400" if expect == "400" else b"HTTP/1.1 401")
    assert len(recorder) == 0


async def test_absolute_form_target_is_400(gw: Any, recorder: Recorder) -> None:
    """`GET http://evil/x` is refused: only origin-form targets are proxied (AIOHTTP.md §1.3)."""
    data = await raw_http(
        gw.server.port, b"GET http://evil.example/public/x HTTP/1.1\r\nHost: evil.example\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 400")
    assert len(recorder) == 0


# ---- CSRF ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({"Origin": "https://evil.example"}, False),
        ({"Origin": "null"}, False),
        ({"Origin": "http://localhost:8080.evil.example"}, False),
        ({"Origin": "http://localhost:8081"}, False),
        ({"Referer": "https://evil.example/form"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "same-site"}, False),
        ({"Origin": "http://localhost:8080"}, True),
        ({"Referer": "http://localhost:8080/app/form"}, True),
        ({"Sec-Fetch-Site": "same-origin"}, True),
        ({}, True),
    ],
    ids=[
        "evil",
        "null",
        "lookalike",
        "port",
        "referer",
        "fetch-cross",
        "fetch-same-site",
        "same",
        "same-referer",
        "fetch-same-origin",
        "no-headers",
    ],
)
async def test_csrf_guard_on_cookie_authenticated_posts(
    gw: Any, recorder: Recorder, headers: dict[str, str], allowed: bool
) -> None:
    """Cookie-authenticated unsafe requests from another origin are refused before the upstream."""
    await signed_in(gw)
    resp = await gw.post("/app/form", data={"note": "hi"}, headers=headers)
    assert (resp.status == 200) is allowed
    if not allowed:
        assert resp.status == 403
        assert len(recorder) == 0


async def test_bearer_requests_are_not_subject_to_csrf(gw: Any, recorder: Recorder) -> None:
    """A Bearer-authenticated POST with a foreign Origin passes: bearer tokens are not ambient."""
    body = await signed_in(gw)
    gw.session.cookie_jar.clear()
    resp = await gw.post(
        "/app/api",
        json={},
        headers={"Authorization": f"Bearer {body['access_token']}", "Origin": "https://x.example"},
    )
    assert resp.status == 200


async def test_cross_site_post_with_expired_cookie_does_not_refresh(
    gw: Any, clock: Any, recorder: Recorder
) -> None:
    """A forged cross-site POST is refused before authentication, so no refresh happens (item 119)."""
    await signed_in(gw)
    clock.advance(400)
    resp = await gw.post("/app/form", data={"a": "1"}, headers={"Origin": "https://evil.example"})
    assert resp.status == 403
    assert "Set-Cookie" not in resp.headers
    assert len(recorder) == 0


# ---- transparent refresh ------------------------------------------------------------------------


async def test_expired_access_cookie_is_refreshed_inside_the_request(
    gw: Any, clock: Any, recorder: Recorder
) -> None:
    """With an expired access cookie the request is proxied with identity and new cookies come back."""
    await signed_in(gw)
    old = {c.key: c.value for c in gw.session.cookie_jar}
    clock.advance(400)
    resp = await gw.get("/app/page")
    assert resp.status == 200
    assert header(recorder.last, "X-Auth-User-Email") == ["alice@example.com"]
    new = {c.split("=", 1)[0]: c.split("=", 1)[1].split(";")[0] for c in set_cookie_headers(resp)}
    assert new["gw_access"] != old["gw_access"] and new["gw_refresh"] != old["gw_refresh"]
    assert resp.headers["Cache-Control"] == "no-store"


async def test_missing_access_cookie_with_refresh_cookie_refreshes(gw: Any, recorder: Recorder) -> None:
    """A browser that already dropped the access cookie (Max-Age) is refreshed from the refresh cookie."""
    await signed_in(gw)
    refresh = next(c.value for c in gw.session.cookie_jar if c.key == "gw_refresh")
    gw.session.cookie_jar.clear()
    resp = await gw.get("/app/page", cookies={"gw_refresh": refresh})
    assert resp.status == 200
    assert any(c.startswith("gw_access=") for c in set_cookie_headers(resp))


async def test_parallel_requests_with_one_expired_session_all_pass(
    gw: Any, clock: Any, recorder: Recorder
) -> None:
    """12+ parallel requests carrying the same expired cookies all pass, get the same new refresh
    cookie, and the session stays alive (SECURITY item 53)."""
    await signed_in(gw)
    cookies = {c.key: c.value for c in gw.session.cookie_jar}
    gw.session.cookie_jar.clear()
    clock.advance(400)
    responses = await asyncio.gather(*[gw.get(f"/app/{i}", cookies=cookies) for i in range(16)])
    assert [r.status for r in responses] == [200] * 16
    refreshes = {
        c.split("=", 1)[1].split(";")[0]
        for r in responses
        for c in set_cookie_headers(r)
        if c.startswith("gw_refresh=")
    }
    assert len(refreshes) == 1
    gw.session.cookie_jar.clear()
    again = await gw.get("/app/after", cookies={"gw_refresh": refreshes.pop()})
    assert again.status == 200


async def test_dead_refresh_cookie_sends_browser_to_login_with_cookies_cleared(
    gw: Any, clock: Any, recorder: Recorder
) -> None:
    """A browser whose session ended is redirected to sign in and told to drop both cookies."""
    await signed_in(gw)
    await gw.post("/auth/logout-all")
    await signed_in(gw, "bob@example.com")
    cookies = {c.key: c.value for c in gw.session.cookie_jar}
    await gw.post("/auth/logout")
    gw.session.cookie_jar.clear()
    clock.advance(400)
    resp = await gw.get("/app/page", headers=HTML, cookies=cookies, allow_redirects=False)
    assert resp.status == 302
    cleared = set_cookie_headers(resp)
    assert len(cleared) == 2 and all("Max-Age=0" in c for c in cleared)
    assert len(recorder) == 0


async def test_tampered_access_cookie_does_not_refresh(gw: Any, recorder: Recorder) -> None:
    """A forged access cookie never triggers a refresh, even with a good refresh cookie."""
    await signed_in(gw)
    cookies = {c.key: c.value for c in gw.session.cookie_jar}
    gw.session.cookie_jar.clear()
    cookies["gw_access"] = cookies["gw_access"][:-3] + "AAA"
    resp = await gw.get("/app/x", headers=JSON, cookies=cookies)
    assert resp.status == 401
    assert not any(c.startswith("gw_refresh=") and "Max-Age=0" not in c for c in set_cookie_headers(resp))
    assert len(recorder) == 0


async def test_revoked_session_token_is_rejected_on_proxied_routes(gw: Any, recorder: Recorder) -> None:
    """After logout, the old access token no longer reaches the upstream."""
    body = await signed_in(gw)
    await gw.post("/auth/logout")
    gw.session.cookie_jar.clear()
    resp = await gw.get("/app", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert resp.status == 401
    assert len(recorder) == 0


async def test_role_change_takes_effect_on_the_next_token(gw: Any, recorder: Recorder) -> None:
    """A role change kills current access tokens; the browser refreshes transparently with the new roles."""
    await signed_in(gw)
    assert (await gw.get("/admin/x", headers=JSON)).status == 403
    accounts = gw.server.app[ACCOUNTS]
    await accounts.set_roles("alice@example.com", ["admin"])
    resp = await gw.get("/admin/x", headers=JSON)
    assert resp.status == 200
    assert header(recorder.last, "X-Auth-User-Roles") == ["admin"]


# ---- bodies, statuses, failures -----------------------------------------------------------------


async def test_every_upstream_set_cookie_survives_beside_refresh_cookies(gw: Any, clock: Any) -> None:
    """The upstream's Set-Cookie headers all reach the browser next to the gateway's new cookies."""
    await signed_in(gw)
    clock.advance(400)
    resp = await gw.get("/set-cookies")
    names = sorted(c.split("=", 1)[0] for c in set_cookie_headers(resp))
    assert names == ["app_a", "app_b", "gw_access", "gw_refresh"]


@pytest.mark.parametrize("status", [204, 304, 404, 500])
async def test_upstream_statuses_pass_through(gw: Any, status: int) -> None:
    """Upstream statuses, bodiless ones included, reach the client unchanged."""
    resp = await gw.get(f"/public/status/{status}")
    assert resp.status == status


async def test_head_request(gw: Any, recorder: Recorder) -> None:
    """HEAD is proxied and answered without a body."""
    resp = await gw.head("/public/h")
    assert resp.status == 200
    assert recorder.last["method"] == "HEAD"
    assert await resp.read() == b""


async def test_content_length_over_route_limit_is_413_upstream_untouched(
    make_gateway: GatewayFactory, recorder: Recorder
) -> None:
    """A declared body over max_body_size is refused with 413 before the upstream."""
    gw = await make_gateway(routes=[{"path": "/", "auth": "public", "max_body_size": 1000}])
    resp = await gw.post("/upload", data=b"x" * 2000)
    assert resp.status == 413
    assert len(recorder) == 0


async def test_chunked_body_over_route_limit_is_413(make_gateway: GatewayFactory, recorder: Recorder) -> None:
    """A chunked body that crosses max_body_size while streaming is cut off with 413."""
    gw = await make_gateway(routes=[{"path": "/", "auth": "public", "max_body_size": 100_000}])

    async def chunks() -> Any:
        for _ in range(50):
            yield b"y" * 10_000

    resp = await gw.post("/upload", data=chunks())
    assert resp.status == 413
    assert all(len(r["body"]) <= 100_000 for r in recorder.requests)


async def test_upstream_refused_is_502(make_gateway: GatewayFactory, unused_tcp_port: int) -> None:
    """An upstream that refuses connections gives 502 JSON (HTML for a browser), no traceback."""
    gw = await make_gateway(
        routes=[{"path": "/", "auth": "public", "upstream": f"http://127.0.0.1:{unused_tcp_port}"}]
    )
    resp = await gw.get("/x", headers=JSON)
    assert resp.status == 502
    assert (await resp.json())["error"] == "bad_gateway"
    page = await gw.get("/x", headers=HTML)
    assert page.status == 502 and "text/html" in page.headers["Content-Type"]
    assert "Traceback" not in await page.text()


async def test_expect_continue_is_not_answered_before_auth(gw: Any, recorder: Recorder) -> None:
    """`Expect: 100-continue` without credentials gets 401, never `100 Continue` (AIOHTTP.md §1.12)."""
    data = await raw_http(
        gw.server.port,
        b"POST /app/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 401")
    assert b"100 Continue" not in data
    assert len(recorder) == 0


async def test_expect_continue_with_credentials_proceeds(gw: Any, recorder: Recorder) -> None:
    """With a valid session the client is invited to send its body and it reaches the upstream."""
    body = await signed_in(gw)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.server.port)
    writer.write(
        b"POST /app/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
        + f"Authorization: Bearer {body['access_token']}\r\nConnection: close\r\n\r\n".encode()
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"hello")
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 200")
    assert recorder.last["body"] == b"hello"


async def test_upstream_cookies_never_leak_between_users(
    make_gateway: GatewayFactory, upstream: str, recorder: Recorder
) -> None:
    """Cookies the upstream set for one browser are never replayed on another's request: the
    gateway keeps no cookie jar (SECURITY item 137). The upstream is named `localhost` because
    aiohttp's default jar ignores IP hosts, which would hide the bug."""
    gw = await make_gateway(
        routes=[{"path": "/", "auth": "public", "upstream": upstream.replace("127.0.0.1", "localhost")}]
    )
    first = await gw.get("/set-cookies")
    assert len(first.headers.getall("Set-Cookie")) == 2
    gw.session.cookie_jar.clear()  # a different browser from here on
    await gw.get("/second-user")
    assert header(recorder.last, "Cookie") == []


async def test_forged_identity_headers_are_logged_as_a_security_event(
    gw: Any, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """A client sending an identity header gets it dropped and leaves a security log line
    (without the forged value)."""
    with caplog.at_level("WARNING", logger="gateway.security"):
        await gw.get("/public/x", headers={"X_Auth_User_Email": "admin@evil.example"})
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.security"]
    assert any("forged identity headers dropped" in line for line in lines)
    assert not any("admin@evil.example" in line for line in lines)
