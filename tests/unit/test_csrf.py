"""Cross-origin unsafe requests are recognised from Fetch Metadata, Origin and Referer (SECURITY B.9)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.csrf import cross_origin, origin_of

PUBLIC = "https://gw.example"

REFUSED = [
    # Item 119: Fetch Metadata says another site.
    ("POST", [("Sec-Fetch-Site", "cross-site")], "cross-site"),
    # Item 123: a sibling subdomain is another origin.
    ("POST", [("Sec-Fetch-Site", "same-site"), ("Origin", "https://other.gw.example")], "same-site"),
    ("POST", [("Sec-Fetch-Site", "same-site")], "same-site-alone"),
    ("POST", [("Sec-Fetch-Site", "cross-site"), ("Origin", PUBLIC)], "fetch-site-wins-over-origin"),
    ("POST", [("Sec-Fetch-Site", "bogus")], "unknown-fetch-site"),
    # Item 121.
    ("POST", [("Origin", "null")], "origin-null"),
    # Item 122: look-alikes, exact scheme + host + port.
    ("POST", [("Origin", "https://gw.example.evil.example")], "origin-suffix"),
    ("POST", [("Origin", "https://evilgw.example")], "origin-prefix"),
    ("POST", [("Origin", "https://gw.example:444")], "origin-port"),
    ("POST", [("Origin", "http://gw.example")], "origin-scheme"),
    ("POST", [("Origin", "garbage")], "origin-malformed"),
    ("POST", [("Origin", PUBLIC), ("Origin", "https://evil.example")], "second-origin-differs"),
    # Referer only when Origin is missing.
    ("POST", [("Referer", "https://evil.example/page")], "referer-other-origin"),
    ("POST", [("Referer", "https://gw.example@evil.example/")], "referer-userinfo"),
    ("POST", [("Referer", "/relative")], "referer-not-absolute"),
    # Every unsafe method, including unusual ones and case variants (RFC 9110 §9.2.1).
    ("PUT", [("Origin", "https://evil.example")], "put"),
    ("PATCH", [("Origin", "https://evil.example")], "patch"),
    ("DELETE", [("Origin", "https://evil.example")], "delete"),
    ("PROPPATCH", [("Origin", "https://evil.example")], "webdav"),
    ("post", [("Origin", "https://evil.example")], "lowercase-post"),
]


@pytest.mark.parametrize(("method", "pairs"), [r[:2] for r in REFUSED], ids=[r[2] for r in REFUSED])
def test_cross_origin_refused(method: str, pairs: list[tuple[str, str]]) -> None:
    """An unsafe request another origin made gets a reason (the caller answers 403)."""
    assert cross_origin(method, CIMultiDictProxy(CIMultiDict(pairs)), PUBLIC) is not None


ALLOWED = [
    ("GET", [("Sec-Fetch-Site", "cross-site"), ("Origin", "https://evil.example")], "get-is-safe"),
    ("HEAD", [("Origin", "null")], "head-is-safe"),
    ("OPTIONS", [("Origin", "https://evil.example")], "options-is-safe"),
    ("POST", [], "no-browser-headers"),
    ("POST", [("Origin", PUBLIC)], "same-origin"),
    ("POST", [("Origin", "HTTPS://GW.EXAMPLE")], "origin-case-insensitive"),
    ("POST", [("Origin", "https://gw.example:443")], "default-port-normalised"),
    ("POST", [("Sec-Fetch-Site", "same-origin")], "fetch-same-origin"),
    ("POST", [("Sec-Fetch-Site", "none")], "fetch-user-initiated"),
    ("POST", [("Referer", "https://gw.example/form?x=1")], "referer-same-origin"),
    ("POST", [("Origin", PUBLIC), ("Referer", "https://evil.example/")], "origin-beats-referer"),
]


@pytest.mark.parametrize(("method", "pairs"), [a[:2] for a in ALLOWED], ids=[a[2] for a in ALLOWED])
def test_cross_origin_allowed(method: str, pairs: list[tuple[str, str]]) -> None:
    """Safe methods, same-origin requests and non-browser clients pass."""
    assert cross_origin(method, CIMultiDictProxy(CIMultiDict(pairs)), PUBLIC) is None


@pytest.mark.parametrize(
    ("public", "origin", "allowed"),
    [
        ("http://localhost:8080", "http://localhost:8080", True),
        ("http://localhost:8080", "http://localhost", False),
        ("http://gw.example:80", "http://gw.example", True),
        ("https://[::1]:8443", "https://[::1]:8443", True),
        ("https://gw.example/base/", "https://gw.example", True),
    ],
    ids=["explicit-port", "port-missing", "default-port-in-config", "ipv6", "public-url-with-path"],
)
def test_public_origin_forms(public: str, origin: str, allowed: bool) -> None:
    """The configured origin is compared as scheme, host and port with default ports normalised."""
    headers = CIMultiDictProxy(CIMultiDict([("Origin", origin)]))
    assert (cross_origin("POST", headers, public) is None) is allowed


def test_reason_is_short_text() -> None:
    """A refusal names the signal that showed another origin."""
    headers = CIMultiDictProxy(CIMultiDict([("Origin", "null")]))
    assert cross_origin("POST", headers, PUBLIC) == "Origin is null"


def test_bad_public_origin_raises() -> None:
    """A public origin that is not an http(s) URL is a programming error: ValueError."""
    with pytest.raises(ValueError, match="public_origin"):
        cross_origin("GET", CIMultiDictProxy(CIMultiDict()), "gw.example")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://GW.example", ("https", "gw.example", 443)),
        ("http://gw.example:8080/x", ("http", "gw.example", 8080)),
        ("ftp://gw.example", None),
        ("https://gw.example:99999", None),
        ("null", None),
    ],
    ids=["default-https-port", "explicit-port", "other-scheme", "bad-port", "null"],
)
def test_origin_of(url: str, expected: tuple[str, str, int] | None) -> None:
    """origin_of reduces an http(s) URL to (scheme, host, port) and refuses anything else."""
    assert origin_of(url) == expected
