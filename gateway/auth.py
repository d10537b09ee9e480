"""Who is making this request: Bearer header or cookies, with transparent refresh (DESIGN §5–§6).

Order: a Bearer `Authorization` header wins and disables cookies and refresh (SECURITY item 46);
else the access cookie; a missing or expired access cookie with a refresh cookie rotates the
session inside this request. A tampered or foreign token never leads to a refresh (SECURITY B.2).
The steady state is a dict lookup in the verified-token cache plus the revocation check: no
database round trip and no signature check for a token already verified.
"""

from __future__ import annotations

from collections.abc import Collection
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


def cookie_value(request: web.BaseRequest, name: str) -> str | None:
    """The value of cookie `name`, or None when absent: what `request.cookies.get(name)` gives
    (surrounding whitespace and double quotes removed, the last one when repeated) without parsing
    every other cookie. aiohttp's full parse cost more than the rest of authentication together
    (docs/performance.md); duplicates of the gateway's cookies are refused earlier anyway."""
    found = None
    for header in request.headers.getall("Cookie", ()):
        if name not in header:
            continue
        for pair in header.split(";"):
            key, _, value = pair.partition("=")
            if key.strip() == name:  # a bare name counts, with the value ""
                value = value.strip()
                if len(value) > 1 and value[0] == '"' == value[-1]:
                    value = value[1:-1]
                found = value
    return found


def has_any_cookie(request: web.BaseRequest, names: Collection[str]) -> bool:
    """Whether any cookie named in `names` is present: `any(cookie_value(request, n) is not None
    for n in names)` in one pass over the Cookie headers."""
    for header in request.headers.getall("Cookie", ()):
        if any(name in header for name in names):  # a quick look before splitting
            for pair in header.split(";"):
                if pair.partition("=")[0].strip() in names:
                    return True
    return False


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
    access = cookie_value(request, cookies.access_cookie)
    may_refresh = True
    session_id = None  # the access token's session: a refresh must stay in it (SECURITY item 61)
    if access:
        try:
            claims = tokens.verify(access, now)
            if not revocations.is_revoked(claims):
                return AuthResult(claims=claims, via="cookie")
            # A revoked session cannot refresh; a user-version bump (roles changed) can and must,
            # so the next token carries the new roles.
            may_refresh = claims.sid not in revocations.sessions
            session_id = claims.sid
        except TokenExpired as expired:
            session_id = expired.claims.sid if expired.claims is not None else None
        except TokenInvalid:
            may_refresh = False
    refresh = cookie_value(request, cookies.refresh_cookie)
    if not refresh:
        return AuthResult(clear_cookies=bool(access))
    if not (allow_refresh and may_refresh):
        return AuthResult(clear_cookies=True)
    try:
        issued = await app[ACCOUNTS].refresh(
            refresh, client=client_description(request, address), session_id=session_id, address=address
        )
    except InvalidRefreshToken as e:
        return AuthResult(clear_cookies=True, refresh_error=str(e))
    return AuthResult(claims=issued.claims, via="cookie", issued=issued)
