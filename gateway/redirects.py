"""Where the gateway may send a browser after login: same-origin relative paths only.

An open redirector on the login page turns the gateway's own domain into phishing bait (RFC 9700
§4.11.1, OWASP Unvalidated Redirects and Forwards Cheat Sheet, SECURITY items 115–117). Browsers
read "\\" as "/", drop tabs and newlines inside URLs and resolve `//host` as another origin, so
`safe_next` accepts a strict subset (DESIGN §4) and falls back to "/" for everything else.
"""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit

__all__ = ["login_url", "safe_next"]


def _acceptable(value: str, *, decoded: bool = False) -> bool:
    if not value.startswith("/"):
        return False  # a relative path, or a URL with a scheme
    if "\\" in value:
        return False  # WHATWG URL parsing treats "\" as "/": `/\evil.example` is `//evil.example`
    if any((ch.isspace() and not (decoded and ch == " ")) or not ch.isprintable() for ch in value):
        # Control characters and whitespace: browsers drop tab/CR/LF inside URLs (`/\t/evil`
        # becomes `//evil`), and CR/LF would split a Location header (item 117). A space that
        # only appears after decoding (`?q=a%20b`) is harmless: the browser still sees `%20`, and
        # a URL parser neither drops an inner space nor lets it start a host.
        return False
    path = value.split("?", 1)[0].split("#", 1)[0]
    if "//" in path or any(segment in (".", "..") for segment in path.split("/")):
        # `//evil.example` is scheme-relative; `/.//evil`, `/..//evil` resolve to it.
        return False
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc


def safe_next(value: str | None) -> str:
    """`value` when it is a same-origin relative path, otherwise "/".

    Same-origin relative path: printable ASCII, one leading "/", no "//" or dot-segment in the
    path, no "\\", no scheme, no control character or whitespace; all of that still true after
    one percent-decode, except that a decoded plain space (U+0020) is allowed.
    """
    if not value or not value.isascii():
        return "/"
    # One decode catches `/%2F%2Fevil.example`, `/%5Cevil` and `/ok%0d%0aSet-Cookie:…`.
    if _acceptable(value) and _acceptable(unquote(value), decoded=True):
        return value
    return "/"


def login_url(auth_prefix: str, next_target: str) -> str:
    """The login page URL carrying `next_target` (checked with `safe_next`) percent-encoded.

    `login_url("/auth", "/app/page?x=1")` is `/auth/login?next=%2Fapp%2Fpage%3Fx%3D1`.
    """
    return f"{auth_prefix.rstrip('/')}/login?next={quote(safe_next(next_target), safe='')}"
