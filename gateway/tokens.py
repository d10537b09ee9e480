"""Access JWTs (sign, verify pinned, cache) and refresh-token minting, hashing and succession.

Verification follows RFC 8725 and SECURITY.md A.2: the algorithm list is the configured one only,
the key comes from a fixed `kid` dict (never from the token), `typ` must be `at+jwt` (RFC 9068 §4),
required claims are enforced, and time claims must be integers with a lifetime no longer than
the configured access TTL. A verified token is cached until its `exp`, so the steady-state cost
of auth on the hot path is one dict lookup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.config import TokensConfig
from gateway.keyring import KeyRing, SigningKey
from gateway.store import UserRecord

REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "sid", "jti"]
TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a secret
MAX_KID_LENGTH = 64  # SECURITY item 31: cap before lookup or logging
MAX_TOKEN_LENGTH = 4096  # a cookie holds at most 4096 bytes (ASVS 5.0 V3.3.5)
CACHE_LIMIT = 100_000


class TokenInvalid(Exception):
    """The token is not one of ours, or was tampered with. Never leads to a refresh."""


class TokenExpired(TokenInvalid):
    """The token was ours and valid but its `exp` passed: a refresh may follow (DESIGN §5).

    `claims` are the expired token's verified claims (None if they could not be read): a refresh
    must stay in the expired token's session (SECURITY item 61).
    """

    def __init__(self, message: str, claims: Claims | None = None) -> None:
        super().__init__(message)
        self.claims = claims


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    email: str
    roles: tuple[str, ...]
    sid: str
    ver: int
    iat: int
    exp: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_refresh_token() -> str:
    """32 random bytes from the OS CSPRNG, base64url (RFC 6819 §5.1.4.2.2: at least 128 bits)."""
    return secrets.token_urlsafe(32)


def hash_refresh_token(raw: str) -> str:
    """The only form a refresh token is stored in (RFC 6819 §5.1.4.1.3, SECURITY R-RT-9)."""
    return hashlib.sha256(raw.encode()).hexdigest()


def successor_token(secret: bytes, session_id: str, generation: int, presented: str) -> str:
    """The deterministic successor of `presented` (SECURITY C.2).

    Every in-window retry with the same token gets the same successor, so parallel browser
    requests racing on Set-Cookie all end with a valid cookie, while the store keeps only hashes.
    """
    msg = f"{session_id}\x00{generation}\x00{presented}".encode()
    return _b64(hmac.new(secret, msg, hashlib.sha256).digest())


class AccessTokens:
    """Signs and verifies access tokens with the key ring; caches verified tokens until `exp`."""

    def __init__(self, config: TokensConfig, ring: KeyRing) -> None:
        self.config = config
        self.ring = ring
        self._leeway = int(config.leeway)
        self._max_lifetime = int(config.access_ttl) + self._leeway
        self._cache: dict[str, Claims] = {}

    def issue(self, user: UserRecord, session_id: str, now: float) -> tuple[str, Claims]:
        iat = int(now)
        exp = iat + int(self.config.access_ttl)
        key = self.ring.current
        payload: dict[str, Any] = {
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": user.id,
            "email": user.email,
            "roles": list(user.roles),
            "sid": session_id,
            "ver": user.token_version,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(
            payload, key.signing_key, algorithm=key.algorithm, headers={"kid": key.kid, "typ": TOKEN_TYPE}
        )
        claims = Claims(user.id, user.email, tuple(user.roles), session_id, user.token_version, iat, exp)
        return token, claims

    def verify(self, token: str, now: float) -> Claims:
        """Return the token's claims, or raise TokenExpired / TokenInvalid."""
        cached = self._cache.get(token)
        if cached is not None:
            if now <= cached.exp + self._leeway:
                return cached
            del self._cache[token]
            raise TokenExpired("token expired", cached)
        claims = self._verify_uncached(token)
        if now > claims.exp + self._leeway:  # PyJWT checked with its own clock; keep ours authoritative
            raise TokenExpired("token expired", claims)
        if len(self._cache) >= CACHE_LIMIT:
            self.prune(now)
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()  # bounded memory beats a perfect hit rate
        self._cache[token] = claims
        return claims

    def prune(self, now: float) -> None:
        """Drop cached tokens past their expiry (called periodically and when the cache is full)."""
        dead = [t for t, c in self._cache.items() if now > c.exp + self._leeway]
        for t in dead:
            del self._cache[t]

    def _verify_uncached(self, token: str) -> Claims:
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenInvalid("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise TokenInvalid("malformed token") from e
        kid = header.get("kid")
        if not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH:
            raise TokenInvalid("bad kid")
        key = self.ring.keys.get(kid)
        if key is None or header.get("alg") != key.algorithm or header.get("typ") != TOKEN_TYPE:
            raise TokenInvalid("unknown key, algorithm or type")
        try:
            payload = self._decode(token, key, verify_exp=True)
        except jwt.ExpiredSignatureError as e:
            expired = self._expired_claims(token, key)
            if expired is None:  # fail closed: an expired token we cannot read never refreshes
                raise TokenInvalid("invalid token") from e
            raise TokenExpired("token expired", expired) from e
        except (jwt.PyJWTError, ValueError, TypeError) as e:
            raise TokenInvalid("invalid token") from e
        return self._claims(payload)

    def _decode(self, token: str, key: SigningKey, *, verify_exp: bool) -> dict[str, Any]:
        payload: dict[str, Any] = jwt.decode(
            token,
            key.verifying_key,
            algorithms=[key.algorithm],  # pinned: never taken from the token (RFC 8725 §3.1)
            audience=self.config.audience,
            issuer=self.config.issuer,
            leeway=self._leeway,
            options={
                "require": REQUIRED_CLAIMS,
                "strict_aud": True,
                "enforce_minimum_key_length": True,
                "verify_exp": verify_exp,
            },
        )
        return payload

    def _expired_claims(self, token: str, key: SigningKey) -> Claims | None:
        """The claims of a token PyJWT found expired; every other check still applies."""
        try:
            return self._claims(self._decode(token, key, verify_exp=False))
        except (jwt.PyJWTError, ValueError, TypeError, TokenInvalid):
            return None

    def _claims(self, p: dict[str, Any]) -> Claims:
        # PyJWT accepts numeric strings and floats for time claims and any far-future exp
        # (SECURITY item 37): NumericDate here must be an int and the lifetime our own.
        exp, iat, nbf = p.get("exp"), p.get("iat"), p.get("nbf")
        if not all(type(v) is int for v in (exp, iat, nbf)):
            raise TokenInvalid("time claims must be integers")
        assert isinstance(exp, int) and isinstance(iat, int)
        if exp - iat > self._max_lifetime:
            raise TokenInvalid("lifetime longer than the access TTL")
        sub, sid, email, roles, ver = p.get("sub"), p.get("sid"), p.get("email"), p.get("roles"), p.get("ver")
        if not (isinstance(sub, str) and sub and isinstance(sid, str) and sid):
            raise TokenInvalid("bad sub or sid")
        if not isinstance(email, str) or type(ver) is not int:
            raise TokenInvalid("bad email or ver")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise TokenInvalid("bad roles")
        return Claims(sub, email, tuple(roles), sid, ver, iat, exp)
