"""`next` validation and the login URL: no open redirect (DESIGN §4, SECURITY items 115–118)."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.redirects import login_url, safe_next

# SECURITY item 115, one row per vector (the oauth2-proxy validator table), plus item 117.
OPEN_REDIRECTS = [
    ("https://evil.example", "absolute-url"),
    ("//evil.example", "scheme-relative"),
    ("/\\evil.example", "slash-backslash"),
    ("\\\\evil.example", "double-backslash"),
    ("/\t/evil.example", "tab"),
    ("/ /evil.example", "space"),
    ("/\v/evil.example", "vertical-tab"),
    ("/\r\n/evil.example", "crlf"),
    ("/./\\evil.com", "dot-backslash"),
    ("/./../../\\evil.com", "dotdot-backslash"),
    ("javascript:alert(1)", "javascript-scheme"),
    ("data:text/html,<script>alert(1)</script>", "data-scheme"),
    ("https://gw.example.evil.example/", "look-alike-host"),
    ("https://gw.example@evil.example/", "userinfo"),
    ("http://gw.example/", "scheme-downgrade"),
    ("https://gw.example:8443/", "port-change"),
    ("/%2F%2Fevil.example", "encoded-double-slash"),
    ("%2F%2Fevil.example", "encoded-leading-slashes"),
    ("/%5Cevil.example", "encoded-backslash"),
    ("/%5cevil.example", "encoded-backslash-lower"),
    ("/%09/evil.example", "encoded-tab"),
    ("/a%C2%A0b", "encoded-no-break-space"),
    ("/a%E2%80%A8b", "encoded-line-separator"),
    ("/ok%0d%0aSet-Cookie:x=1", "B117-header-injection"),
    ("/.//evil.example", "dot-then-double-slash"),
    ("/..//evil.example", "dotdot-then-double-slash"),
    ("/a//evil.example", "inner-double-slash"),
    ("/%2e%2e//evil.example", "encoded-dotdot-double-slash"),
    ("evil.example/x", "relative-path"),
    ("/\u3000/evil.example", "ideographic-space"),
    ("/caf\u00e9", "raw-non-ascii"),
    ("", "empty"),
    (None, "none"),
]


@pytest.mark.parametrize("value", [v for v, _ in OPEN_REDIRECTS], ids=[i for _, i in OPEN_REDIRECTS])
def test_open_redirect_vectors_fall_back_to_root(value: str | None) -> None:
    """Every open-redirect vector gives "/" instead of the value (item 115)."""
    assert safe_next(value) == "/"


SAFE = [
    ("/", "root"),
    ("/app/page", "path"),
    ("/app/page?x=1&next=https://evil.example", "query-may-hold-urls"),
    ("/app/page?x=a//b", "double-slash-in-query"),
    ("/caf%C3%A9/", "encoded-non-ascii"),
    ("/search?q=a%20b&y=%20", "encoded-space-in-query"),
    ("/My%20Documents/", "encoded-space-in-path"),
    ("/app#section", "fragment"),
]


@pytest.mark.parametrize("value", [v for v, _ in SAFE], ids=[i for _, i in SAFE])
def test_same_origin_paths_kept(value: str) -> None:
    """Same-origin relative paths come back unchanged."""
    assert safe_next(value) == value


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/app/page?x=1", "/auth/login?next=%2Fapp%2Fpage%3Fx%3D1"),
        ("/", "/auth/login?next=%2F"),
        ("//evil.example", "/auth/login?next=%2F"),
        ("/a?b=%2F&c=d e", "/auth/login?next=%2F"),
    ],
    ids=["item-118-encoded", "root", "unsafe-next-replaced", "unsafe-query-replaced"],
)
def test_login_url(target: str, expected: str) -> None:
    """login_url percent-encodes a safe next and replaces an unsafe one by "/" (item 118)."""
    assert login_url("/auth", target) == expected


def test_login_url_round_trips() -> None:
    """The next parameter decodes back to the original target, %2F inside the query included."""
    target = "/app/x?y=%2F&z=1"
    url = login_url("/sso/", target)
    assert url.startswith("/sso/login?")
    assert parse_qs(urlsplit(url).query)["next"] == [target]


# ---- property: never an absolute or scheme-relative URL -------------------------------------

_PIECES = [
    "/", "//", "\\", "%2F", "%2f", "%5C", "%5c", ".", "..", "evil.example", "http:", "https:", ":",
    "javascript:", "@", "?", "#", "\t", "\n", "\r", " ", "%09", "%0a", "%20", "a", "%25", "%", "\x00",
    "\u3000", "%E3%80%80", "\x0b", "\\\\",
]  # fmt: skip
values = st.lists(st.sampled_from(_PIECES), max_size=8).map("".join) | st.text(max_size=20)
BASE = "https://gw.example/app/page"


def _browser(value: str) -> str:
    """A browser-like resolution: strip C0/space at the ends, drop tab/CR/LF, read "\\" as "/"."""
    cleaned = value.strip("".join(chr(c) for c in range(0x21)))
    cleaned = cleaned.replace("\t", "").replace("\n", "").replace("\r", "").replace("\\", "/")
    return urljoin(BASE, cleaned)


@given(values)
@example("/\\evil.example")
@example("/%2F%2Fevil.example")
@example("/\t/evil.example")
def test_safe_next_is_never_absolute(value: str) -> None:
    """safe_next returns the value or "/", and neither it nor its decoding leaves the origin."""
    result = safe_next(value)
    assert result in (value, "/")
    for candidate in (result, unquote(result)):
        parts = urlsplit(candidate)
        assert not parts.scheme and not parts.netloc
        resolved = urlsplit(_browser(candidate))
        assert (resolved.scheme, resolved.netloc) == ("https", "gw.example")
        assert not resolved.path.startswith("//")
