"""SECURITY.md B.5 — identity-header spoofing, hop-by-hop and forwarding headers (items 78–92).

The identity headers are `X-Auth-User-Id`, `X-Auth-User-Email`, `X-Auth-User-Roles` and
`X-Auth-Session-Id` (DESIGN §3). Spoofing tests use raw sockets where the exact spelling or
repetition of a header line matters.
"""

from __future__ import annotations

import ipaddress

import pytest

from tests.security.conftest import HarnessFactory, RawUpstream
from tests.security.helpers import API, NAV, Harness, cookie_header

IDENTITY = ("x-auth-user-id", "x-auth-user-email", "x-auth-user-roles", "x-auth-session-id")


def received(h: Harness, name: str) -> list[str]:
    key = name.lower().replace("_", "-")
    return [v for k, v in h.recorder.last["headers"] if k.lower().replace("_", "-") == key]


def identity_received(h: Harness) -> dict[str, list[str]]:
    return {n: received(h, n) for n in IDENTITY if received(h, n)}


def raw_get(path: str, *lines: str) -> bytes:
    extra = "".join(f"{line}\r\n" for line in lines)
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n"
    return f"{head}{extra}Connection: close\r\n\r\n".encode()


async def test_b5_078_spoofed_identity_on_a_protected_route_is_replaced(h: Harness) -> None:
    cookies = await h.session_cookies("bob@example.com")
    spoof = {
        "X-Auth-User-Id": "admin",
        "X-Auth-User-Email": "admin@example.com",
        "X-Auth-User-Roles": "admin",
        "X-Auth-Session-Id": "forged",
    }
    resp = await h.client.get("/app/page", headers={**API, **spoof, "Cookie": cookie_header(cookies)})
    assert resp.status == 200
    got = identity_received(h)
    assert got["x-auth-user-email"] == ["bob@example.com"]
    assert all(len(v) == 1 and v[0] not in ("admin", "admin@example.com", "forged") for v in got.values())
    assert got["x-auth-user-roles"] == ["user"]


@pytest.mark.parametrize("path", ["/public/x", "/optional/x"])
async def test_b5_079_spoofed_identity_on_a_public_route_never_arrives(h: Harness, path: str) -> None:
    resp = await h.client.get(path, headers={**API, "X-Auth-User-Id": "admin", "X-Auth-User-Roles": "admin"})
    assert resp.status == 200
    assert identity_received(h) == {}


async def test_b5_080_every_spelling_of_an_identity_header_is_removed(h: Harness) -> None:
    """`X_Auth_User_Id`, `x_auth_user_id`, `X-AUTH-USER-ID`, `X-Auth_User-Id`, `x-auth-user-id`
    in one request (CGI/WSGI/PHP read them all as one variable): none survives."""
    spellings = [
        "X_Auth_User_Id: s1",
        "x_auth_user_id: s2",
        "X-AUTH-USER-ID: s3",
        "X-Auth_User-Id: s4",
        "x-auth-user-id: s5",
        "X_AUTH_USER_ROLES: admin",
        "x-auth_session-id: s6",
    ]
    anon = await h.raw(raw_get("/public/x", *spellings))
    assert anon.status == 200
    assert identity_received(h) == {}
    cookies = await h.session_cookies()
    signed = await h.raw(raw_get("/app/x", *spellings, f"Cookie: {cookie_header(cookies)}"))
    assert signed.status == 200
    got = identity_received(h)
    assert len(got["x-auth-user-id"]) == 1 and not got["x-auth-user-id"][0].startswith("s")
    assert got["x-auth-user-roles"] == ["user"]
    names = [k for k, _ in h.recorder.last["headers"]]
    assert not any("_" in n for n in names if n.lower().replace("_", "-") in IDENTITY)


async def test_b5_081_duplicated_identity_lines_are_all_removed(h: Harness) -> None:
    cookies = await h.session_cookies()
    resp = await h.raw(
        raw_get("/app/x", "X-Auth-User-Id: a", "X-Auth-User-Id: b", f"Cookie: {cookie_header(cookies)}")
    )
    assert resp.status == 200
    values = received(h, "X-Auth-User-Id")
    assert len(values) == 1 and values[0] not in ("a", "b")


@pytest.mark.parametrize(
    "line",
    [
        "X-Auth-User-Id: bob\r\n admin",
        "X-Auth-User-Id: bob\rX-Evil: 1",
        "X-Auth-User-Id: bo\x00b",
        "X-Auth-User-Id: bob\nX-Evil: 1",
    ],
    ids=["obs-fold", "bare-cr", "nul", "bare-lf"],
)
async def test_b5_082_header_value_injection_is_rejected_by_the_parser(h: Harness, line: str) -> None:
    with h.unchanged():
        resp = await h.raw(f"GET /public/x HTTP/1.1\r\nHost: x\r\n{line}\r\n\r\n".encode())
    assert resp.status == 400 and resp.closed


