"""Header hygiene at the trust boundary: what goes upstream, what comes back, what is refused.

The upstream trusts the identity headers blindly, so every client-supplied spelling of them is
removed first and the gateway's own values are added last (SECURITY R-PX-1..5, items 78–91;
oauth2-proxy CVE-2025-64484). Hop-by-hop headers are connection-scoped (RFC 9110 §7.6.1) and the
client library re-frames bodies (item 102). The gateway's cookies and a validated bearer token
stay at the gateway (R-PX-15). Pure functions over multidicts, no aiohttp server objects.
"""

from __future__ import annotations

import functools
import re
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
_ADDED_HERE = frozenset({"cookie", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
_HOST_PREFIXES = ("__host-", "__secure-")  # RFC 6265bis §4.1.3; browsers match them case-insensitively
# RFC 9110 §5.6.2 token: a header name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def header_key(name: str) -> str:
    """The spelling-free form of a header name: lower case, "_" read as "-".

    CGI/WSGI/PHP map `X_Auth_User` and `X-Auth-User` to the same variable (SECURITY R-PX-3).
    """
    key = _KEYS.get(name)
    if key is None:
        key = name.lower().replace("_", "-")
        if len(_KEYS) < _KEYS_LIMIT:  # names come from clients: bounded, never evicted
            _KEYS[name] = key
    return key


# header_key() of names seen before: the same few dozen names arrive on every request.
_KEYS: dict[str, str] = {}
_KEYS_LIMIT = 4096
# Unicode category Cc is exactly U+0000–U+001F and U+007F–U+009F.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


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


@functools.lru_cache(maxsize=64)
def _cookie_bases(gateway_cookies: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_cookie_base(own) for own in gateway_cookies)


def is_gateway_cookie(name: str, gateway_cookies: Iterable[str]) -> bool:
    """Whether a cookie name is one of the gateway's, with or without a `__Host-`/`__Secure-` prefix."""
    return _cookie_base(name.strip()) in _cookie_bases(tuple(gateway_cookies))


def _check_value(name: str, value: str) -> None:
    # RFC 9110 §5.5: CR, LF and NUL would split or truncate the upstream request (item 82); the
    # gateway sends no other control characters either.
    if _CONTROL.search(value) is not None:
        raise ValueError(f"header {name!r}: value contains a control character")


@functools.lru_cache(maxsize=256)
def _dropped(
    identity_names: tuple[str, ...], identity: tuple[str, ...], strip_authorization: bool
) -> tuple[frozenset[str], bool]:
    """What a request never forwards, for one set of identity names (computed once per set), and
    whether the identity names are distinct ignoring case and none of the headers added here, so
    that appending them equals setting them one by one."""
    for name in identity:
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"identity header name {name!r} is not an HTTP token")
    drop = set(HOP_BY_HOP | _DROPPED)
    drop |= {header_key(name) for name in identity_names}
    drop |= {header_key(name) for name in identity}
    if strip_authorization:
        drop.add("authorization")
    lowered = {name.lower() for name in identity}
    appendable = len(lowered) == len(identity) and lowered.isdisjoint(_ADDED_HERE)
    return frozenset(drop), appendable


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

    One pass over the incoming headers; what depends only on the configuration is cached.
    """
    identity = identity or {}
    drop, identity_distinct = _dropped(tuple(identity_names), tuple(identity), strip_authorization)
    added = (client_ip, public_scheme, public_host, *identity.values())
    if _CONTROL.search("".join(added)) is not None:
        for name, value in (
            ("client_ip", client_ip),
            ("public_scheme", public_scheme),
            ("public_host", public_host),
            *identity.items(),
        ):
            _check_value(name, value)
    # Connection options are applied to the inbound message before anything is added (R-PX-5),
    # so `Connection: X-Auth-User-Id` can never remove what the gateway sets below.
    if "Connection" in incoming:
        drop = drop | _connection_options(incoming)

    keys, limit = _KEYS, _KEYS_LIMIT
    kept: list[tuple[str, str]] = []
    cookies: list[str] | None = None
    for name, value in incoming.items():
        key = keys.get(name)
        if key is None:
            key = name.lower().replace("_", "-")
            if len(keys) < limit:
                keys[name] = key
        if key in drop or key.startswith(_FORWARDED_PREFIX):
            continue
        if key == "cookie":
            app = _app_cookies(value, gateway_cookies)
            if app:
                cookies = app if cookies is None else cookies + app
            continue
        kept.append((name, value))
    if cookies:
        # RFC 6265 §5.4: one Cookie header, pairs joined with "; ".
        kept.append(("Cookie", "; ".join(cookies)))

    if peer_trusted:
        # R-PX-6: append to the chain only when the peer is a configured proxy.
        chain = [v.strip() for v in incoming.getall("X-Forwarded-For", ()) if v.strip()]
        kept.append(("X-Forwarded-For", ", ".join([*chain, client_ip])))
    else:
        kept.append(("X-Forwarded-For", client_ip))
    # Every X-Forwarded-* header of the client was dropped above: these are the only ones.
    kept.append(("X-Forwarded-Proto", public_scheme))
    kept.append(("X-Forwarded-Host", public_host))
    # Last, with replace semantics (AIOHTTP §1.6): every spelling of each identity name was
    # dropped above, so with distinct names appending them is the same as setting them.
    if identity_distinct:
        kept.extend(identity.items())
        return CIMultiDict(kept)
    out: CIMultiDict[str] = CIMultiDict(kept)
    for name, value in identity.items():
        out[name] = value
    return out


def _app_cookies(header: str, gateway_cookies: Iterable[str]) -> list[str]:
    """The `name=value` pairs of one Cookie header that are not the gateway's, as sent."""
    own = _cookie_bases(tuple(gateway_cookies))
    kept: list[str] = []
    for pair in header.split(";"):
        pair = pair.strip()
        if pair and _cookie_base(pair.split("=", 1)[0].strip()) not in own:
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
    drop: frozenset[str] | set[str] = HOP_BY_HOP
    if "Connection" in upstream:
        drop = HOP_BY_HOP | _connection_options(upstream)
    own: frozenset[str] | None = None
    keys = _KEYS
    kept: list[tuple[str, str]] = []
    for name, value in upstream.items():
        key = keys.get(name) or header_key(name)
        if key in drop:
            continue
        if key == "set-cookie":
            if own is None:
                own = _cookie_bases(tuple(gateway_cookies))
            if _cookie_base(value.split(";", 1)[0].split("=", 1)[0].strip()) in own:
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
