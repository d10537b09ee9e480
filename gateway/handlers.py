"""The gateway's own endpoints under `auth_prefix` (DESIGN §4): thin translations to `accounts`.

JSON in and out for API clients; the same endpoints take HTML form posts from the gateway's own
pages and answer those with 303 redirects or a re-rendered page. Every POST here is checked for
a cross-site origin whether or not cookies are present (login CSRF, DESIGN §7).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiohttp import web

from gateway import errors, pages
from gateway.accounts import Issued
from gateway.auth import AuthResult, address_of, authenticate, client_description
from gateway.cookies import clear_session_cookies, set_session_cookies
from gateway.csrf import cross_origin
from gateway.keys import ACCOUNTS, CONFIG, METRICS, STORE, TOKENS
from gateway.metrics import CONTENT_TYPE
from gateway.middleware import error_response
from gateway.redirects import safe_next
from gateway.store import SessionRecord, UserRecord

security_log = logging.getLogger("gateway.security")
AUTH_BODY_LIMIT = 64 * 1024
T = TypeVar("T")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# Sent on sign-out (SECURITY R-SES-5, R-SES-6): the back button shows pages from the HTTP cache or
# the back/forward cache however stale; cleared, they come from the network: the login page.
SIGN_OUT_CLEARS = '"cache"'


def user_json(user: UserRecord) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "roles": list(user.roles), "created_at": user.created_at}


def session_json(session: SessionRecord, current: str | None) -> dict[str, Any]:
    return {
        "id": session.id,
        "created_at": session.created_at,
        "last_used_at": session.last_used_at,
        "expires_at": session.expires_at,
        "client": session.client,
        "current": session.id == current,
    }


async def read_fields(request: web.Request) -> tuple[dict[str, str], bool]:
    """The body's string fields and whether it came from an HTML form. 413/415/400 otherwise."""
    if request.content_length is not None and request.content_length > AUTH_BODY_LIMIT:
        raise web.HTTPRequestEntityTooLarge(max_size=AUTH_BODY_LIMIT, actual_size=request.content_length)
    ctype = request.content_type
    if ctype == "application/json":
        try:
            data = json.loads(await _body_within_deadline(request, request.read()) or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise errors.InvalidInput({}, "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise errors.InvalidInput({}, "the body must be a JSON object")
        # JSON booleans ("remember": true) become the values an HTML checkbox would send.
        return {
            k: v if isinstance(v, str) else ("on" if v else "")
            for k, v in data.items()
            if isinstance(v, str | bool)
        }, False
    if ctype in FORM_TYPES:
        form = await _body_within_deadline(request, request.post())
        return {k: v for k, v in form.items() if isinstance(v, str)}, True
    if not request.body_exists:
        return {}, False
    raise web.HTTPUnsupportedMediaType()


async def _body_within_deadline(request: web.Request, reading: Awaitable[T]) -> T:
    """aiohttp has no body-read deadline: a client trickling its body would hold the handler
    for ever (SECURITY item 133). Past request_body_timeout: 408."""
    try:
        async with asyncio.timeout(request.app[CONFIG].server.request_body_timeout):
            return await reading
    except TimeoutError:
        raise web.HTTPRequestTimeout() from None


def see_other(location: str, status: int = 303) -> web.Response:
    return web.Response(status=status, headers={"Location": location, "Cache-Control": "no-store"})


def _required(fields: dict[str, Any], *names: str) -> list[str]:
    missing = {n: "is required" for n in names if not isinstance(fields.get(n), str) or not fields[n]}
    if missing:
        raise errors.InvalidInput(missing)
    return [str(fields[n]) for n in names]


def check_origin(request: web.Request) -> web.Response | None:
    reason = cross_origin(request.method, request.headers, request.app[CONFIG].server.public_url)
    if reason is None:
        return None
    security_log.warning(
        "csrf blocked path=%s address=%s reason=%s", request.path, address_of(request)[0], reason
    )
    return error_response(403, "cross_site_request", "cross-site request refused")


def issued_json(request: web.Request, issued: Issued) -> web.Response:
    config = request.app[CONFIG]
    body: dict[str, Any] = {
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": int(config.tokens.access_ttl),
        "user": user_json(issued.user),
    }
    if config.tokens.expose_refresh_token:
        body["refresh_token"] = issued.refresh_token
    resp = web.json_response(body)
    set_session_cookies(resp, config, issued)
    return resp


def _wants_remember(fields: dict[str, str]) -> bool:
    return fields.get("remember") in ("on", "true", "1")


async def register(request: web.Request) -> web.StreamResponse:
    if (refused := check_origin(request)) is not None:
        return refused
    fields, is_form = await read_fields(request)
    accounts = request.app[ACCOUNTS]
    if not request.app[CONFIG].registration.enabled:
        if is_form:
            return pages.register_page(request, error="Registration is closed.", status=403)
        raise errors.RegistrationClosed()
    try:
        email, password = _required(fields, "email", "password")
        user = await accounts.register(email, password)
        if not is_form:
            return web.json_response(user_json(user), status=201)
        address, _ = address_of(request)
        issued = await accounts.login(
            email, password, address=address, client=client_description(request, address)
        )
    except errors.GatewayError as e:
        if not is_form:
            raise
        return pages.register_page(
            request, email=str(fields.get("email", "")), next_url=fields.get("next"), exc=e
        )
    resp = see_other(safe_next(fields.get("next")))
    set_session_cookies(resp, request.app[CONFIG], issued)
    return resp


async def login(request: web.Request) -> web.StreamResponse:
    if (refused := check_origin(request)) is not None:
        return refused
    fields, is_form = await read_fields(request)
    address, _ = address_of(request)
    try:
        email, password = _required(fields, "email", "password")
        issued = await request.app[ACCOUNTS].login(
            email,
            password,
            address=address,
            client=client_description(request, address),
            remember=_wants_remember(fields),
        )
    except errors.GatewayError as e:
        if not is_form:
            raise
        return pages.login_page(
            request,
            email=str(fields.get("email", "")),
            next_url=fields.get("next"),
            exc=e,
            remember=_wants_remember(fields),
        )
    if not is_form:
        return issued_json(request, issued)
    # 303, never 307: the browser must not re-post the password to the target (RFC 9700 §4.12).
    resp = see_other(safe_next(fields.get("next")))
    set_session_cookies(resp, request.app[CONFIG], issued)
    return resp


async def refresh(request: web.Request) -> web.StreamResponse:
    if (refused := check_origin(request)) is not None:
        return refused
    config = request.app[CONFIG]
    raw = request.cookies.get(config.cookies.refresh_cookie)
    if not raw and request.body_exists:
        fields, _ = await read_fields(request)
        raw = str(fields.get("refresh_token") or "")
    address, _ = address_of(request)
    try:
        issued = await request.app[ACCOUNTS].refresh(
            raw or "", client=client_description(request, address), address=address
        )
    except errors.InvalidRefreshToken as e:
        resp = error_response(401, "invalid_refresh_token", e.message)
        clear_session_cookies(resp, config)
        return resp
    return issued_json(request, issued)


async def _current(request: web.Request, *, allow_refresh: bool = True) -> AuthResult:
    address, _ = address_of(request)
    return await authenticate(request, address=address, allow_refresh=allow_refresh)


def _with_refreshed_cookies(
    request: web.Request, resp: web.StreamResponse, auth: AuthResult
) -> web.StreamResponse:
    if auth.issued is not None:
        set_session_cookies(resp, request.app[CONFIG], auth.issued)
    return resp


def signed_out(request: web.Request) -> web.StreamResponse:
    """After a sign-out: 204 for API clients, the signed-out page for forms; cookies cleared."""
    config = request.app[CONFIG]
    is_form = request.content_type in FORM_TYPES
    resp: web.StreamResponse = (
        see_other(f"{config.server.auth_prefix}/logout") if is_form else web.Response(status=204)
    )
    clear_session_cookies(resp, config)
    resp.headers["Clear-Site-Data"] = SIGN_OUT_CLEARS
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    """Idempotent: ends the session named by the access token or the refresh cookie, if any."""
    if (refused := check_origin(request)) is not None:
        return refused
    config = request.app[CONFIG]
    auth = await _current(request, allow_refresh=False)
    refresh_raw = request.cookies.get(config.cookies.refresh_cookie)
    accounts = request.app[ACCOUNTS]
    if auth.claims is not None:
        await accounts.logout(session_id=auth.claims.sid)
    if refresh_raw:
        await accounts.logout(refresh_token=refresh_raw)
    return signed_out(request)


async def logout_all(request: web.Request) -> web.StreamResponse:
    if (refused := check_origin(request)) is not None:
        return refused
    auth = await _current(request, allow_refresh=False)
    if auth.claims is None:
        raise errors.Unauthenticated()
    await request.app[ACCOUNTS].logout_all(auth.claims.sub)
    return signed_out(request)


async def me(request: web.Request) -> web.StreamResponse:
    auth = await _current(request)
    if auth.claims is None:
        challenge = f'Bearer error="{auth.bearer_error}"' if auth.bearer_error else "Bearer"
        resp = error_response(401, "unauthenticated", headers={"WWW-Authenticate": challenge})
        if auth.clear_cookies:
            clear_session_cookies(resp, request.app[CONFIG])
        return resp
    c = auth.claims
    body = {"id": c.sub, "email": c.email, "roles": list(c.roles), "session_id": c.sid}
    return _with_refreshed_cookies(
        request, web.json_response(body, headers={"Cache-Control": "no-store"}), auth
    )


async def sessions(request: web.Request) -> web.StreamResponse:
    auth = await _current(request)
    if auth.claims is None:
        raise errors.Unauthenticated()
    live = await request.app[ACCOUNTS].sessions_of(auth.claims.sub)
    body = [session_json(s, auth.claims.sid) for s in live]
    return _with_refreshed_cookies(
        request, web.json_response(body, headers={"Cache-Control": "no-store"}), auth
    )


async def jwks(request: web.Request) -> web.StreamResponse:
    ring = request.app[TOKENS].ring
    if ring.algorithm == "HS256":
        raise web.HTTPNotFound()
    return web.json_response(ring.jwks(), headers={"Cache-Control": "public, max-age=300"})


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus metrics, only for addresses in [metrics].allow; anyone else sees nothing here."""
    address, _ = address_of(request)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise web.HTTPNotFound() from None
    if not any(ip in net for net in request.app[CONFIG].metrics.allow):
        raise web.HTTPNotFound()
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})


async def health(request: web.Request) -> web.StreamResponse:
    try:
        await request.app[STORE].ping()
    except Exception:
        return web.json_response({"status": "unavailable"}, status=503, headers={"Cache-Control": "no-store"})
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def login_form(request: web.Request) -> web.StreamResponse:
    return pages.login_page(request, next_url=request.query.get("next"))


async def register_form(request: web.Request) -> web.StreamResponse:
    if not request.app[CONFIG].registration.enabled:
        return pages.register_page(request, error="Registration is closed.", status=403)
    return pages.register_page(request, next_url=request.query.get("next"))


async def logout_page(request: web.Request) -> web.StreamResponse:
    return pages.logged_out_page(request)


async def account_page(request: web.Request) -> web.StreamResponse:
    auth = await _current(request)
    config = request.app[CONFIG]
    if auth.claims is None:
        prefix = config.server.auth_prefix
        resp: web.StreamResponse = see_other(f"{prefix}/login?next={prefix}/account", status=302)
        if auth.clear_cookies:
            clear_session_cookies(resp, config)
        return resp
    live = await request.app[ACCOUNTS].sessions_of(auth.claims.sub)
    return _with_refreshed_cookies(request, pages.account_page(request, auth.claims, live), auth)


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_post(f"{prefix}/register", register)
    r.add_get(f"{prefix}/register", register_form)
    r.add_post(f"{prefix}/login", login)
    r.add_get(f"{prefix}/login", login_form)
    r.add_post(f"{prefix}/refresh", refresh)
    r.add_post(f"{prefix}/logout", logout)
    r.add_get(f"{prefix}/logout", logout_page)
    r.add_post(f"{prefix}/logout-all", logout_all)
    r.add_get(f"{prefix}/me", me)
    r.add_get(f"{prefix}/sessions", sessions)
    r.add_get(f"{prefix}/account", account_page)
    r.add_get(f"{prefix}/jwks.json", jwks)
    r.add_get(f"{prefix}/health", health)
    # Everything else under the prefix is the gateway's too (routes may not live there): answer
    # it here, 405 or 404, rather than let the proxy's catch-all send it upstream (SECURITY 124).
    r.add_route("*", f"{prefix}/{{tail:.*}}", reserved)


async def reserved(request: web.Request) -> web.StreamResponse:
    allowed = {
        route.method
        for resource in request.app.router.resources()
        if resource.canonical == request.path
        for route in resource
    }
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))
    raise web.HTTPNotFound()
