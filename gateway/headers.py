"""Header hygiene at the trust boundary: what goes upstream, what comes back, what is refused.

The upstream trusts the identity headers blindly, so every client-supplied spelling of them is
removed first and the gateway's own values are added last (SECURITY R-PX-1..5, items 78–91;
oauth2-proxy CVE-2025-64484). Hop-by-hop headers are connection-scoped (RFC 9110 §7.6.1) and the
client library re-frames bodies (item 102). The gateway's cookies and a validated bearer token
stay at the gateway (R-PX-15). Pure functions over multidicts, no aiohttp server objects.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, MultiMapping

__all__ = [
    "HOP_BY_HOP",
    "downstream_headers",
    "framing_problem",
    "header_key",
    "is_gateway_cookie",
    "upstream_headers",
]

# RFC 9110 §7.6.1, plus Proxy-Connection and "Trailers" (the RFC 2616 typo many peers still send).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Rebuilt by the gateway or meaningless upstream: Expect was answered by aiohttp already (AIOHTTP
# §1.6), Host and Content-Length are set by the client library (item 102), forwarding headers are
# only believed from trusted proxies (R-PX-6) and routing hints never (R-PX-7, item 87).
_DROPPED = frozenset(
    {"expect", "host", "content-length", "forwarded", "x-real-ip", "x-original-url", "x-rewrite-url"}
)
_FORWARDED_PREFIX = "x-forwarded-"
_HOST_PREFIXES = ("__host-", "__secure-")  # RFC 6265bis §4.1.3; browsers match them case-insensitively
# RFC 9110 §5.6.2 token: a header name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def header_key(name: str) -> str:
    """The spelling-free form of a header name: lower case, "_" read as "-".

    CGI/WSGI/PHP map `X_Auth_User` and `X-Auth-User` to the same variable (SECURITY R-PX-3).
    """
    return name.lower().replace("_", "-")


def _connection_options(headers: MultiMapping[str]) -> set[str]:
    return {
        header_key(option.strip())
        for value in headers.getall("Connection", ())
        for option in value.split(",")
        if option.strip()
    }


def _cookie_base(name: str) -> str:
    lowered = name.lower()
    for prefix in _HOST_PREFIXES:
        if lowered.startswith(prefix):
            return name[len(prefix) :]
    return name


def is_gateway_cookie(name: str, gateway_cookies: Iterable[str]) -> bool:
    """Whether a cookie name is one of the gateway's, with or without a `__Host-`/`__Secure-` prefix."""
    base = _cookie_base(name.strip())
    return any(base == _cookie_base(own) for own in gateway_cookies)


def _check_value(name: str, value: str) -> None:
    # RFC 9110 §5.5: CR, LF and NUL would split or truncate the upstream request (item 82); the
    # gateway sends no other control characters either.
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError(f"header {name!r}: value contains a control character")


def upstream_headers(
    incoming: MultiMapping[str],
    *,
    identity: Mapping[str, str] | None,
    identity_names: Iterable[str],
    gateway_cookies: Iterable[str],
    strip_authorization: bool,
    client_ip: str,
    peer_trusted: bool,
    public_scheme: str,
    public_host: str,
) -> CIMultiDict[str]:
    """The headers to send upstream for a client request whose headers are `incoming`.

    Strips hop-by-hop and `Connection`-listed headers, `Expect`, `Host`, `Content-Length`,
    forwarding and routing hints, every spelling of every identity name, the gateway's cookies
    and (when `strip_authorization`) `Authorization`; then sets `X-Forwarded-For/-Proto/-Host`
    and finally the identity headers, replacing any value. Raises ValueError when a value the
    gateway adds holds a control character, or an identity name is not an RFC 9110 token.
    """
    identity = identity or {}
    own_cookies = tuple(gateway_cookies)
    for name, value in identity.items():
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"identity header name {name!r} is not an HTTP token")
        _check_value(name, value)
    for name, value in (
        ("client_ip", client_ip),
        ("public_scheme", public_scheme),
        ("public_host", public_host),
    ):
        _check_value(name, value)
    # Connection options are applied to the inbound message before anything is added (R-PX-5),
    # so `Connection: X-Auth-User-Id` can never remove what the gateway sets below.
    drop = set(HOP_BY_HOP | _DROPPED) | _connection_options(incoming)
    drop |= {header_key(name) for name in identity_names}
    drop |= {header_key(name) for name in identity}
    if strip_authorization:
        drop.add("authorization")

    out: CIMultiDict[str] = CIMultiDict()
    cookies: list[str] = []
    for name, value in incoming.items():
        key = header_key(name)
        if key in drop or key.startswith(_FORWARDED_PREFIX):
            continue
        if key == "cookie":
            cookies.extend(_app_cookies(value, own_cookies))
            continue
        out.add(name, value)
    if cookies:
        # RFC 6265 §5.4: one Cookie header, pairs joined with "; ".
        out["Cookie"] = "; ".join(cookies)

    if peer_trusted:
        # R-PX-6: append to the chain only when the peer is a configured proxy.
        chain = [v.strip() for v in incoming.getall("X-Forwarded-For", ()) if v.strip()]
        out["X-Forwarded-For"] = ", ".join([*chain, client_ip])
    else:
        out["X-Forwarded-For"] = client_ip
    out["X-Forwarded-Proto"] = public_scheme
    out["X-Forwarded-Host"] = public_host
    # Last, with replace semantics (AIOHTTP §1.6): nothing above can leave a second value.
    for name, value in identity.items():
        out[name] = value
    return out


def _app_cookies(header: str, gateway_cookies: tuple[str, ...]) -> list[str]:
    """The `name=value` pairs of one Cookie header that are not the gateway's, as sent."""
    kept: list[str] = []
    for pair in header.split(";"):
        pair = pair.strip()
        if pair and not is_gateway_cookie(pair.split("=", 1)[0], gateway_cookies):
            kept.append(pair)
    return kept


def downstream_headers(
    upstream: MultiMapping[str], *, gateway_cookies: Iterable[str]
) -> list[tuple[str, str]]:
    """The upstream response headers to pass to the client, in order, every occurrence kept.

    Drops hop-by-hop and `Connection`-listed headers and any `Set-Cookie` naming a gateway cookie
    (SECURITY item 75: an upstream must not fixate or overwrite the session). `Content-Length`
    and `Content-Encoding` pass untouched: the body is relayed as is (DESIGN §7).
    """
    own_cookies = tuple(gateway_cookies)
    drop = HOP_BY_HOP | _connection_options(upstream)
    kept: list[tuple[str, str]] = []
    for name, value in upstream.items():
        key = header_key(name)
        if key in drop:
            continue
        if key == "set-cookie" and is_gateway_cookie(value.split(";", 1)[0].split("=", 1)[0], own_cookies):
            continue
        kept.append((name, value))
    return kept


def framing_problem(headers: MultiMapping[str], *, gateway_cookies: Iterable[str]) -> str | None:
    """Why a request's credentials are ambiguous, or None; the caller answers 400 (DESIGN §7).

    Two `Authorization` headers, or one gateway cookie name (exact wire name) twice across all
    `Cookie` headers: first-wins and last-wins readers would disagree (SECURITY item 72).
    """
    if len(headers.getall("Authorization", ())) > 1:
        return "duplicate Authorization"
    own = set(gateway_cookies)
    seen: set[str] = set()
    for header in headers.getall("Cookie", ()):
        for pair in header.split(";"):
            name = pair.split("=", 1)[0].strip()
            if name in own:
                if name in seen:
                    return f"duplicate cookie {name}"
                seen.add(name)
    return None
