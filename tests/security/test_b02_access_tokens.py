"""SECURITY.md B.2 — access-token (JWT) validation (items 23–49).

Every bad token is tried twice against a protected proxied path: as `Authorization: Bearer`
(401 `error="invalid_token"`) and as the access cookie next to a *valid* refresh cookie (401,
cookies cleared, and no transparent refresh: a tampered token must never lead to a rotation).
Neither reaches the upstream or writes to the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.keyring import KeyFileError, KeyRing, generate_key
from gateway.keys import ACCOUNTS, TOKENS
from tests.security.conftest import HarnessFactory
from tests.security.helpers import API, Harness, b64, forge, unverified

INVALID_TOKEN = 'Bearer error="invalid_token"'


@dataclass
class Victim:
    h: Harness
    token: str
    header: dict[str, Any]
    payload: dict[str, Any]
    refresh: str


async def victim_of(h: Harness) -> Victim:
    cookies = await h.session_cookies()
    token = cookies["gw_access"]
    header, payload = unverified(token)
    return Victim(h, token, header, payload, cookies["gw_refresh"])


@pytest.fixture
async def v(h: Harness) -> Victim:
    return await victim_of(h)


def sign(v: Victim, header: dict[str, Any], payload: dict[str, Any], *, key: bytes | None = None) -> str:
    """HS256 over any header and payload, with the gateway's real key unless `key` is given."""
    signing_input = forge(header, payload).rsplit(".", 1)[0]
    secret = v.h.signing_key if key is None else key
    return signing_input + "." + b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


async def assert_refused(v: Victim, token: str) -> None:
    """Bearer: 401 invalid_token. Cookie with a valid refresh cookie beside it: 401, cookies
    cleared, no refresh. Neither reaches the upstream; nothing is written; argon2 never runs."""
    h = v.h
    with h.unchanged():
        bearer = await h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {token}"})
        cookie = await h.client.get(
            "/app/page", headers={**API, "Cookie": f"gw_access={token}; gw_refresh={v.refresh}"}
        )
    assert bearer.status == 401, await bearer.text()
    assert bearer.headers["WWW-Authenticate"] == INVALID_TOKEN
    assert "Set-Cookie" not in bearer.headers
    assert cookie.status == 401
    cleared = {m.key: m for m in cookie.cookies.values()}
    assert cleared["gw_access"].value == "" and cleared["gw_refresh"].value == ""
    assert cleared["gw_refresh"]["max-age"] == "0"


async def test_b2_baseline_the_real_token_and_refresh_work(v: Victim) -> None:
    """Baseline: the untouched token passes both ways, so every refusal below is meaningful."""
    ok = await v.h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {v.token}"})
    assert ok.status == 200
    assert len(v.h.recorder) == 1


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_b2_023_alg_none_is_refused(v: Victim, alg: str) -> None:
    await assert_refused(v, forge({**v.header, "alg": alg}, v.payload))


async def test_b2_024_null_signature_is_refused(v: Victim) -> None:
    await assert_refused(v, v.token.rsplit(".", 1)[0] + ".")


@pytest.mark.parametrize("how", ["payload", "flip", "trailing"])
async def test_b2_025_tampered_payload_or_signature_is_refused(v: Victim, how: str) -> None:
    head, body, sig = v.token.split(".")
    if how == "payload":
        forged = forge(v.header, {**v.payload, "roles": ["admin"]}).rsplit(".", 1)[0] + "." + sig
    elif how == "flip":
        forged = f"{head}.{body}.{sig[:-2]}{'A' if sig[-2] != 'A' else 'B'}{sig[-1]}"
    else:
        forged = v.token + "garbage"
    await assert_refused(v, forged)


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "RS256"])
async def test_b2_026_hs256_keyed_with_the_public_key_is_refused(
    make_harness: HarnessFactory, algorithm: str
) -> None:
    """Algorithm confusion in the asymmetric modes: HS256 keyed with the public key (PEM or JWK)."""
    h = await make_harness(tokens={"algorithm": algorithm})
    v = await victim_of(h)
    public = h.app[TOKENS].ring.current.verifying_key
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk = json.dumps((await (await h.client.get("/auth/jwks.json")).json())["keys"][0]).encode()
    for secret in (pem, jwk):
        await assert_refused(v, sign(v, {**v.header, "alg": "HS256"}, v.payload, key=secret))