@pytest.mark.parametrize(
    "connection",
    [
        "close, X-Auth-User-Id",
        "X-Auth-User-Email, Cookie, Authorization",
        "x_auth_user_roles",
        "keep-alive, X-Auth-Session-Id",
    ],
)
async def test_b5_083_connection_cannot_remove_injected_identity(h: Harness, connection: str) -> None:
    """Connection options are applied to the inbound headers before identity is added, so a
    client listing the gateway's headers there cannot strip them; Connection is not forwarded."""
    cookies = await h.session_cookies()
    resp = await h.raw(
        raw_get(
            "/app/x",
            f"Connection: {connection}",
            "X-Auth-User-Id: admin",
            f"Cookie: {cookie_header(cookies)}",
        ).replace(b"Connection: close\r\n", b"")
    )
    assert resp.status == 200
    got = identity_received(h)
    assert set(got) == set(IDENTITY)
    assert got["x-auth-user-email"] == ["alice@example.com"]
    assert received(h, "Connection") == [] or received(h, "Connection") == ["keep-alive"]


async def test_b5_084_hop_by_hop_headers_are_removed_both_ways(
    make_harness: HarnessFactory, raw_upstream: RawUpstream
) -> None:
    """Requests: Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade, Proxy-Authorization and
    Connection-listed headers never reach the upstream. Responses: the same set, plus
    Proxy-Authenticate and the upstream's Connection-listed headers, never reach the client."""
    raw_upstream.response = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close, X-Up-Secret\r\nX-Up-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nTrailer: X-Sum\r\nUpgrade: h2c\r\n"
        b"Proxy-Connection: keep-alive\r\nX-Up-Normal: kept\r\n\r\nok"
    )
    h = await make_harness(upstream_url=raw_upstream.url, routes=[{"path": "/", "auth": "public"}])
    sent = raw_get(
        "/x",
        "Keep-Alive: 300",
        "Proxy-Connection: keep-alive",
        "TE: trailers",
        "Trailer: X-Sum",
        "Upgrade: h2c",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "X-Listed: 1",
        "X-Client-Normal: kept",
    ).replace(b"Connection: close", b"Connection: close, X-Listed, Upgrade")
    resp = await h.raw(sent)
    assert resp.status == 200
    head = raw_upstream.received[-1].split(b"\r\n\r\n", 1)[0].lower()
    for name in (
        b"keep-alive",
        b"proxy-connection",
        b"te:",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"x-listed",
    ):
        assert name not in head, name
    assert b"x-client-normal: kept" in head
    names = {k.lower() for k, _ in resp.headers}
    for gone in ("keep-alive", "proxy-authenticate", "trailer", "upgrade", "proxy-connection", "x-up-secret"):
        assert gone not in names, gone
    assert resp.header("X-Up-Normal") == ["kept"]


async def test_b5_085_forged_client_address_headers_are_ignored(h: Harness) -> None:
    """From an untrusted peer, X-Forwarded-For, X-Real-IP and Forwarded are ignored: the upstream
    gets X-Forwarded-For built from the socket peer, and login throttling counts the peer."""
    resp = await h.client.get(
        "/public/x",
        headers={
            **API,
            "X-Forwarded-For": "127.0.0.9, 10.0.0.1",
            "X-Real-IP": "10.0.0.1",
            "Forwarded": "for=1.2.3.4",
        },
    )
    assert resp.status == 200
    assert received(h, "X-Forwarded-For") == ["127.0.0.1"]
    assert received(h, "X-Real-IP") == [] and received(h, "Forwarded") == []
    limit = h.config.login.max_failures_per_address
    for i in range(limit):
        await h.client.post(
            "/auth/login",
            json={"email": f"u{i}@example.com", "password": "x" * 20},
            headers={"X-Forwarded-For": f"10.9.{i}.1"},
        )
    with h.unchanged():
        blocked = await h.client.post(
            "/auth/login",
            json={"email": "z@example.com", "password": "x" * 20},
            headers={"X-Forwarded-For": "10.10.10.10"},
        )
    assert blocked.status == 429


