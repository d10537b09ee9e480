"""The reverse proxy: match a route, authenticate in-process, clean, add identity, stream.

The pipeline follows SECURITY.md C.4 so every check runs before anything reaches the upstream:
framing → canonical path → route → CSRF (for cookie-bearing unsafe requests) → authenticate
(with transparent refresh) → authorise → size caps → strip-then-inject headers → stream both
ways. The same `decide()` runs from the `Expect: 100-continue` handler, so an unauthenticated
client is never invited to upload (AIOHTTP.md §1.12).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from gateway.auth import ANONYMOUS, AuthResult, address_of, authenticate, bearer_token, has_any_cookie
from gateway.classify import wants_html
from gateway.config import Config, HeadersConfig, RouteConfig
from gateway.cookies import clear_session_cookies, gateway_cookie_names, set_session_cookies
from gateway.csrf import cross_origin
from gateway.headers import downstream_headers, framing_problem, header_key, upstream_headers
from gateway.keys import (
    ACCOUNTS,
    CONFIG,
    DECISION,
    METRICS,
    NO_CONTENT_TYPE,
    ROUTER,
    STORE,
    UPSTREAM,
    WEBSOCKETS,
    WS_SESSION,
)
from gateway.middleware import SECURITY_HEADERS, error_response
from gateway.paths import PathRejected, Target, canonicalize
from gateway.redirects import login_url
from gateway.routing import upstream_target
from gateway.store import Revocation
from gateway.upstream import UpstreamError, UpstreamRefusedUpgrade, UpstreamTimeout

R = TypeVar("R", bound=web.StreamResponse)
log = logging.getLogger("gateway.proxy")
security_log = logging.getLogger("gateway.security")

REFUSED_METHODS = frozenset({"TRACE", "CONNECT", "TRACK"})  # TRACE would echo cookies (SECURITY 145)
# RFC 9110 §9.2.1. Every other method (WebDAV PROPPATCH, MOVE…, or one the app invents) is
# CSRF-checked like POST (SECURITY item 119).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
NO_BODY_STATUSES = frozenset({204, 304})


class BodyTooLarge(Exception):
    """The streamed request body passed the route's max_body_size."""


class BodyTimeout(Exception):
    """The client took longer than request_body_timeout to send its body."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Everything decided about a request before the upstream sees it."""

    route: RouteConfig
    target: Target
    auth: AuthResult
    address: str
    peer_trusted: bool


def _identity_names(config: Config) -> tuple[str, ...]:
    """Every identity header name of every route: all are stripped on every route (DESIGN §7)."""
    names = set(config.headers.names())
    for route in config.routes:
        if route.headers is not None:
            names.update(route.headers.names())
    return tuple(sorted(names))


def _with_auth_cookies(resp: R, config: Config, auth: AuthResult) -> R:
    """Any response after a rotation must carry the new cookies, or the browser keeps a spent one."""
    if auth.issued is not None:
        set_session_cookies(resp, config, auth.issued)
    elif auth.clear_cookies:
        clear_session_cookies(resp, config)
    return resp


def deny_unauthenticated(request: web.Request, d: Decision, config: Config) -> web.Response:
    mode = d.route.on_unauthenticated
    html = mode == "redirect" or (mode == "auto" and wants_html(request.method, request.headers))
    if html and request.method in ("GET", "HEAD"):
        resp = web.Response(
            status=302,
            headers={
                "Location": login_url(config.server.auth_prefix, d.target.request_target),
                "Cache-Control": "no-store",
            },
        )
    elif request.headers.get("Sec-Fetch-Mode") == "navigate":
        # A form the browser submitted after the session ended: 401, never a redirect that would
        # drop the typed data. The page lets the person sign in elsewhere and resubmit by reload.
        resp = session_ended_page(login_url(config.server.auth_prefix, "/"))
    else:
        challenge = "Bearer"
        if d.auth.bearer_error:
            challenge = f'Bearer error="{d.auth.bearer_error}"'
        resp = error_response(401, "unauthenticated", headers={"WWW-Authenticate": challenge})
    _with_auth_cookies(resp, config, d.auth)
    return resp


def session_ended_page(login_href: str) -> web.Response:
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width'><title>Please sign in again</title></head>"
        "<body style='font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem'>"
        "<h1>Please sign in again</h1><p>Your session ended before this form was sent. Nothing was lost: "
        f"<a href='{html.escape(login_href)}' target=_blank rel=noopener>sign in in a new tab</a>, then "
        "come back here and reload this page to send the form again.</p></body></html>"
    )
    resp = web.Response(status=401, text=body, content_type="text/html")
    resp.headers.update(SECURITY_HEADERS)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["WWW-Authenticate"] = "Bearer"
    return resp