async def test_b2_027_other_algorithm_of_the_same_family_is_refused(v: Victim) -> None:
    signing_input = forge({**v.header, "alg": "HS512"}, v.payload).rsplit(".", 1)[0]
    sig = hmac.new(v.h.signing_key, signing_input.encode(), hashlib.sha512).digest()
    await assert_refused(v, signing_input + "." + b64(sig))


@pytest.mark.parametrize(
    "secret", [b"", b"secret", b"password", b"your-256-bit-secret", b"gateway", b"changeme"]
)
async def test_b2_028_token_signed_with_a_guessable_secret_is_refused(v: Victim, secret: bytes) -> None:
    await assert_refused(v, sign(v, v.header, {**v.payload, "roles": ["admin"]}, key=secret))


def test_b2_028_gateway_refuses_to_start_with_a_short_hmac_key(tmp_path: Path) -> None:
    """A key file holding a key shorter than 32 bytes is refused at start (RFC 8725 §3.5)."""
    path = tmp_path / "signing.key"
    path.write_text(
        json.dumps({"keys": [{"kid": "k1", "alg": "HS256", "created_at": 0, "k": b64(b"short")}]})
    )
    with pytest.raises(KeyFileError, match="shorter than 32 bytes"):
        KeyRing(path, "HS256")


async def test_b2_029_embedded_jwk_header_is_ignored(v: Victim) -> None:
    """CVE-2018-0114: the attacker's own key in the header does not make the token valid."""
    attacker = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
    token = jwt.encode(
        {**v.payload, "roles": ["admin"]},
        attacker,
        algorithm="ES256",
        headers={**v.header, "alg": "ES256", "jwk": jwk},
    )
    await assert_refused(v, token)
    await assert_refused(
        v, sign(v, {**v.header, "jwk": {"kty": "oct", "k": b64(b"k" * 32)}}, v.payload, key=b"k" * 32)
    )


@pytest.mark.parametrize("param", ["jku", "x5u"])
async def test_b2_030_jku_and_x5u_are_never_fetched(v: Victim, upstream: str, param: str) -> None:
    """A key URL in the header is never fetched: the recording upstream hosting it sees nothing."""
    attacker = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(
        v.payload,
        attacker,
        algorithm="ES256",
        headers={**v.header, "alg": "ES256", param: upstream + "/attacker/jwks.json"},
    )
    await assert_refused(v, token)  # `unchanged` also proves no request reached that URL


@pytest.mark.parametrize(
    "kid",
    [
        "unknown",
        "",
        "../../../../dev/null",
        "/invalid_path",
        "|sleep 10",
        "x' UNION SELECT '1';--",
        "k" * 10_000,
        123,
        {"a": 1},
        [1],
    ],
    ids=[
        "unknown",
        "empty",
        "traversal",
        "invalid-path",
        "shell",
        "sql",
        "huge",
        "number",
        "object",
        "array",
    ],
)
async def test_b2_031_hostile_kid_is_a_plain_miss(v: Victim, kid: Any) -> None:
    """Signed with the real key, only the kid is wrong: a dict miss, fast, never a 500."""
    started = time.perf_counter()
    await assert_refused(v, sign(v, {**v.header, "kid": kid}, v.payload))
    assert time.perf_counter() - started < 2.0


async def test_b2_032_unknown_crit_extension_is_refused(v: Victim) -> None:
    await assert_refused(
        v, sign(v, {**v.header, "crit": ["x-gateway-bypass"], "x-gateway-bypass": 1}, v.payload)
    )


@pytest.mark.parametrize("typ", ["JWT", None, "rt+jwt", "at+jwt-other", ""])
async def test_b2_033_wrong_typ_is_refused(v: Victim, typ: str | None) -> None:
    header = {k: val for k, val in v.header.items() if k != "typ"}
    if typ is not None:
        header["typ"] = typ
    await assert_refused(v, sign(v, header, v.payload))


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf", "iss", "aud", "sub", "sid", "jti"])
async def test_b2_034_missing_required_claim_is_refused(v: Victim, claim: str) -> None:
    await assert_refused(v, sign(v, v.header, {k: val for k, val in v.payload.items() if k != claim}))


