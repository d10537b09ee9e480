"""Cross-site request forgery check for unsafe requests, from headers browsers cannot forge.

Legacy apps behind the gateway have no CSRF tokens; browsers mark every request with Fetch
Metadata (`Sec-Fetch-Site`) and, on unsafe methods, with `Origin` (or at least `Referer`), so the
gateway refuses unsafe requests that another site made (DESIGN §7, SECURITY items 119–125, OWASP
CSRF Prevention Cheat Sheet "Fetch Metadata headers" and "Verifying Origin With Standard
Headers"). The target origin comes from configuration, never from `Host` (item 86).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from multidict import MultiMapping

__all__ = ["cross_origin", "origin_of"]

# RFC 9110 §9.2.1: only these are safe. Every other method (POST, PUT, PATCH, DELETE, WebDAV's
# PROPPATCH/MKCOL, a lower-case "post" a legacy app may accept as POST) is checked.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})  # "none": typed URL, bookmark

Origin = tuple[str, str, int]


def origin_of(url: str) -> Origin | None:
    """(scheme, host, port) of an absolute http(s) URL, default port filled in; None if not one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # bad port, unbalanced "[" in the host
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    # urlsplit lower-cases `hostname` already.
    return scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme]


def cross_origin(method: str, headers: MultiMapping[str], public_origin: str) -> str | None:
    """A short reason when an unsafe request came from another origin than `public_origin`; else None.

    Safe methods (GET, HEAD, OPTIONS, TRACE) and requests carrying none of `Sec-Fetch-Site`,
    `Origin`, `Referer` (non-browser clients) pass. Otherwise every signal present must agree with
    `public_origin` (scheme://host[:port], compared exactly after default ports are normalised):
    `Sec-Fetch-Site` cross-site or same-site, an `Origin` that differs or is "null", or (without
    `Origin`) a `Referer` of another origin is refused. Whether cookies were used is the caller's
    concern. Raises ValueError when `public_origin` is not an http(s) URL.
    """
    expected = origin_of(public_origin)
    if expected is None:
        raise ValueError("public_origin must be an http(s) URL")
    if method in _SAFE_METHODS:
        return None

    # Fetch Metadata first (OWASP: the primary signal); "same-site" is refused too, because a
    # sibling subdomain is another origin (item 123).
    for site in headers.getall("Sec-Fetch-Site", ()):
        if site.strip().lower() not in _ALLOWED_FETCH_SITES:
            return f"Sec-Fetch-Site is {site.strip().lower() or 'empty'}"

    origins = headers.getall("Origin", ())
    if origins:
        for origin in origins:
            if origin.strip() == "null":
                # Sandboxed documents and cross-origin redirects send "null" (item 121).
                return "Origin is null"
            if origin_of(origin) != expected:
                return "Origin differs from the public origin"
        return None

    for referer in headers.getall("Referer", ()):
        if origin_of(referer) != expected:
            return "Referer differs from the public origin"
    return None
