"""Tampered and foreign access tokens are refused (SECURITY B.2; RFC 8725)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.keyring import KeyRing
from gateway.keys import TOKENS
from tests.conftest import GatewayFactory, signed_in


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)])


async def valid_token(gw: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    body = await signed_in(gw)
    gw.session.cookie_jar.clear()
    token = body["access_token"]
    return token, jwt.get_unverified_header(token), jwt.decode(token, options={"verify_signature": False})


def resign(gw: Any, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """Sign with the gateway's real key: only the claim checks stand in the way."""
    ring: KeyRing = gw.server.app[TOKENS].ring
    return jwt.encode(payload, ring.current.signing_key, algorithm="HS256", headers=header)


async def me(gw: Any, token: str) -> Any:
    return await gw.get("/auth/me", headers={"Authorization": f"Bearer {token}"})


async def assert_refused(gw: Any, token: str) -> None:
    resp = await me(gw, token)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_valid_token_is_accepted(gw: Any) -> None:
    """The baseline: the real token works (so the refusals below are meaningful)."""
    token, _, _ = await valid_token(gw)
    assert (await me(gw, token)).status == 200


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_is_refused(gw: Any, alg: str) -> None:
    """alg none in any case, with an empty signature, is refused (SECURITY item 23)."""
    _, header, payload = await valid_token(gw)
    await assert_refused(gw, forge({**header, "alg": alg}, payload))


async def test_altered_claims_are_refused(gw: Any) -> None:
    """Changing a claim without re-signing breaks the signature (SECURITY item 25)."""
    token, header, payload = await valid_token(gw)
    sig = token.rsplit(".", 1)[1]
    tampered = forge(header, {**payload, "roles": ["admin"]}).rsplit(".", 1)[0] + "." + sig
    await assert_refused(gw, tampered)


async def test_flipped_signature_and_trailing_garbage(gw: Any) -> None:
    """A flipped signature character or bytes after the signature are refused."""
    token, _, _ = await valid_token(gw)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    await assert_refused(gw, flipped)
    await assert_refused(gw, token + "garbage")


async def test_hs256_signed_with_the_public_key_is_refused(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """Algorithm confusion: an HS256 token keyed with the EdDSA public key is refused (item 26)."""
    gw = await make_gateway(tokens={"algorithm": "EdDSA"})
    _, header, payload = await valid_token(gw)
    ring: KeyRing = gw.server.app[TOKENS].ring
    public = ring.current.verifying_key
    assert isinstance(public, ed25519.Ed25519PublicKey)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = forge({**header, "alg": "HS256"}, payload).rsplit(".", 1)[0]
    sig = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    await assert_refused(gw, signing_input + "." + b64(sig))


async def test_other_algorithm_of_the_family_is_refused(gw: Any) -> None:
    """HS512 with the right key is still refused: the algorithm is pinned (item 27)."""
    _, header, payload = await valid_token(gw)
    ring: KeyRing = gw.server.app[TOKENS].ring
    signing_input = forge({**header, "alg": "HS512"}, payload).rsplit(".", 1)[0]
    sig = hmac.new(ring.current.signing_key, signing_input.encode(), hashlib.sha512).digest()
    await assert_refused(gw, signing_input + "." + b64(sig))


async def test_weak_secret_is_refused(gw: Any) -> None:
    """A token signed with a guessable secret is refused (item 28)."""
    _, header, payload = await valid_token(gw)
    for secret in ("secret", "gateway", "password"):
        token = jwt.encode(payload, secret.ljust(32, "x"), algorithm="HS256", headers=header)
        await assert_refused(gw, token)


@pytest.mark.parametrize(
    "kid",
    ["unknown", "", "../../dev/null", "x' UNION SELECT '1';--", "k" * 10_000, 7],
    ids=["unknown", "empty", "traversal", "sql", "huge", "number"],
)
async def test_hostile_kid_is_refused(gw: Any, kid: Any) -> None:
    """A kid that is not one of ours is a plain miss, never a lookup elsewhere (item 31)."""
    _, header, payload = await valid_token(gw)
    ring: KeyRing = gw.server.app[TOKENS].ring
    raw = jwt.encode(payload, ring.current.signing_key, algorithm="HS256", headers={**header, "kid": "x"})
    h = {**header, "kid": kid}
    signing_input = forge(h, payload).rsplit(".", 1)[0]
    token = signing_input + "." + raw.rsplit(".", 1)[1]
    resp = await me(gw, token)
    assert resp.status in (400, 401)


async def test_embedded_jwk_and_jku_are_ignored(gw: Any) -> None:
    """An attacker's own key in jwk/jku does not make their token valid (items 29-30)."""
    _, header, payload = await valid_token(gw)
    attacker = ed25519.Ed25519PrivateKey.generate()
    token = jwt.encode(
        {**payload, "roles": ["admin"]},
        attacker,
        algorithm="EdDSA",
        headers={**header, "alg": "EdDSA", "jku": "http://127.0.0.1:1/jwks", "jwk": {"kty": "OKP"}},
    )
    await assert_refused(gw, token)


@pytest.mark.parametrize("typ", ["JWT", None, "refresh+jwt"])
async def test_wrong_typ_is_refused(gw: Any, typ: str | None) -> None:
    """Only typ at+jwt is an access token (RFC 9068 §4; item 33)."""
    _, header, payload = await valid_token(gw)
    h = {k: v for k, v in header.items() if k != "typ"}
    if typ is not None:
        h["typ"] = typ
    await assert_refused(gw, resign(gw, h, payload))


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf", "iss", "aud", "sub", "sid", "jti"])
async def test_missing_required_claim_is_refused(gw: Any, claim: str) -> None:
    """A validly signed token missing any required claim is refused (item 34)."""
    _, header, payload = await valid_token(gw)
    payload.pop(claim)
    await assert_refused(gw, resign(gw, header, payload))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("iss", "gatewayx"),
        ("iss", "gatewa"),
        ("iss", "Gateway"),
        ("aud", "other-service"),
        ("aud", ["gateway", "other"]),
        ("exp", "1999999999"),
        ("exp", 1999999999.5),
        ("exp", None),
    ],
    ids=[
        "iss-suffix",
        "iss-prefix",
        "iss-case",
        "aud-other",
        "aud-list",
        "exp-string",
        "exp-float",
        "exp-null",
    ],
)
async def test_bad_claim_values_are_refused(gw: Any, claim: str, value: Any) -> None:
    """Wrong issuer or audience and non-integer time claims are refused (items 37-39)."""
    _, header, payload = await valid_token(gw)
    payload[claim] = value
    await assert_refused(gw, resign(gw, header, payload))