async def test_b2_035_expiry_beyond_leeway_is_refused_within_leeway_accepted(v: Victim, clock: Any) -> None:
    """Expired by less than the 30 s leeway: accepted. Beyond it, with no refresh cookie: 401."""
    h = v.h
    clock.advance(h.config.tokens.access_ttl + 20)
    ok = await h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {v.token}"})
    assert ok.status == 200
    clock.advance(20)
    with h.unchanged():
        bearer = await h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {v.token}"})
        cookie = await h.client.get("/app/page", headers={**API, "Cookie": f"gw_access={v.token}"})
    assert bearer.status == 401 and bearer.headers["WWW-Authenticate"] == INVALID_TOKEN
    assert cookie.status == 401


@pytest.mark.parametrize("claims", ["nbf", "iat", "both"])
async def test_b2_036_nbf_or_iat_in_the_future_is_refused(v: Victim, claims: str) -> None:
    now = int(time.time())
    future = {"nbf": now + 120, "iat": now + 120} if claims == "both" else {claims: now + 120}
    await assert_refused(v, sign(v, v.header, {**v.payload, **future, "exp": now + 300}))


@pytest.mark.parametrize(
    "change",
    [{"exp": "1999999999"}, {"exp": 1999999999.5}, {"exp": None}, {"iat": "1"}, {"nbf": 1.5}, "far-future"],
    ids=["exp-string", "exp-float", "exp-null", "iat-string", "nbf-float", "lifetime-too-long"],
)
async def test_b2_037_time_claims_must_be_integers_and_lifetime_bounded(v: Victim, change: Any) -> None:
    """PyJWT alone accepts numeric strings, floats and any far-future exp: the gateway does not."""
    payload = (
        {**v.payload, "exp": v.payload["iat"] + 86400} if change == "far-future" else {**v.payload, **change}
    )
    await assert_refused(v, sign(v, v.header, payload))


@pytest.mark.parametrize(
    "iss", ["gatewa", "gatewayx", "xgateway", "Gateway", "gateway/", "gateway ", 123, ["gateway"]]
)
async def test_b2_038_issuer_must_match_exactly(v: Victim, iss: Any) -> None:
    await assert_refused(v, sign(v, v.header, {**v.payload, "iss": iss}))


@pytest.mark.parametrize(
    "aud", ["other-service", ["other-service"], ["gateway", "other-service"], ["gateway"], "Gateway"]
)
async def test_b2_039_audience_for_another_service_is_refused(v: Victim, aud: Any) -> None:
    await assert_refused(v, sign(v, v.header, {**v.payload, "aud": aud}))


@pytest.mark.parametrize("how", ["logout", "reuse", "password-change", "admin-revoke", "logout-all"])
async def test_b2_040_revoked_session_token_dies_before_its_exp(v: Victim, clock: Any, how: str) -> None:
    """After logout, reuse detection, a password change or an admin revoke, the old access
    token (still inside exp) is refused at once, in this process."""
    h = v.h
    accounts = h.app[ACCOUNTS]
    if how == "logout":
        assert (
            await h.client.post("/auth/logout", headers={"Authorization": f"Bearer {v.token}"})
        ).status == 204
    elif how == "logout-all":
        assert (
            await h.client.post("/auth/logout-all", headers={"Authorization": f"Bearer {v.token}"})
        ).status == 204
    elif how == "reuse":
        first = await h.client.post("/auth/refresh", headers={"Cookie": f"gw_refresh={v.refresh}"})
        assert first.status == 200
        clock.advance(h.config.tokens.reuse_grace + 1)
        again = await h.client.post("/auth/refresh", headers={"Cookie": f"gw_refresh={v.refresh}"})
        assert again.status == 401
    elif how == "password-change":
        await accounts.set_password("alice@example.com", "a brand new passphrase 77")
    else:
        await accounts.revoke_session(v.payload["sid"])
    with h.unchanged():
        resp = await h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {v.token}"})
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == INVALID_TOKEN


async def test_b2_040_revocation_reaches_another_process_within_two_seconds(
    make_harness: HarnessFactory,
) -> None:
    """A second gateway on the same store stops accepting a revoked session's token within 2 s."""
    first = await make_harness()
    second = await make_harness()
    v = await victim_of(first)
    bearer = {**API, "Authorization": f"Bearer {v.token}"}
    assert (await second.client.get("/app/page", headers=bearer)).status == 200  # verified and cached there
    assert (
        await first.client.post("/auth/logout", headers={"Authorization": f"Bearer {v.token}"})
    ).status == 204
    started = time.monotonic()
    while (await second.client.get("/app/page", headers=bearer)).status != 401:
        assert time.monotonic() - started < 2.0, "revocation did not propagate within 2 s"
        await asyncio.sleep(0.05)