def _wants_html(request: web.Request) -> bool:
    """Whether an error page should be HTML; asked only when answering with one (it parses Accept)."""
    return wants_html(request.method, request.headers)


async def decide(request: web.Request) -> Decision | web.Response:
    """Run every check; return the decision, or the response that ends the request here."""
    cached = request.get(DECISION)
    if isinstance(cached, Decision | web.Response):
        return cached
    result = await _decide(request)
    request[DECISION] = result
    return result


async def _decide(request: web.Request) -> Decision | web.Response:
    config = request.app[CONFIG]
    if request.method.upper() in REFUSED_METHODS:
        return error_response(405, html_page=_wants_html(request))
    try:
        target = canonicalize(request.raw_path)
        route = request.app[ROUTER].route_for(target)
    except PathRejected:
        return error_response(
            400, "bad_path", "the request path is not allowed", html_page=_wants_html(request)
        )
    if route is None:
        return error_response(404, html_page=_wants_html(request))
    gateway_cookies = request.app[GATEWAY_COOKIES]
    if (problem := framing_problem(request.headers, gateway_cookies=gateway_cookies)) is not None:
        security_log.warning("refused ambiguous request: %s", problem)
        return error_response(
            400, "bad_request", "ambiguous credentials in the request", html_page=_wants_html(request)
        )
    address, peer_trusted = address_of(request)
    forged = request.app[IDENTITY_KEYS].intersection(map(header_key, request.headers))
    if forged:  # dropped below by upstream_headers; worth a security event (SECURITY item 143)
        security_log.warning("forged identity headers dropped address=%s count=%d", address, len(forged))

    auth = ANONYMOUS
    if route.auth != "public":
        bearer = bearer_token(request)
        has_cookie = has_any_cookie(request, gateway_cookies)
        upgrade = route.websocket and request.headers.get("Upgrade", "").lower() == "websocket"
        if bearer is None and has_cookie and (upgrade or request.method.upper() not in SAFE_METHODS):
            # A websocket handshake is a GET, but browsers send cookies and Origin with it and the
            # same-origin policy does not apply: judge it like an unsafe request (RFC 6455 §10.2).
            reason = cross_origin(
                "POST" if upgrade else request.method, request.headers, config.server.public_url
            )
            if reason is not None:  # before authentication: a forged request never refreshes
                security_log.warning("csrf blocked address=%s reason=%s", address, reason)
                return error_response(
                    403, "cross_site_request", "cross-site request refused", html_page=_wants_html(request)
                )
        auth = await authenticate(request, address=address)
    d = Decision(route, target, auth, address, peer_trusted)

    if route.auth == "required" and auth.claims is None:
        return deny_unauthenticated(request, d, config)
    if route.roles and auth.claims is not None and not set(route.roles) & set(auth.claims.roles):
        resp = error_response(
            403, "forbidden", "you lack the role this page needs", html_page=_wants_html(request)
        )
        return _with_auth_cookies(resp, config, auth)
    if request.content_length is not None and request.content_length > route.max_body_size:
        resp = error_response(413, html_page=_wants_html(request))
        resp.force_close()
        return _with_auth_cookies(resp, config, auth)
    return d


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue`: decide first, invite the body only when the request may proceed."""
    result = await decide(request)
    if isinstance(result, web.StreamResponse):
        result.force_close()  # a body that arrives anyway must not be parsed as the next request
        return result
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return None


def _identity(route: RouteConfig, config: Config, auth: AuthResult) -> dict[str, str] | None:
    c = auth.claims
    if c is None:
        return None
    names: HeadersConfig = route.headers or config.headers
    return {
        names.user_id: c.sub,
        names.email: c.email,
        names.roles: ",".join(c.roles),
        names.session_id: c.sid,
    }


def _upstream_request_headers(request: web.Request, d: Decision, config: Config) -> CIMultiDict[str]:
    public_scheme, public_host = request.app[PUBLIC_ORIGIN]
    identity_names: tuple[str, ...] = request.app[IDENTITY_NAMES]
    gateway_cookies: tuple[str, ...] = request.app[GATEWAY_COOKIES]
    return upstream_headers(
        request.headers,
        identity=_identity(d.route, config, d.auth),
        identity_names=identity_names,
        gateway_cookies=gateway_cookies,
        strip_authorization=bearer_token(request) is not None,
        client_ip=d.address,
        peer_trusted=d.peer_trusted,
        public_scheme=public_scheme,
        public_host=public_host,
    )


async def _capped_body(request: web.Request, limit: int, seconds: float) -> AsyncIterator[bytes]:
    """The request body as it arrives, within the route's size cap and the body deadline.

    aiohttp's client_max_size does not guard a streamed body (AIOHTTP.md §1.5), and aiohttp has
    no body-read deadline (SECURITY item 133), so both are enforced here.
    """
    seen = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await request.content.readany()
        except TimeoutError:
            raise BodyTimeout() from None
        if not chunk:
            return
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge()
        yield chunk


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    result = await decide(request)
    if isinstance(result, web.StreamResponse):
        return result
    d = result
    config = request.app[CONFIG]
    if d.route.websocket and request.headers.get("Upgrade", "").lower() == "websocket":
        return await proxy_websocket(request, d, config)
    url = d.route.upstream + upstream_target(d.route, d.target)
    try:
        headers = _upstream_request_headers(request, d, config)
    except ValueError:  # an identity value with a control character: never emit it
        return _with_auth_cookies(error_response(500, html_page=_wants_html(request)), config, d.auth)
    body = (
        _capped_body(request, d.route.max_body_size, config.server.request_body_timeout)
        if request.body_exists
        else None
    )
    resp: web.StreamResponse | None = None
    metrics = request.app[METRICS]
    try:
        sent = time.perf_counter()
        async with request.app[UPSTREAM].request(
            request.method, url, headers, body, request.content_length if request.body_exists else None
        ) as up:
            head = time.perf_counter()
            # A body already complete goes out in one write with the head (docs/performance.md).
            response_class = _WholeResponse if up.complete else web.StreamResponse
            resp = response_class(status=up.status, reason=up.reason or None)
            own_cookies: tuple[str, ...] = request.app[GATEWAY_COOKIES]
            for name, value in downstream_headers(up.headers, gateway_cookies=own_cookies):
                resp.headers.add(name, value)
            # aiohttp would invent a Content-Type (AIOHTTP.md §1.9). Set either way: a missing
            # key costs restore_upstream_headers an exception.
            request[NO_CONTENT_TYPE] = "Content-Type" not in up.headers
            _with_auth_cookies(resp, config, d.auth)
            await resp.prepare(request)
            metrics.upstream.labels(d.route.path).observe(head - sent)
            metrics.overhead.labels(d.route.path).observe((sent - started) + (time.perf_counter() - head))
            if request.method != "HEAD" and up.status not in NO_BODY_STATUSES:
                async for chunk in up.body():
                    await resp.write(chunk)
            await resp.write_eof()
            return resp
    except BodyTooLarge:
        return _after_failure(request, resp, 413, d, config, _wants_html(request))
    except BodyTimeout:
        return _after_failure(request, resp, 408, d, config, _wants_html(request))
    except UpstreamTimeout:
        metrics.upstream_errors.labels(d.route.path, "timeout").inc()
        return _after_failure(request, resp, 504, d, config, _wants_html(request))
    except UpstreamError:
        metrics.upstream_errors.labels(d.route.path, "unavailable").inc()
        log.warning("upstream unavailable route=%s", d.route.path)
        return _after_failure(request, resp, 502, d, config, _wants_html(request))


class _WholeResponse(web.StreamResponse):
    """A proxied response whose whole body is already here: aiohttp then sends the head with the
    first body write (or at write_eof), not on its own as a StreamResponse does."""

    _send_headers_immediately = False


def _after_failure(
    request: web.Request,
    resp: web.StreamResponse | None,
    status: int,
    d: Decision,
    config: Config,
    html: bool,
) -> web.StreamResponse:
    if resp is not None and resp.prepared:
        # The status line is gone already: cut the connection so the client sees a truncated
        # body rather than a complete-looking wrong one (AIOHTTP.md §1.18).
        resp.force_close()
        if request.transport is not None:
            request.transport.close()
        return resp
    out = error_response(status, html_page=html)
    if status in (408, 413):
        out.force_close()  # the rest of the body is still on the wire
    return _with_auth_cookies(out, config, d.auth)


# ---- websockets ---------------------------------------------------------------------------------


def _close_code(code: int | None) -> int:
    """1005/1006/1015 are local-only codes that must never be sent (RFC 6455 §7.4.1)."""
    if code is None or code in (1005, 1015):
        return 1000
    if code == 1006:
        return 1011
    return code


async def _pump_down(down: web.WebSocketResponse, up: object) -> None:
    async for msg in down:
        if msg.type is WSMsgType.TEXT:
            await up.send_str(msg.data)  # type: ignore[attr-defined]
        elif msg.type is WSMsgType.BINARY:
            await up.send_bytes(msg.data)  # type: ignore[attr-defined]
    await up.close(code=_close_code(down.close_code))  # type: ignore[attr-defined]


async def _pump_up(up: object, down: web.WebSocketResponse) -> None:
    async for msg in up:  # type: ignore[attr-defined]
        if msg.type is WSMsgType.TEXT:
            await down.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await down.send_bytes(msg.data)
    await down.close(code=_close_code(up.close_code))  # type: ignore[attr-defined]


async def proxy_websocket(request: web.Request, d: Decision, config: Config) -> web.StreamResponse:
    """Upgrade after the same checks as any request (`decide` refused cross-site handshakes);
    connect upstream first so the browser gets exactly the upstream's subprotocol, or the
    upstream's refusal as plain HTTP."""
    down = web.WebSocketResponse(autoping=True, heartbeat=30.0, compress=False, max_msg_size=4 * 1024 * 1024)
    if not down.can_prepare(request).ok:
        return _with_auth_cookies(error_response(400), config, d.auth)
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    headers = _upstream_request_headers(request, d, config)
    url = d.route.upstream + upstream_target(d.route, d.target)
    try:
        up = await request.app[UPSTREAM].websocket(url, headers, offered)
    except UpstreamRefusedUpgrade as e:
        status = e.status if 200 <= e.status < 600 else 502
        return _with_auth_cookies(error_response(status, "upstream_refused_upgrade"), config, d.auth)
    except UpstreamError as e:
        return _with_auth_cookies(
            error_response(502 if not isinstance(e, UpstreamTimeout) else 504), config, d.auth
        )
    down = web.WebSocketResponse(
        protocols=[up.protocol] if up.protocol else (),
        autoping=True,
        heartbeat=30.0,
        compress=False,
        max_msg_size=4 * 1024 * 1024,
    )
    _with_auth_cookies(down, config, d.auth)
    await down.prepare(request)
    if d.auth.claims is not None:
        down[WS_SESSION] = (d.auth.claims.sid, d.auth.claims.sub, d.auth.claims.ver)
    sockets = request.app[WEBSOCKETS]
    sockets.add(down)
    gauge = request.app[METRICS].websockets
    gauge.inc()
    tasks = [asyncio.create_task(_pump_down(down, up)), asyncio.create_task(_pump_up(up, down))]
    if d.auth.claims is not None:
        tasks.append(asyncio.create_task(_watch_session(request.app, down, d.auth.claims.sid)))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await up.close()
        with contextlib.suppress(Exception):
            await down.close()
        sockets.discard(down)
        gauge.dec()
    return down


async def _watch_session(app: web.Application, down: web.WebSocketResponse, session_id: str) -> None:
    """Close the socket with 1008 once its session has ended by time (absolute or idle lifetime);
    revocations close it at once through `close_websockets_of`. One store read per socket every
    access TTL (at most a minute): off the request path."""
    interval = min(app[CONFIG].tokens.access_ttl, 60.0)
    clock = app[ACCOUNTS].clock
    while not down.closed:
        await asyncio.sleep(interval)
        session = await app[STORE].get_session(session_id)
        now = clock()
        if (
            session is None
            or session.revoked_at is not None
            or now >= session.expires_at
            or now >= session.last_used_at + session.idle_ttl
        ):
            await down.close(code=1008, message=b"session ended")
            return


def close_websockets_of(app: web.Application, entry: Revocation) -> None:
    """Close, with 1008 (policy violation), the open websockets a revocation kills."""
    for ws in list(app.get(WEBSOCKETS, ())):
        owner = ws.get(WS_SESSION)
        if owner is None:
            continue
        sid, user, ver = owner
        if (entry.kind == "session" and sid == entry.subject) or (
            entry.kind == "user" and user == entry.subject and ver < entry.min_version
        ):
            asyncio.get_running_loop().create_task(ws.close(code=1008, message=b"session ended"))


async def restore_upstream_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Remove the Content-Type aiohttp invents for a proxied response that had none."""
    if request.get(NO_CONTENT_TYPE):
        response.headers.popall("Content-Type", None)


IDENTITY_NAMES: web.AppKey[tuple[str, ...]] = web.AppKey("identity_names")
IDENTITY_KEYS: web.AppKey[frozenset[str]] = web.AppKey("identity_keys")
# Per-request constants, computed once (docs/performance.md).
GATEWAY_COOKIES: web.AppKey[tuple[str, ...]] = web.AppKey("gateway_cookies")
PUBLIC_ORIGIN: web.AppKey[tuple[str, str]] = web.AppKey("public_origin")  # (scheme, host[:port])


def add_proxy_routes(app: web.Application) -> None:
    app[IDENTITY_NAMES] = _identity_names(app[CONFIG])
    app[IDENTITY_KEYS] = frozenset(header_key(n) for n in app[IDENTITY_NAMES])
    app[GATEWAY_COOKIES] = gateway_cookie_names(app[CONFIG])
    public = urlsplit(app[CONFIG].server.public_url)
    app[PUBLIC_ORIGIN] = (public.scheme, public.netloc)
    app.on_response_prepare.append(restore_upstream_headers)
    app.router.add_route("*", "/{tail:.*}", proxy_handler, expect_handler=expect_continue)


__all__ = ["SECURITY_HEADERS", "add_proxy_routes", "close_websockets_of", "decide", "proxy_handler"]
