"""SECURITY.md B.13 — logging and information leakage (items 142–145).

(Item 142 is also checked after *every* test of this suite: the harness fixture fails a test
whose logs contain any token, cookie value or password it handled.)
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

from gateway.keys import ACCOUNTS
from gateway.logs import JsonFormatter
from tests.conftest import PASSWORD
from tests.security.conftest import HarnessFactory
from tests.security.helpers import API, NAV, SAME_ORIGIN, Harness, cookie_header

MARKER = "Zq9MarkerX"


async def test_b13_142_no_secret_is_ever_logged(make_harness: HarnessFactory, clock: Any) -> None:
    """A whole life at DEBUG: register, login (form and JSON), proxied requests with cookies and
    with Bearer, a transparent refresh, /auth/refresh, a failed login, logout. No password, access
    token, refresh token, Cookie or Authorization value appears in any log line."""
    h = await make_harness()
    logging.getLogger().setLevel(logging.DEBUG)
    await h.register()
    body = await h.login()
    cookies = dict(h.jar)
    await h.client.get(
        "/app/page?token=abc", headers={**API, "Authorization": f"Bearer {body['access_token']}"}
    )
    await h.client.get(
        "/app/page", headers={**API, "Cookie": cookie_header(cookies) + "; app=secret-app-cookie-value"}
    )
    clock.advance(h.config.tokens.access_ttl + h.config.tokens.leeway + 1)
    refreshed = await h.client.get("/app/page", headers={**API, "Cookie": cookie_header(cookies)})
    new = {m.key: m.value for m in refreshed.cookies.values()}
    again = await h.client.post("/auth/refresh", headers={"Cookie": f"gw_refresh={new['gw_refresh']}"})
    newest = {m.key: m.value for m in again.cookies.values()}
    await h.client.post("/auth/login", json={"email": "alice@example.com", "password": "wrong " + PASSWORD})
    await h.client.post("/auth/logout", headers={**SAME_ORIGIN, "Cookie": cookie_header(newest)})
    logged = h.logged_text()
    secrets = [
        PASSWORD,
        body["access_token"],
        *cookies.values(),
        *new.values(),
        *newest.values(),
        "secret-app-cookie-value",
    ]
    for secret in secrets:
        assert secret not in logged
    assert "token=abc" not in logged  # the access line logs the path, never the query
    assert "/app/page" in logged  # (the access log did run)


async def test_b13_143_security_events_are_logged_with_context(h: Harness, clock: Any) -> None:
    """Registration, login success and failure, throttling, refresh reuse, logout, password change,
    CSRF blocks and refused ambiguous or malformed requests each leave a gateway.security line
    naming the user or session and the client address where it has them."""
    await h.register()
    cookies = await h.session_cookies("bob@example.com")
    for _ in range(h.config.login.max_failures + 1):
        await h.client.post(
            "/auth/login", json={"email": "alice@example.com", "password": "nope " + PASSWORD}
        )
    first = await h.client.post("/auth/refresh", headers={"Cookie": f"gw_refresh={cookies['gw_refresh']}"})
    assert first.status == 200
    clock.advance(h.config.tokens.reuse_grace + 1)
    await h.client.post("/auth/refresh", headers={"Cookie": f"gw_refresh={cookies['gw_refresh']}"})
    other = await h.session_cookies("carol@example.com")
    await h.client.post(
        "/app/form", data=b"a=1", headers={"Origin": "https://evil.example", "Cookie": cookie_header(other)}
    )
    await h.client.post("/auth/logout", headers={**SAME_ORIGIN, "Cookie": cookie_header(other)})
    await h.app[ACCOUNTS].set_password("alice@example.com", "another long passphrase 99")
    await h.raw(
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nAuthorization: a\r\nAuthorization: b\r\n"
        b"Connection: close\r\n\r\n"
    )
    await h.raw(b"GET /public/x HTTP/1.1\r\nHost: user@x\r\nConnection: close\r\n\r\n")
    events = "\n".join(h.security_events())
    for pattern in (
        r"user registered user=\w+",
        r"login succeeded user=\w+ address=127\.0\.0\.1",
        r"login failed address=127\.0\.0\.1 user=\w+",
        r"login throttled address=127\.0\.0\.1",
        r"refresh token reuse detected: session revoked session=\w+ user=\w+ .*address=127\.0\.0\.1",
        r"csrf blocked address=127\.0\.0\.1",
        r"sessions revoked reason=logout",
        r"password changed user=\w+",
        r"refused ambiguous request: duplicate Authorization",
        r"refused malformed request: invalid Host",
    ):
        assert re.search(pattern, events), pattern


def test_b13_143_json_log_lines_carry_utc_time() -> None:
    record = logging.LogRecord(
        "gateway.security", logging.WARNING, __file__, 1, "login failed address=%s", ("1.2.3.4",), None
    )
    line = json.loads(JsonFormatter().format(record))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert line["logger"] == "gateway.security" and line["message"] == "login failed address=1.2.3.4"


@pytest.mark.parametrize(
    "data",
    [
        f"GET /public/x HTTP/1.1\r\nHost: x\r\nX-{MARKER}: a\r\n b\r\n\r\n".encode(),
        f"GET /public/x HTTP/1.1\r\nHost: x\r\nCookie: gw_refresh={MARKER}\x00\r\n\r\n".encode(),
        f"{MARKER} /public/x HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET /public/{MARKER} HTTP/9.9\r\nHost: x\r\n\r\n".encode(),
        f"GET /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
        f"Content-Length: 2{MARKER}\r\n\r\n".encode(),
        f"GET /public/x HTTP/1.1\r\nHost: x\r\nX-Long: {MARKER}{'a' * 17000}\r\n\r\n".encode(),
        f"GET /public/%2f{MARKER} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
        f"GET /public/x HTTP/1.1\r\nHost: {MARKER}@x\r\nConnection: close\r\n\r\n".encode(),
        f"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(MARKER) + 1}\r\nConnection: close\r\n\r\n{{{MARKER}".encode(),
        f"GET /nowhere/{MARKER} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MARKER}\r\n"
        "Connection: close\r\n\r\n".encode(),
    ],
    ids=[
        "obs-fold",
        "nul-in-cookie",
        "bad-method",
        "bad-version",
        "bad-content-length",
        "line-too-long",
        "bad-path",
        "bad-host",
        "bad-json",
        "unauthenticated",
    ],
)
async def test_b13_144_error_answers_never_echo_the_request(h: Harness, data: bytes) -> None:
    """Parser errors (answered by aiohttp before any gateway code) and the gateway's own errors
    carry a fixed body: nothing of the request line, headers or body comes back."""
    resp = await h.raw(data)
    assert 400 <= resp.status < 500
    assert MARKER.encode() not in resp.data
    assert MARKER.lower().encode() not in resp.data.lower()
    body = json.loads(resp.body)
    assert {"error", "message"} <= set(body) <= {"error", "message", "fields"}


async def test_b13_145_no_version_detail_no_debug_output_no_trace(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Server` never names Python or aiohttp (gateway answers, proxied answers, parser errors),
    there is no X-Powered-By, an unexpected exception is a generic 500 without traceback, and
    TRACE is refused."""
    answers = [
        await h.raw(b"GET /auth/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        await h.raw(b"GET /public/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        await h.raw(b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
        await h.raw(b"BREW /public/x HTTP/1.1\r\nHost: x\r\n\r\n"),
        await h.raw(b"GET /app/x HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\nConnection: close\r\n\r\n"),
    ]
    for resp in answers:
        assert resp.header("Server") == ["gateway"], resp.data[:300]
        assert not resp.header("X-Powered-By")
        assert b"aiohttp" not in resp.data.lower() and b"python" not in resp.data.lower()

    async def explode(*_: Any, **__: Any) -> None:
        raise RuntimeError(f"internal detail {MARKER}")

    monkeypatch.setattr(h.app[ACCOUNTS], "login", explode)
    crash = await h.client.post(
        "/auth/login", json={"email": "a@example.com", "password": PASSWORD}, headers=NAV
    )
    assert crash.status == 500
    text = await crash.text()
    assert MARKER not in text and "Traceback" not in text and "RuntimeError" not in text
    assert crash.headers["Server"] == "gateway"
    trace = await h.raw(
        b"TRACE /public/x HTTP/1.1\r\nHost: x\r\nCookie: gw_access=abc\r\nConnection: close\r\n\r\n"
    )
    assert trace.status == 405 and b"gw_access" not in trace.data