async def test_b2_041_disabled_user_token_is_refused_on_the_next_request(v: Victim) -> None:
    await v.h.app[ACCOUNTS].set_disabled("alice@example.com", True)
    with v.h.unchanged():
        bearer = await v.h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {v.token}"})
        cookie = await v.h.client.get(
            "/app/page", headers={**API, "Cookie": f"gw_access={v.token}; gw_refresh={v.refresh}"}
        )
    assert bearer.status == 401 and cookie.status == 401


@pytest.mark.parametrize(
    "token",
    [
        "",
        "a",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        "eyJhbGciOiJIUzI1NiJ9==.e30=.x",
        "@@@.###.$$$",
        b64(b"{}") + "." + b64(b"not json") + ".x",
        b64(b'{"alg":"HS256"}') + "." + b64(b"[1,2]") + ".x",
        b64(b'{"alg":"HS256"}') + "." + b64(b'{"sub":"\xff\xfe"}') + ".x",
        b64(b'{"alg":"HS256","typ":"at+jwt"}') + "." + b64(b'{"sub":"a","sub":"b"}') + "." + b64(b"x" * 32),
    ],
    ids=[
        "empty",
        "one",
        "two",
        "four",
        "five",
        "padding",
        "non-b64",
        "payload-not-json",
        "json-array",
        "non-utf8",
        "duplicate-keys",
    ],
)
async def test_b2_042_malformed_tokens_are_refused_never_500(v: Victim, token: str) -> None:
    """(An empty access cookie is an absent one, which a refresh cookie may renew: DESIGN §5.)"""
    h = v.h
    with h.unchanged():
        bearer = await h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {token}"})
        cookie = await h.client.get(
            "/app/page",
            headers={**API, "Cookie": f"gw_access={token}" + (f"; gw_refresh={v.refresh}" if token else "")},
        )
    assert bearer.status == 401
    assert cookie.status == 401


async def test_b2_043_oversized_token_is_refused_without_a_server_error(v: Victim) -> None:
    """9 KB passes the parser (limits are raised to 16 KiB for legacy SSO cookies) and is refused
    as a token; past the 16 KiB field limit the parser answers 400. Never a 500."""
    h = v.h
    with h.unchanged():
        nine_kb = await h.client.get("/app/page", headers={**API, "Authorization": "Bearer " + "a" * 9000})
        huge = await h.raw(
            b"GET /app/page HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 17000 + b"\r\n\r\n"
        )
    assert nine_kb.status == 401 and nine_kb.headers["WWW-Authenticate"] == INVALID_TOKEN
    assert huge.status == 400 and huge.closed


async def test_b2_044_authorization_scheme_variants(v: Victim) -> None:
    """`bearer` in any case works; `Bearer` without a token is a bare challenge; `Bearer a b`
    is invalid_request; Basic is not ours (anonymous); two Authorization headers are 400."""
    h = v.h
    lower = await h.client.get("/app/page", headers={**API, "Authorization": f"bEaReR {v.token}"})
    assert lower.status == 200
    with h.unchanged():
        empty = await h.client.get("/app/page", headers={**API, "Authorization": "Bearer"})
        spaced = await h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {v.token} extra"})
        basic = await h.client.get("/app/page", headers={**API, "Authorization": "Basic YWxpY2U6cHc="})
        two = await h.raw(
            f"GET /app/page HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {v.token}\r\n"
            f"Authorization: Bearer forged\r\nConnection: close\r\n\r\n".encode()
        )
    assert empty.status == 401 and empty.headers["WWW-Authenticate"] == "Bearer"
    assert (
        spaced.status in (400, 401) and spaced.headers["WWW-Authenticate"] == 'Bearer error="invalid_request"'
    )
    assert basic.status == 401 and basic.headers["WWW-Authenticate"] == "Bearer"
    assert two.status == 400


