"""Which denied requests get the login redirect and which get 401 JSON (DESIGN §7, SECURITY item 118)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.classify import wants_html

CHROME_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"

CASES = [
    # Fetch Metadata decides first, whatever else the request says.
    ("GET", [("Sec-Fetch-Mode", "navigate")], True, "navigate"),
    (
        "POST",
        [("Sec-Fetch-Mode", "Navigate"), ("Accept", "application/json")],
        True,
        "navigate-post-any-case",
    ),
    ("GET", [("Sec-Fetch-Dest", "document")], True, "dest-document"),
    ("GET", [("Sec-Fetch-Dest", "iframe"), ("X-Requested-With", "XMLHttpRequest")], True, "dest-iframe"),
    ("GET", [("Sec-Fetch-Dest", "frame")], True, "dest-frame"),
    (
        "GET",
        [("Sec-Fetch-Mode", "cors"), ("Sec-Fetch-Dest", "empty"), ("Accept", "*/*")],
        False,
        "fetch-cors",
    ),
    # Script and API markers.
    ("GET", [("X-Requested-With", "XMLHttpRequest"), ("Accept", CHROME_ACCEPT)], False, "xhr-marker"),
    ("GET", [("Authorization", "Bearer x"), ("Accept", CHROME_ACCEPT)], False, "authorization"),
    ("POST", [("Accept", CHROME_ACCEPT)], False, "post-without-fetch-metadata"),
    ("DELETE", [("Accept", "text/html")], False, "delete"),
    ("HEAD", [("Accept", CHROME_ACCEPT)], True, "head-like-get"),
    # Accept with q-values (RFC 9110 §12.5.1).
    ("GET", [("Accept", CHROME_ACCEPT)], True, "browser-accept"),
    ("GET", [], False, "no-accept"),
    ("GET", [("Accept", "*/*")], False, "wildcard-alone"),
    ("GET", [("Accept", "application/json")], False, "json"),
    ("GET", [("Accept", "application/json, text/plain, */*")], False, "axios-default"),
    ("GET", [("Accept", "text/html;q=0.5, application/json")], False, "json-preferred"),
    ("GET", [("Accept", "text/html, application/json;q=0.9")], True, "html-preferred"),
    ("GET", [("Accept", "text/html;q=0.9, application/json;q=0.9")], False, "tie-is-json"),
    ("GET", [("Accept", "text/*, application/*;q=0.5")], True, "type-wildcards"),
    ("GET", [("Accept", "text/html;q=0, */*")], False, "html-refused-explicitly"),
    ("GET", [("Accept", "*/*;q=0.1, text/html;q=0.2")], True, "specific-beats-wildcard"),
    ("GET", [("Accept", "TEXT/HTML")], True, "media-type-case-insensitive"),
    ("GET", [("Accept", "text/html;q=oops, application/json;q=0.1")], False, "malformed-q-ignored"),
    ("GET", [("Accept", "text/html;q=2")], False, "q-out-of-range-ignored"),
    ("GET", [("Accept", "text/html"), ("Accept", "application/json;q=0.1")], True, "several-accept-lines"),
    ("get", [("Accept", CHROME_ACCEPT)], False, "method-is-case-sensitive"),
]


@pytest.mark.parametrize(("method", "pairs", "expected"), [c[:3] for c in CASES], ids=[c[3] for c in CASES])
def test_wants_html(method: str, pairs: list[tuple[str, str]], expected: bool) -> None:
    """wants_html applies Fetch Metadata, then script markers and method, then Accept q-values."""
    assert wants_html(method, CIMultiDictProxy(CIMultiDict(pairs))) is expected
