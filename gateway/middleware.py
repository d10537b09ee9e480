"""The HTTP edge: the one table mapping domain errors to statuses, error bodies, and the headers
every gateway-made response carries.

Errors become `{"error": code, "message": text}` (DESIGN §4) or a small HTML page for browsers;
nothing ever echoes the request or shows a traceback (ASVS 5.0 V16.5.1). Unexpected exceptions
are logged with their traceback and answered 500 with a generic body.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway import errors
from gateway.keys import CONFIG, DECISION, METRICS

log = logging.getLogger("gateway.http")
security_log = logging.getLogger("gateway.security")
HSTS = "max-age=31536000"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# error class -> (status, code). Order matters only for subclasses listed before their bases.
ERROR_TABLE: dict[type[errors.GatewayError], tuple[int, str]] = {
    errors.InvalidInput: (400, "invalid_request"),
    errors.EmailTaken: (409, "email_taken"),
    errors.RegistrationClosed: (403, "registration_closed"),
    errors.InvalidCredentials: (401, "invalid_credentials"),
    errors.TooManyAttempts: (429, "too_many_attempts"),
    errors.Overloaded: (503, "overloaded"),
    errors.InvalidRefreshToken: (401, "invalid_refresh_token"),
    errors.Unauthenticated: (401, "unauthenticated"),
    errors.NotFound: (404, "not_found"),
    errors.StoreError: (503, "store_unavailable"),
}

HTTP_CODES = {
    400: ("bad_request", "the request is malformed"),
    401: ("unauthenticated", "authentication required"),
    403: ("forbidden", "you are not allowed to do this"),
    404: ("not_found", "nothing here"),
    405: ("method_not_allowed", "method not allowed"),
    408: ("request_timeout", "the request body took too long"),
    413: ("payload_too_large", "the request body is too large"),
    415: ("unsupported_media_type", "send application/json or a form"),
    429: ("too_many_attempts", "too many attempts; try again later"),
    500: ("internal_error", "something went wrong on our side"),
    502: ("bad_gateway", "the application is unreachable"),
    503: ("unavailable", "the service is unavailable; try again shortly"),
    504: ("gateway_timeout", "the application took too long to answer"),
}

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def error_response(
    status: int,
    code: str | None = None,
    message: str | None = None,
    *,
    html_page: bool = False,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """A gateway-made error: JSON by default, a tiny HTML page for browser navigations."""
    default_code, default_message = HTTP_CODES.get(status, ("error", "request failed"))
    code = code or default_code
    message = message or default_message
    if html_page:
        body = (
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>"
            f"{status} {html.escape(message)}</title></head><body><h1>{html.escape(message)}</h1>"
            f"<p>Error {status}.</p></body></html>"
        )
        resp = web.Response(status=status, text=body, content_type="text/html")
    else:
        payload: dict[str, Any] = {"error": code, "message": message, **(extra or {})}
        resp = web.Response(status=status, text=json.dumps(payload), content_type="application/json")
    resp.headers.update(SECURITY_HEADERS)
    resp.headers["Cache-Control"] = "no-store"
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def map_error(exc: errors.GatewayError) -> web.Response:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            status, code = ERROR_TABLE[cls]
            break
    else:
        status, code = 500, "internal_error"
    extra: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(exc, errors.InvalidInput):
        extra["fields"] = exc.fields
    if isinstance(exc, errors.TooManyAttempts | errors.Overloaded):
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    if isinstance(exc, errors.Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(status, code, exc.message, extra=extra, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.GatewayError as exc:
        return map_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = error_response(exc.status, headers={k: v for k, v in exc.headers.items() if k == "Allow"})
        if exc.status in (408, 413):
            resp.force_close()  # the rest of the body is still on the wire: do not wait for it
        return resp
    except ConnectionResetError:
        raise  # the client went away; nothing to answer
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500)


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Runs after aiohttp added its own headers: hide the version it put in `Server`; over HTTPS,
    pin browsers to it (HSTS, one year: SECURITY item 76, ASVS 5.0 V3.4.1)."""
    response.headers["Server"] = "gateway"
    if request.app[CONFIG].server.public_url.startswith("https://"):
        response.headers.setdefault("Strict-Transport-Security", HSTS)


# RFC 9112 §3.2 / RFC 3986 §3.2.2: a Host is a host name or IP literal and an optional port.
# Stricter than reg-name on purpose: no userinfo, path, list, space or percent-encoding.
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~-]*)(?::[0-9]{1,5})?")


def framing_problem(request: web.BaseRequest) -> str | None:
    """What the parser accepts but HTTP/1.1 forbids, as a fixed phrase (never request bytes)."""
    if request.version < (1, 1) and "Transfer-Encoding" in request.headers:
        return "Transfer-Encoding in an HTTP/1.0 request"  # RFC 9112 §6.1: faulty framing
    if not all(_HOST.fullmatch(host) for host in request.headers.getall("Host", ())):
        return "invalid Host"  # RFC 9112 §3.2: answer 400
    return None


@web.middleware
async def framing_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """400 and close for framing llhttp lets through (SECURITY items 96 and 98), before any
    handler reads the body or anything is forwarded."""
    problem = framing_problem(request)
    if problem is not None:
        security_log.warning("refused malformed request: %s", problem)
        resp = error_response(400, "bad_request", "the request is malformed")
        resp.force_close()
        return resp
    return await handler(request)


class GatewayRequest(web.Request):
    """A `web.Request` whose parser-error answers are the gateway's own.

    aiohttp answers a request its parser refused (bad framing, an over-long line, an unknown
    method…) before routing and middlewares, with a text body quoting the offending bytes and a
    `Server` header naming the Python and aiohttp versions (aiohttp THREAT_MODEL threat 1.11).
    That answer is still prepared through this hook, with no route matched, so it is rewritten
    here: same status, a generic body, no versions (SECURITY items 144, 145; ASVS 5.0 V16.5.1).
    """

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        if self._match_info is None and isinstance(response, web.Response) and response.status >= 400:
            code, message = HTTP_CODES.get(response.status, ("bad_request", "the request is malformed"))
            body = json.dumps({"error": code, "message": message}).encode()
            response.body = body
            response.headers["Content-Length"] = str(len(body))
            response.headers["Content-Type"] = "application/json; charset=utf-8"
            response.headers.update(SECURITY_HEADERS)
            response.headers["Cache-Control"] = "no-store"
            response.headers["Server"] = "gateway"
        await super()._prepare_hook(response)


def use_gateway_requests(app: web.Application) -> None:
    """Make `app` build `GatewayRequest`s, for parser errors too (see GatewayRequest).

    aiohttp has no public hook for its parser-error answer; `Application._make_request` is the
    request factory it hands to its server. The security tests (items 144, 145) fail if a future
    aiohttp changes this.
    """
    make_request = app._make_request

    def factory(*args: Any, **kwargs: Any) -> web.Request:
        kwargs["_cls"] = GatewayRequest
        return make_request(*args, **kwargs)

    app._make_request = factory  # type: ignore[method-assign]


@web.middleware
async def request_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answered request by route (the config route, or "gateway" for our own)."""
    response = await handler(request)
    decision = request.get(DECISION)
    route = getattr(getattr(decision, "route", None), "path", "gateway")
    request.app[METRICS].requests.labels(route, str(response.status)).inc()
    return response