@pytest.mark.parametrize("param", ["access_token", "token", "jwt", "gw_access"])
async def test_b2_045_token_in_the_url_is_ignored_and_not_logged(v: Victim, param: str) -> None:
    h = v.h
    with h.unchanged():
        resp = await h.client.get(f"/app/page?{param}={v.token}", headers=API)
    assert resp.status == 401
    assert v.token not in h.logged_text()


async def test_b2_046_bearer_wins_over_cookies_and_disables_refresh(make_harness: HarnessFactory) -> None:
    """Bearer for bob plus alice's refresh cookie (which alone would refresh): bob, no refresh.
    An invalid Bearer next to valid cookies is refused; it never falls back to the cookies."""
    h = await make_harness()
    alice = await h.session_cookies("alice@example.com")
    bob = await h.signed_in("bob@example.com")
    bob_token = bob["access_token"]
    cookies = f"gw_refresh={alice['gw_refresh']}"  # no access cookie: cookies alone would refresh
    with h.unchanged(upstream=False):
        resp = await h.client.get(
            "/app/page", headers={**API, "Authorization": f"Bearer {bob_token}", "Cookie": cookies}
        )
    assert resp.status == 200 and "Set-Cookie" not in resp.headers
    seen = dict((k.lower(), v) for k, v in h.recorder.last["headers"])
    assert seen["x-auth-user-email"] == "bob@example.com"
    assert bob["user"]["email"] == "bob@example.com"
    with h.unchanged():
        bad = await h.client.get(
            "/app/page", headers={**API, "Authorization": "Bearer forged.token.x", "Cookie": cookies}
        )
    assert bad.status == 401 and "Set-Cookie" not in bad.headers


async def test_b2_047_token_type_confusion_is_refused(v: Victim) -> None:
    """The refresh token as a Bearer, the access JWT in the refresh cookie, and a JWT the same key
    could sign for another purpose are all refused, without rotation."""
    h = v.h
    with h.unchanged():
        as_bearer = await h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {v.refresh}"})
        in_refresh_cookie = await h.client.get(
            "/app/page", headers={**API, "Cookie": f"gw_refresh={v.token}"}
        )
        refresh_endpoint = await h.client.post("/auth/refresh", headers={"Cookie": f"gw_refresh={v.token}"})
    assert as_bearer.status == 401 and as_bearer.headers["WWW-Authenticate"] == INVALID_TOKEN
    assert in_refresh_cookie.status == 401
    assert refresh_endpoint.status == 401
    await assert_refused(v, sign(v, {**v.header, "typ": "rt+jwt"}, {**v.payload, "purpose": "refresh"}))


async def test_b2_048_key_rotation_overlap_retirement_and_foreign_algorithm(
    v: Victim, tmp_path: Path
) -> None:
    """After `gateway keys generate` the previous kid still verifies; once retired, a token of
    that kid is refused; a kid paired with another algorithm is refused."""
    h = v.h
    ring = h.app[TOKENS].ring
    old_key, old_kid = ring.current.signing_key, ring.current.kid
    generate_key(ring.path, "HS256")
    ring.reload()
    assert ring.current.kid != old_kid
    overlap = await h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {v.token}"})
    assert overlap.status == 200
    fresh_old = sign(v, v.header, {**v.payload, "jti": "never-seen-before"}, key=old_key)
    generate_key(ring.path, "HS256", retired_before=time.time() + 1)
    ring.reload()
    assert old_kid not in ring.keys
    with h.unchanged():
        retired = await h.client.get("/app/page", headers={**API, "Authorization": f"Bearer {fresh_old}"})
    assert retired.status == 401
    current = ring.current
    signing_input = forge({**v.header, "kid": current.kid, "alg": "HS384"}, v.payload).rsplit(".", 1)[0]
    sig = hmac.new(current.signing_key, signing_input.encode(), hashlib.sha384).digest()
    await assert_refused(v, signing_input + "." + b64(sig))


async def test_b2_049_ecdsa_zero_signature_is_refused(make_harness: HarnessFactory) -> None:
    """ES256 mode: r = s = 0 ("psychic signatures", CVE-2022-21449) and other degenerate
    signatures are refused."""
    h = await make_harness(tokens={"algorithm": "ES256"})
    v = await victim_of(h)
    signing_input = v.token.rsplit(".", 1)[0]
    order = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)
    for raw in (bytes(64), order.to_bytes(32, "big") * 2, bytes(32) + b"\x01" * 32):
        await assert_refused(v, signing_input + "." + b64(raw))
