"""The one rule deciding whether a denied request gets an HTML redirect or a JSON 401.

A browser navigation is sent to the login page; anything a script made (fetch, XHR, API
clients) gets 401 JSON with `WWW-Authenticate: Bearer`, because a redirect to an HTML page
breaks it (DESIGN §7, SECURITY item 118, oauth2-proxy `TestAjaxUnauthorizedRequest*`).
Fetch Metadata answers the question directly when present (W3C Fetch Metadata Request Headers);
otherwise the `Accept` header decides (RFC 9110 §12.5.1).
"""

from __future__ import annotations

from multidict import MultiMapping

__all__ = ["wants_html"]

_DOCUMENT_DESTINATIONS = frozenset({"document", "iframe", "frame"})


def wants_html(method: str, headers: MultiMapping[str]) -> bool:
    """True when the denied request should get a redirect to the login page.

    In order: `Sec-Fetch-Mode: navigate` or `Sec-Fetch-Dest` document/iframe/frame -> True;
    `X-Requested-With`, `Authorization`, or a method other than GET/HEAD -> False; otherwise
    True only when `Accept` gives text/html a higher q-value than application/json.
    """
    if headers.get("Sec-Fetch-Mode", "").strip().lower() == "navigate":
        return True
    if headers.get("Sec-Fetch-Dest", "").strip().lower() in _DOCUMENT_DESTINATIONS:
        return True
    if "X-Requested-With" in headers or "Authorization" in headers:
        return False
    if method not in ("GET", "HEAD"):
        return False
    accept = ",".join(headers.getall("Accept", ()))
    return _quality(accept, "text", "html") > _quality(accept, "application", "json")


def _quality(accept: str, type_: str, subtype: str) -> float:
    """The q-value `accept` gives to type_/subtype: most specific matching range wins, 0 if none."""
    best_specificity, best_q = -1, 0.0
    for media_range in accept.split(","):
        media, *params = (part.strip() for part in media_range.split(";"))
        if "/" not in media:
            continue
        range_type, _, range_subtype = (p.strip().lower() for p in media.partition("/"))
        if range_type == type_ and range_subtype == subtype:
            specificity = 2
        elif range_type == type_ and range_subtype == "*":
            specificity = 1
        elif range_type == "*" and range_subtype == "*":
            specificity = 0
        else:
            continue
        q = _q_param(params)
        if q is not None and specificity > best_specificity:
            best_specificity, best_q = specificity, q
    return best_q


def _q_param(params: list[str]) -> float | None:
    """The range's weight (RFC 9110 §12.4.2): 1 when absent, None when malformed (range ignored)."""
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return None
            return q if 0.0 <= q <= 1.0 else None
    return 1.0
