"""Setting and clearing the gateway's two cookies (DESIGN §5, SECURITY C.3).

Both are HttpOnly, Path=/, SameSite from config, Secure per config, never a Domain: with Secure
the names carry the `__Host-` prefix, which browsers only accept under exactly those attributes.
Every response that sets them is marked `Cache-Control: no-store` so no cache replays them.
"""

from __future__ import annotations

from aiohttp import web

from gateway.accounts import Issued
from gateway.config import Config


def _set(resp: web.StreamResponse, config: Config, name: str, value: str, max_age: int) -> None:
    c = config.cookies
    resp.set_cookie(
        name, value, max_age=max_age, path="/", secure=c.secure, httponly=True, samesite=c.same_site
    )


def set_session_cookies(resp: web.StreamResponse, config: Config, issued: Issued) -> None:
    _set(resp, config, config.cookies.access_cookie, issued.access_token, int(config.tokens.access_ttl))
    _set(resp, config, config.cookies.refresh_cookie, issued.refresh_token, issued.refresh_max_age)
    resp.headers["Cache-Control"] = "no-store"


def clear_session_cookies(resp: web.StreamResponse, config: Config) -> None:
    for name in (config.cookies.access_cookie, config.cookies.refresh_cookie):
        _set(resp, config, name, "", 0)
    resp.headers["Cache-Control"] = "no-store"


def gateway_cookie_names(config: Config) -> tuple[str, ...]:
    """Every spelling of our cookies, with and without the prefix, for stripping upstream."""
    c = config.cookies
    names = {c.access_name, c.refresh_name, "__Host-" + c.access_name, "__Host-" + c.refresh_name}
    return tuple(sorted(names))
