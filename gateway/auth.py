"""Who is making this request: Bearer header or cookies, with transparent refresh (DESIGN §5–§6).

Order: a Bearer `Authorization` header wins and disables cookies and refresh (SECURITY item 46);
else the access cookie; a missing or expired access cookie with a refresh cookie rotates the
session inside this request. A tampered or foreign token never leads to a refresh (SECURITY B.2).
The steady state is a dict lookup in the verified-token cache plus the revocation check: no
database round trip and no signature check for a token already verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from gateway.accounts import Issued
from gateway.clientip import client_address
from gateway.errors import InvalidRefreshToken
from gateway.keys import ACCOUNTS, ADDRESS, CONFIG, REVOCATIONS, TOKENS
from gateway.tokens import Claims, TokenExpired, TokenInvalid


@dataclass(frozen=True, slots=True)
class AuthResult:
    claims: Claims | None = None
    via: Literal["bearer", "cookie", "none"] = "none"
    issued: Issued | None = None  # set when this request refreshed the session
    clear_cookies: bool = False  # a dead refresh cookie: tell the browser to drop both
    bearer_error: str | None = None  # RFC 6750 §3.1 error code when a Bearer token was refused
    refresh_error: str | None = None  # why a transparent refresh failed (metrics, logs)

    @property
    def authenticated(self) -> bool:
        return self.claims is not None


ANONYMOUS = AuthResult()


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer` header ("" for a Bearer header with no token),
    None when there is no such header. Other schemes (Basic…) belong to the app."""
    value = request.headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def address_of(request: web.Request) -> tuple[str, bool]:
    """(client address, peer is a trusted proxy), computed once per request."""
    cached = request.get(ADDRESS)
    if cached is None:
        cached = client_address(
            request.remote, request.headers.get("X-Forwarded-For"), request.app[CONFIG].server.trusted_proxies
        )
        request[ADDRESS] = cached
    return cached


def client_description(request: web.Request, address: str) -> str:
    agent = request.headers.get("User-Agent", "")[:120]
    return f"{address} {agent}".strip()


async def authenticate(request: web.Request, *, address: str, allow_refresh: bool = True) -> AuthResult:
    app = request.app
    tokens, revocations = app[TOKENS], app[REVOCATIONS]
    now = app[ACCOUNTS].clock()
    bearer = bearer_token(request)
    if bearer is not None:
        if " " in bearer or not bearer:
            return AuthResult(via="bearer", bearer_error="invalid_request" if bearer else None)
        try:
            claims = tokens.verify(bearer, now)
        except TokenInvalid:
            return AuthResult(via="bearer", bearer_error="invalid_token")
        if revocations.is_revoked(claims):
            return AuthResult(via="bearer", bearer_error="invalid_token")
        return AuthResult(claims=claims, via="bearer")

    cookies = app[CONFIG].cookies
    access = request.cookies.get(cookies.access_cookie)
    may_refresh = True
    if access:
        try:
            claims = tokens.verify(access, now)
            if not revocations.is_revoked(claims):
                return AuthResult(claims=claims, via="cookie")
            # A revoked session cannot refresh; a user-version bump (roles changed) can and must,
            # so the next token carries the new roles.
            may_refresh = claims.sid not in revocations.sessions
        except TokenExpired:
            pass
        except TokenInvalid:
            may_refresh = False
    refresh = request.cookies.get(cookies.refresh_cookie)
    if not refresh:
        return AuthResult(clear_cookies=bool(access))
    if not (allow_refresh and may_refresh):
        return AuthResult(clear_cookies=True)
    try:
        issued = await app[ACCOUNTS].refresh(refresh, client=client_description(request, address))
    except InvalidRefreshToken as e:
        return AuthResult(clear_cookies=True, refresh_error=str(e))
    return AuthResult(claims=issued.claims, via="cookie", issued=issued)