async def test_lifetime_longer_than_access_ttl_is_refused(gw: Any) -> None:
    """A far-future exp, even validly signed, is refused (item 37)."""
    _, header, payload = await valid_token(gw)
    payload["exp"] = payload["iat"] + 86400
    await assert_refused(gw, resign(gw, header, payload))


async def test_expired_token_is_refused_but_within_leeway_accepted(gw: Any, clock: Any) -> None:
    """Expired beyond the leeway: refused; expired by less than the leeway: accepted (item 35)."""
    token, _, _ = await valid_token(gw)
    clock.advance(300 + 20)
    assert (await me(gw, token)).status == 200
    clock.advance(20)
    assert (await me(gw, token)).status == 401


async def test_future_nbf_is_refused(gw: Any) -> None:
    """nbf beyond the leeway in the future is refused (item 36)."""
    _, header, payload = await valid_token(gw)
    now = int(time.time())
    payload.update({"nbf": now + 120, "iat": now + 120, "exp": now + 400})
    await assert_refused(gw, resign(gw, header, payload))


@pytest.mark.parametrize(
    "token",
    ["", "a", "a.b", "a.b.c.d", "a.b.c.d.e", "@@@.###.$$$", b64(b"[1,2]") + "." + b64(b"[]") + ".x"],
    ids=["empty", "one", "two", "four", "five", "non-b64", "json-array"],
)
async def test_malformed_tokens_never_cause_500(gw: Any, token: str) -> None:
    """Malformed tokens get 401 (or 400), never a server error (item 42)."""
    resp = await me(gw, token)
    assert resp.status in (400, 401)


async def test_token_from_another_gateway_is_refused(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    """A token signed by a different key file (another deployment) is refused."""
    gw = await make_gateway()
    _, header, payload = await valid_token(gw)
    other = jwt.encode(payload, b"k" * 32, algorithm="HS256", headers=header)
    await assert_refused(gw, other)


async def test_refresh_token_as_bearer_is_refused(gw: Any) -> None:
    """The opaque refresh token is not an access token (item 47)."""
    await signed_in(gw)
    rt = next(c.value for c in gw.session.cookie_jar if c.key == "gw_refresh")
    gw.session.cookie_jar.clear()
    await assert_refused(gw, rt)


async def test_bearer_without_token_is_401_without_error_code(gw: Any) -> None:
    """`Authorization: Bearer` with no token: 401 with a bare Bearer challenge (RFC 6750 §3.1)."""
    resp = await gw.get("/auth/me", headers={"Authorization": "Bearer"})
    assert resp.status == 401
