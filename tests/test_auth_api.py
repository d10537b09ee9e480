"""The /auth API over HTTP against a real gateway and SQLite file (DESIGN §4, §5)."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from gateway.keys import PASSWORDS
from tests.conftest import PASSWORD, GatewayFactory, login, register, set_cookie_headers, signed_in


async def test_register_returns_the_user(gw: Any) -> None:
    """POST /auth/register answers 201 with id, normalised email, default roles and created_at."""
    resp = await gw.post("/auth/register", json={"email": "  Alice@Example.COM ", "password": PASSWORD})
    assert resp.status == 201
    body = await resp.json()
    assert body["email"] == "alice@example.com"
    assert body["roles"] == ["user"]
    assert set(body) == {"id", "email", "roles", "created_at"}
    assert "Set-Cookie" not in resp.headers


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"password": PASSWORD}, "email"),
        ({"email": "alice@example.com"}, "password"),
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
        ({"email": "ali\u200bce@example.com", "password": PASSWORD}, "email"),
        ({"email": "alice,bob@example.com", "password": PASSWORD}, "email"),
        ({"email": "alice@example.com", "password": "short pass 14c"}, "password"),
        ({"email": "alice@example.com", "password": "x" * 129}, "password"),
        ({"email": "alice@example.com", "password": "password1234567"}, "password"),
        ({"email": "alice@example.com", "password": "alice@example.com"}, "password"),
    ],
    ids=[
        "no-email",
        "no-password",
        "bad-email",
        "zero-width",
        "comma",
        "too-short",
        "too-long",
        "common",
        "context",
    ],
)
async def test_register_rejects_invalid_input_with_fields(
    gw: Any, payload: dict[str, str], field: str
) -> None:
    """Invalid registrations get 400 invalid_request naming the field, and create no user."""
    resp = await gw.post("/auth/register", json=payload)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "invalid_request"
    assert field in body["fields"]
    if "email" in payload and field == "password":
        login_resp = await gw.post(
            "/auth/login", json={"email": payload["email"], "password": payload.get("password")}
        )
        assert login_resp.status in (400, 401)


async def test_register_accepts_a_passphrase_without_composition_rules(gw: Any) -> None:
    """A long passphrase of lower-case words is accepted: no composition rules (NIST SP 800-63B-4)."""
    resp = await gw.post(
        "/auth/register", json={"email": "p@example.com", "password": "purple otter climbs quietly"}
    )
    assert resp.status == 201


async def test_register_duplicate_email_is_409(gw: Any) -> None:
    """The same email, however it is cased or padded, cannot register twice."""
    await register(gw, "bob@example.com")
    resp = await gw.post("/auth/register", json={"email": "BOB@example.com ", "password": PASSWORD})
    assert resp.status == 409
    assert (await resp.json())["error"] == "email_taken"


async def test_concurrent_registration_of_one_email_yields_exactly_one_201(gw: Any) -> None:
    """Ten simultaneous registrations of one email: exactly one succeeds, the rest are 409."""
    statuses = await asyncio.gather(
        *[
            gw.post("/auth/register", json={"email": "race@example.com", "password": PASSWORD})
            for _ in range(10)
        ]
    )
    codes = sorted(r.status for r in statuses)
    assert codes.count(201) == 1
    assert codes.count(409) == 9


async def test_registration_closed_is_403(make_gateway: GatewayFactory) -> None:
    """With registration disabled, POST /auth/register answers 403 registration_closed."""
    gw = await make_gateway(registration={"enabled": False})
    resp = await gw.post("/auth/register", json={"email": "a@example.com", "password": PASSWORD})
    assert resp.status == 403
    assert (await resp.json())["error"] == "registration_closed"


async def test_registration_domain_allow_list(make_gateway: GatewayFactory) -> None:
    """Only allowed email domains may register."""
    gw = await make_gateway(registration={"allowed_email_domains": ("corp.example",)})
    bad = await gw.post("/auth/register", json={"email": "a@other.example", "password": PASSWORD})
    assert bad.status == 403
    good = await gw.post("/auth/register", json={"email": "a@corp.example", "password": PASSWORD})
    assert good.status == 201


async def test_body_over_64_kib_is_413(gw: Any) -> None:
    """Bodies past 64 KiB are refused with 413 before parsing."""
    resp = await gw.post(
        "/auth/login",
        data=b'{"email": "a@example.com", "password": "' + b"x" * 70_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 413
    assert (await resp.json())["error"] == "payload_too_large"


async def test_other_content_types_are_415(gw: Any) -> None:
    """Only JSON and HTML forms are accepted."""
    resp = await gw.post("/auth/login", data=b"email=a", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert (await resp.json())["error"] == "unsupported_media_type"


async def test_malformed_json_is_400_without_echo(gw: Any) -> None:
    """A broken JSON body gets a generic 400 that does not echo the input."""
    resp = await gw.post(
        "/auth/login", data=b'{"email": "<script>', headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    text = await resp.text()
    assert "<script>" not in text
    assert "Traceback" not in text


async def test_login_returns_tokens_and_sets_both_cookies(gw: Any) -> None:
    """Login answers the DESIGN §4 body and sets HttpOnly, SameSite, Path=/ cookies with no-store."""
    await register(gw)
    resp = await gw.post("/auth/login", json={"email": "alice@example.com", "password": PASSWORD})
    assert resp.status == 200
    body = await resp.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["user"]["email"] == "alice@example.com"
    assert "refresh_token" not in body
    cookies = {c.split("=", 1)[0]: c for c in set_cookie_headers(resp)}
    assert set(cookies) == {"gw_access", "gw_refresh"}
    for header in cookies.values():
        assert "HttpOnly" in header
        assert "Path=/" in header
        assert "SameSite=Lax" in header
        assert "Domain" not in header
        assert "Secure" not in header  # public_url is http://localhost: secure = auto resolves to false
    assert "Max-Age=300" in cookies["gw_access"]
    assert "Max-Age=1800" in cookies["gw_refresh"]
    assert resp.headers["Cache-Control"] == "no-store"


async def test_secure_cookies_use_the_host_prefix(make_gateway: GatewayFactory) -> None:
    """With Secure cookies both names carry the __Host- prefix and the Secure attribute."""
    gw = await make_gateway(cookies={"secure": True})
    await register(gw)
    resp = await gw.post("/auth/login", json={"email": "alice@example.com", "password": PASSWORD})
    names = sorted(c.split("=", 1)[0] for c in set_cookie_headers(resp))
    assert names == ["__Host-gw_access", "__Host-gw_refresh"]
    assert all("Secure" in c and "Path=/" in c for c in set_cookie_headers(resp))


async def test_expose_refresh_token_for_native_clients(make_gateway: GatewayFactory) -> None:
    """expose_refresh_token adds refresh_token to the body, usable with POST /auth/refresh JSON."""
    gw = await make_gateway(tokens={"expose_refresh_token": True})
    await register(gw)
    body = await login(gw)
    gw.session.cookie_jar.clear()
    resp = await gw.post("/auth/refresh", json={"refresh_token": body["refresh_token"]})
    assert resp.status == 200
    assert (await resp.json())["refresh_token"] != body["refresh_token"]


@pytest.mark.parametrize(
    ("email", "password"),
    [("alice@example.com", "wrong password entirely!"), ("nobody@example.com", PASSWORD)],
    ids=["wrong-password", "unknown-email"],
)
async def test_login_failures_are_indistinguishable(gw: Any, email: str, password: str) -> None:
    """Unknown email and wrong password get the same 401 body, and no cookies."""
    await register(gw)
    resp = await gw.post("/auth/login", json={"email": email, "password": password})
    assert resp.status == 401
    assert await resp.json() == {
        "error": "invalid_credentials",
        "message": "the email or password is incorrect",
    }
    assert "Set-Cookie" not in resp.headers


async def test_login_via_query_string_is_not_allowed(gw: Any) -> None:
    """GET /auth/login with credentials in the query only shows the page; it never logs in."""
    await register(gw)
    resp = await gw.get(f"/auth/login?email=alice@example.com&password={PASSWORD}")
    assert "Set-Cookie" not in resp.headers


async def test_throttling_locks_the_account_but_not_others(make_gateway: GatewayFactory) -> None:
    """After max_failures the account gets 429 + Retry-After, even with the right password;
    another account from the same address still signs in."""
    gw = await make_gateway(login={"max_failures": 3})
    await register(gw, "victim@example.com")
    await register(gw, "other@example.com")
    for _ in range(3):
        r = await gw.post(
            "/auth/login", json={"email": "victim@example.com", "password": "wrong wrong wrong!"}
        )
        assert r.status == 401
    locked = await gw.post("/auth/login", json={"email": "victim@example.com", "password": PASSWORD})
    assert locked.status == 429
    assert int(locked.headers["Retry-After"]) >= 1
    assert (await locked.json())["error"] == "too_many_attempts"
    assert "Set-Cookie" not in locked.headers
    other = await gw.post("/auth/login", json={"email": "other@example.com", "password": PASSWORD})
    assert other.status == 200


async def test_throttling_applies_to_unknown_emails_too(make_gateway: GatewayFactory) -> None:
    """A non-existent email is throttled exactly like an existing one (no enumeration)."""
    gw = await make_gateway(login={"max_failures": 2})
    for _ in range(2):
        await gw.post("/auth/login", json={"email": "ghost@example.com", "password": "whatever it is!"})
    resp = await gw.post("/auth/login", json={"email": "ghost@example.com", "password": "whatever it is!"})
    assert resp.status == 429


async def test_throttle_lock_expires(make_gateway: GatewayFactory, clock: Any) -> None:
    """The lock is temporary: after the back-off the right password works again."""
    gw = await make_gateway(login={"max_failures": 2})
    await register(gw)
    for _ in range(2):
        await gw.post("/auth/login", json={"email": "alice@example.com", "password": "nope nope nope!"})
    assert (
        await gw.post("/auth/login", json={"email": "alice@example.com", "password": PASSWORD})
    ).status == 429
    clock.advance(31)
    assert (
        await gw.post("/auth/login", json={"email": "alice@example.com", "password": PASSWORD})
    ).status == 200


async def test_per_address_limit(make_gateway: GatewayFactory) -> None:
    """Password spraying from one address is throttled across different emails."""
    gw = await make_gateway(login={"max_failures_per_address": 3})
    for i in range(3):
        await gw.post("/auth/login", json={"email": f"u{i}@example.com", "password": "spray spray spray"})
    resp = await gw.post("/auth/login", json={"email": "fresh@example.com", "password": "spray spray spray"})
    assert resp.status == 429


async def test_me_and_sessions(gw: Any) -> None:
    """/auth/me names the user and session; /auth/sessions lists it as current."""
    await signed_in(gw)
    me = await (await gw.get("/auth/me")).json()
    assert me["email"] == "alice@example.com"
    assert me["roles"] == ["user"]
    sessions = await (await gw.get("/auth/sessions")).json()
    assert [s["id"] for s in sessions] == [me["session_id"]]
    assert sessions[0]["current"] is True


async def test_me_without_session_is_401(gw: Any) -> None:
    """/auth/me and /auth/sessions answer 401 without a session."""
    for path in ("/auth/me", "/auth/sessions"):
        resp = await gw.get(path)
        assert resp.status == 401
        assert (await resp.json())["error"] == "unauthenticated"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_bearer_token_authenticates(gw: Any) -> None:
    """An API client authenticates with Authorization: Bearer and no cookies."""
    body = await signed_in(gw)
    gw.session.cookie_jar.clear()
    resp = await gw.get("/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert resp.status == 200


async def test_logout_revokes_the_session_and_clears_cookies(gw: Any) -> None:
    """Logout answers 204, clears both cookies, and the old access token stops working at once."""
    body = await signed_in(gw)
    resp = await gw.post("/auth/logout")
    assert resp.status == 204
    cleared = set_cookie_headers(resp)
    assert len(cleared) == 2 and all("Max-Age=0" in c for c in cleared)
    again = await gw.get("/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert again.status == 401


async def test_logout_is_idempotent_without_a_session(gw: Any) -> None:
    """Logout without any session still answers 204."""
    assert (await gw.post("/auth/logout")).status == 204


async def test_logout_all_revokes_every_session(gw: Any, make_gateway: GatewayFactory) -> None:
    """logout-all ends every session of the user, including ones on other clients."""
    first = await signed_in(gw)
    second = await login(gw)
    resp = await gw.post("/auth/logout-all")
    assert resp.status == 204
    for body in (first, second):
        r = await gw.get("/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
        assert r.status == 401


async def test_logout_all_requires_a_session(gw: Any) -> None:
    """logout-all without a session is 401."""
    assert (await gw.post("/auth/logout-all")).status == 401


async def test_cross_site_login_post_is_refused(gw: Any) -> None:
    """A cross-site POST to /auth/login is 403 and sets no cookie (login CSRF, SECURITY item 19)."""
    await register(gw)
    resp = await gw.post(
        "/auth/login",
        json={"email": "alice@example.com", "password": PASSWORD},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert resp.status == 403
    assert "Set-Cookie" not in resp.headers


async def test_same_origin_login_post_is_allowed(gw: Any) -> None:
    """A POST whose Origin is the public URL passes the CSRF check."""
    await register(gw)
    resp = await gw.post(
        "/auth/login",
        json={"email": "alice@example.com", "password": PASSWORD},
        headers={"Origin": "http://localhost:8080"},
    )
    assert resp.status == 200


async def test_health(gw: Any) -> None:
    """/auth/health answers 200 ok while the store answers."""
    resp = await gw.get("/auth/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_jwks_is_404_for_hs256(gw: Any) -> None:
    """HS256 keys are secret: no JWKS."""
    assert (await gw.get("/auth/jwks.json")).status == 404


async def test_jwks_lists_public_keys_for_eddsa(make_gateway: GatewayFactory) -> None:
    """With EdDSA the JWKS lists the public key, and tokens verify with it."""
    gw = await make_gateway(tokens={"algorithm": "EdDSA"})
    body = await (await gw.get("/auth/jwks.json")).json()
    assert len(body["keys"]) == 1
    key = body["keys"][0]
    assert key["kty"] == "OKP" and key["alg"] == "EdDSA" and "d" not in key
    tokens = await signed_in(gw)
    gw.session.cookie_jar.clear()
    resp = await gw.get("/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert resp.status == 200


async def test_server_header_hides_versions(gw: Any) -> None:
    """No response names the Python or aiohttp version."""
    resp = await gw.get("/auth/health")
    assert resp.headers["Server"] == "gateway"


async def test_cross_site_auth_post_is_logged_as_a_security_event(
    gw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused cross-site post to /auth/* leaves a csrf security log line."""
    with caplog.at_level("WARNING", logger="gateway.security"):
        resp = await gw.post("/auth/logout", headers={"Origin": "https://evil.example"})
    assert resp.status == 403
    assert any("csrf blocked" in r.getMessage() for r in caplog.records if r.name == "gateway.security")


async def test_password_hashing_threads_run_below_the_event_loop(gw: Any) -> None:
    """argon2 threads are niced so a login storm yields CPU to proxied traffic (Linux only)."""
    pool = gw.server.app[PASSWORDS]._pool
    seen = pool.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
    assert seen == os.getpriority(os.PRIO_PROCESS, 0) + 10
