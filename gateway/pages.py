"""The gateway's own HTML pages: sign in, create account, signed out and account (DESIGN §4).

Jinja2 templates shipped in the package, autoescaped. The one stylesheet is inlined and allowed by
its SHA-256 hash, so the Content-Security-Policy needs no 'unsafe-inline' and a page loads nothing
but, when configured, the logo. `formerrors` says how a domain error reads on a form.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web
from markupsafe import Markup

from gateway import errors
from gateway.config import Config
from gateway.formerrors import LABELS, problems_of
from gateway.keys import CONFIG
from gateway.middleware import SECURITY_HEADERS
from gateway.redirects import safe_next
from gateway.store import SessionRecord
from gateway.tokens import Claims

_HOST = re.compile(r"[a-z0-9.-]+")


@dataclass(frozen=True)
class Templates:
    """The Jinja2 environment and the inlined stylesheet, built once per application."""

    env: jinja2.Environment
    css: Markup
    style_src: str  # the CSP source that allows exactly `css`: 'sha256-…'


TEMPLATES = web.AppKey("templates", Templates)


def build_templates() -> Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gateway", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails the render, never shows blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    css = resources.files("gateway").joinpath("static/gateway.css").read_text("utf-8")
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    # Markup: our own packaged file, not user input; autoescaping it would break its hash.
    return Templates(env=env, css=Markup(css), style_src=f"'sha256-{digest}'")  # noqa: S704


def setup_pages(app: web.Application) -> None:
    """Build the templates once, before the application starts (an app is frozen after)."""
    app[TEMPLATES] = build_templates()


# ---- headers --------------------------------------------------------------------------------------


def logo_url(config: Config) -> str | None:
    """The configured logo if it is a same-origin path or an http(s) URL, else None."""
    url = config.pages.logo_url.strip()
    if not url:
        return None
    if url.startswith("/") and not url.startswith("//") and "\\" not in url:
        return url
    return url if _origin(url) else None


def _origin(url: str) -> str | None:
    """`scheme://host[:port]` of an absolute http(s) URL, rebuilt from parsed parts (safe in a CSP)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    if ":" in host:
        try:
            host = f"[{ipaddress.IPv6Address(host)}]"
        except ValueError:
            return None
    elif not _HOST.fullmatch(host):
        return None
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def content_security_policy(config: Config, style_src: str) -> str:
    img = "'self'"
    logo = logo_url(config)
    if logo and (origin := _origin(logo)):
        img += f" {origin}"
    return (
        f"default-src 'none'; style-src {style_src}; img-src {img}; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    )


def _templates(request: web.Request) -> Templates:
    try:
        return request.app[TEMPLATES]
    except KeyError:
        raise RuntimeError("gateway pages need setup_pages(app) to run in create_app") from None


def render(
    request: web.Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """One page with the shared layout variables and every page header (SECURITY R-PX-17)."""
    config, t = request.app[CONFIG], _templates(request)
    html = t.env.get_template(template).render(
        css=t.css,
        product=config.pages.product_name,
        logo=logo_url(config),
        prefix=config.server.auth_prefix,
        **context,
    )
    resp = web.Response(status=status, text=html, content_type="text/html", charset="utf-8")
    resp.headers.update(SECURITY_HEADERS)
    # Not "no-referrer": under it browsers send `Origin: null` with the page's own form posts,
    # which the login-CSRF check refuses. "same-origin" still sends nothing to other origins.
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Content-Security-Policy"] = content_security_policy(config, t.style_src)
    resp.headers["Cache-Control"] = "no-store"
    if config.server.public_url.startswith("https://"):
        resp.headers["Strict-Transport-Security"] = "max-age=31536000"
    resp.headers.update(headers or {})
    return resp


# ---- the pages ------------------------------------------------------------------------------------


def _with_next(path: str, next_path: str) -> str:
    return path if next_path == "/" else f"{path}?{urlencode({'next': next_path})}"


def _form_page(
    request: web.Request,
    template: str,
    *,
    email: str,
    next_url: str | None,
    exc: errors.GatewayError | None,
    error: str | None,
    status: int | None,
    remember: bool = False,
) -> web.Response:
    config = request.app[CONFIG]
    p = problems_of(exc, registration_open=config.registration.enabled)
    if error:
        p.general.append(error)
        p.status = p.status if exc else 400
    # Focus where the user acts next: the first field in error, else the first empty field.
    focus = next((n for n in LABELS if n in p.fields), None)
    if focus is None and not p.general:
        focus = "password" if email else "email"
    nxt = safe_next(next_url)
    prefix = config.server.auth_prefix
    context = {
        "email": email,
        "next": nxt,
        "errors": p.fields,
        "general": p.general,
        "labels": LABELS,
        "focus": focus,
        "remember_me": config.tokens.remember_me,
        "remember": remember,  # a failed sign-in keeps the box as the user left it
        "registration": config.registration.enabled,
        "min_length": config.passwords.min_length,
        "login_href": _with_next(f"{prefix}/login", nxt),
        "register_href": _with_next(f"{prefix}/register", nxt),
    }
    return render(request, template, context, status=status or p.status, headers=p.headers)


def login_page(
    request: web.Request,
    *,
    email: str = "",
    next_url: str | None = None,
    exc: errors.GatewayError | None = None,
    error: str | None = None,
    status: int | None = None,
    remember: bool = False,
) -> web.Response:
    return _form_page(
        request,
        "login.html",
        email=email,
        next_url=next_url,
        exc=exc,
        error=error,
        status=status,
        remember=remember,
    )


def register_page(
    request: web.Request,
    *,
    email: str = "",
    next_url: str | None = None,
    exc: errors.GatewayError | None = None,
    error: str | None = None,
    status: int | None = None,
) -> web.Response:
    return _form_page(
        request, "register.html", email=email, next_url=next_url, exc=exc, error=error, status=status
    )


def logged_out_page(request: web.Request) -> web.Response:
    return render(request, "logged_out.html", {})


def _when(ts: float) -> dict[str, str]:
    dt = datetime.fromtimestamp(ts, UTC)
    return {"iso": dt.isoformat(timespec="seconds"), "text": f"{dt:%d %b %Y, %H:%M} UTC".lstrip("0")}


# User-agent token -> name, most specific first (Edge and Opera also say "Chrome/").
_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"))
_SYSTEMS: tuple[tuple[str, str], ...] = (
    *(("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iPadOS"), ("Windows", "Windows")),
    *(("Mac OS X", "macOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux")),
)


def describe_client(client: str) -> dict[str, str]:
    """`"203.0.113.9 Mozilla/5.0 (…) Chrome/…"` as `{"device": "Chrome on Linux", "address": …}`."""
    address, _, agent = client.partition(" ")
    browser = next((name for token, name in _BROWSERS if token in agent), "")
    if not browser and "Safari/" in agent:
        browser = "Safari"
    system = next((name for token, name in _SYSTEMS if token in agent), "")
    if browser:
        device = f"{browser} on {system}" if system else browser
    else:
        device = agent.split(" ", 1)[0] or "Unknown client"
    return {"device": device, "address": address, "agent": agent}


def account_page(request: web.Request, claims: Claims, sessions: list[SessionRecord]) -> web.Response:
    ordered = sorted(sessions, key=lambda s: (s.id != claims.sid, -s.last_used_at))
    rows = [
        {
            "current": s.id == claims.sid,
            "created": _when(s.created_at),
            "last_used": _when(s.last_used_at),
            **describe_client(s.client),
        }
        for s in ordered
    ]
    return render(request, "account.html", {"email": claims.email, "roles": claims.roles, "sessions": rows})