async def test_b5_085_trusted_proxy_chain_is_walked_right_to_left(make_harness: HarnessFactory) -> None:
    """From a configured trusted proxy, the first untrusted address from the right is the client."""
    h = await make_harness(
        server={"trusted_proxies": (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8"))}
    )
    resp = await h.client.get(
        "/public/x", headers={**API, "X-Forwarded-For": "6.6.6.6, 203.0.113.9, 10.1.1.1"}
    )
    assert resp.status == 200
    assert received(h, "X-Forwarded-For") == ["6.6.6.6, 203.0.113.9, 10.1.1.1, 203.0.113.9"]


async def test_b5_086_forged_host_and_scheme_are_not_believed(h: Harness) -> None:
    """X-Forwarded-Host/-Proto and Forwarded from the client do not move redirects, the CSRF
    target origin or what the upstream is told: those come from configuration."""
    forged = {
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "Forwarded": "host=evil.example;proto=https",
    }
    redirect = await h.client.get("/app/page", headers={**NAV, **forged}, allow_redirects=False)
    assert redirect.status == 302 and "evil" not in redirect.headers["Location"]
    assert redirect.headers["Location"].startswith("/auth/login?")
    cookies = await h.session_cookies()
    with h.unchanged():
        csrf = await h.client.post(
            "/app/form",
            data=b"a=1",
            headers={
                **forged,
                "Host": "evil.example",
                "Origin": "https://evil.example",
                "Cookie": cookie_header(cookies),
            },
        )
    assert csrf.status == 403
    await h.client.get("/public/x", headers={**API, **forged})
    assert received(h, "X-Forwarded-Host") == ["localhost:8080"]
    assert received(h, "X-Forwarded-Proto") == ["http"]
    assert received(h, "Forwarded") == []


@pytest.mark.parametrize(
    "hint", ["X-Original-URL", "X-Rewrite-URL", "X-Forwarded-Uri", "X-Forwarded-Prefix", "X-Forwarded-Path"]
)
async def test_b5_087_routing_hints_are_ignored_and_stripped(h: Harness, hint: str) -> None:
    """A public path with a routing hint naming a protected one: judged on the real path (public),
    and the hint never reaches the upstream; a protected path with a public hint stays protected."""
    resp = await h.client.get("/public/x", headers={**API, hint: "/admin/panel"})
    assert resp.status == 200
    assert received(h, hint) == []
    with h.unchanged():
        denied = await h.client.get("/admin/panel", headers={**API, hint: "/public/x"})
    assert denied.status == 401


async def test_b5_088_header_based_bypasses_have_no_effect(h: Harness) -> None:
    """Probe-looking User-Agents and health headers do not skip authentication; the health
    endpoint is answered by the gateway itself and never proxied."""
    with h.unchanged():
        for headers in (
            {"User-Agent": "kube-probe/1.29"},
            {"X-Health-Check": "1"},
            {"User-Agent": "ELB-HealthChecker/2.0"},
        ):
            denied = await h.client.get("/app/health", headers={**API, **headers})
            assert denied.status == 401
        health = await h.client.get("/auth/health")
        assert health.status == 200 and (await health.json()) == {"status": "ok"}


@pytest.mark.parametrize(
    "target",
    [
        "http://evil.example/public/x",
        "http://localhost:8080/admin",
        "https://x/public/x",
        "//evil.example/public/x",
    ],
)
async def test_b5_089_absolute_form_target_is_refused(h: Harness, target: str) -> None:
    with h.unchanged():
        resp = await h.raw(
            f"GET {target} HTTP/1.1\r\nHost: localhost:8080\r\nAccept: application/json\r\n"
            "Connection: close\r\n\r\n".encode()
        )
    if target.startswith("//"):
        assert resp.status == 401  # origin-form: the path "//evil.example/…" is canonicalised, not a host
    else:
        assert resp.status == 400
    assert b"evil" not in resp.body


async def test_b5_090_unknown_host_never_shapes_a_url(h: Harness) -> None:
    """The gateway has one fixed origin (public_url): a foreign Host is answered like any other,
    and nothing the gateway writes (redirects, pages, forwarded headers) is built from it."""
    redirect = await h.raw(
        b"GET /app/page?x=1 HTTP/1.1\r\nHost: evil.example\r\nAccept: text/html\r\n"
        b"Sec-Fetch-Mode: navigate\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert redirect.status == 302
    page = await h.raw(b"GET /auth/login HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert page.status == 200
    await h.raw(b"GET /public/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert received(h, "X-Forwarded-Host") == ["localhost:8080"]
    assert all(v != "evil.example" for v in received(h, "Host"))
    for resp in (redirect, page):
        assert b"evil.example" not in resp.data


async def test_b5_091_validated_bearer_token_is_not_forwarded(h: Harness) -> None:
    body = await h.signed_in()
    resp = await h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {body['access_token']}"})
    assert resp.status == 200
    assert received(h, "Authorization") == []
    assert body["access_token"] not in repr(h.recorder.last)
    basic = await h.client.get("/public/x", headers={**API, "Authorization": "Basic YWxpY2U6cHc="})
    assert basic.status == 200
    assert received(h, "Authorization") == ["Basic YWxpY2U6cHc="]  # not the gateway's: the app's own
