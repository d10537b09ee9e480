"""Path canonicalisation: one canonical path for the decision and the upstream (DESIGN §7, SECURITY B.7)."""

from __future__ import annotations

import contextlib
import posixpath
import re
from urllib.parse import unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.paths import PathRejected, Target, canonicalize, remove_dot_segments

# (raw target, canonical path, query, encoded_slash)
CANONICAL = [
    # SECURITY B.7 item 104: raw dot-segments are resolved, so /admin stays protected.
    ("/public/../admin", "/admin", None, False, "B104-dotdot"),
    # Item 105: encoded dots are unreserved, decoded, then resolved.
    ("/public/%2e%2e/admin", "/admin", None, False, "B105-lower-encoded-dots"),
    ("/public/%2E%2E/admin", "/admin", None, False, "B105-upper-encoded-dots"),
    ("/public/.%2e/admin", "/admin", None, False, "B105-dot-then-encoded"),
    ("/public/%2e./admin", "/admin", None, False, "B105-encoded-then-dot"),
    ("/public/%2e/../admin", "/admin", None, False, "B105-encoded-single-dot"),
    # Item 106: %2F is reported, not decoded and not refused here (the router decides).
    ("/%2F/admin", "/%2F/admin", None, True, "B106-encoded-slash-reported"),
    ("/files/a%2fb", "/files/a%2fb", None, True, "B106-lowercase-encoded-slash-kept-as-sent"),
    # Item 107: `;` inside a segment is kept; the dot-segments around it resolve to /admin.
    ("/public/x;/../../admin", "/admin", None, False, "B107-params-then-dotdot"),
    # Item 109: slash runs fold, single dots vanish, trailing "/" is kept.
    ("//admin", "/admin", None, False, "B109-leading-double-slash"),
    ("/public//../admin", "/admin", None, False, "B109-fold-before-resolve"),
    ("/./admin", "/admin", None, False, "B109-leading-dot"),
    ("/admin/", "/admin/", None, False, "B109-trailing-slash-kept"),
    ("/admin/.", "/admin/", None, False, "B109-trailing-dot"),
    ("/a/b/..", "/a/", None, False, "trailing-dotdot-keeps-slash"),
    ("///a////b", "/a/b", None, False, "slash-runs-folded"),
    # Item 111: unreserved escapes are decoded (RFC 3986 §6.2.2.2).
    ("/%61dmin", "/admin", None, False, "B111-encoded-letter"),
    ("/%7Euser/%2D%5F", "/~user/-_", None, False, "unreserved-punctuation-decoded"),
    # Item 113: a fragment is ignored and cannot change the path.
    ("/admin#frag", "/admin", None, False, "B113-fragment-ignored"),
    ("/a?x=1#frag", "/a", "x=1", False, "fragment-after-query-ignored"),
    # ".." never climbs above "/".
    ("/../../admin", "/admin", None, False, "dotdot-above-root"),
    ("/..", "/", None, False, "only-dotdot"),
    ("/", "/", None, False, "root"),
    # Other escapes are kept exactly as sent, hex case included.
    ("/caf%c3%a9/%C3%A9", "/caf%c3%a9/%C3%A9", None, False, "non-unreserved-escapes-kept"),
    ("/a%20b%3Ac", "/a%20b%3Ac", None, False, "space-and-colon-escapes-kept"),
    ("/100%25", "/100%25", None, False, "lone-encoded-percent-kept"),
    ("/%25zz", "/%25zz", None, False, "encoded-percent-before-non-hex-kept"),
    # The query passes byte-for-byte, whatever it holds.
    ("/a?", "/a", "", False, "empty-query-is-not-none"),
    ("/a/../b?x=/../%2F&y=%zz&z=\\", "/b", "x=/../%2F&y=%zz&z=\\", False, "query-untouched"),
    ("/%2e?q=%2e", "/", "q=%2e", False, "query-escapes-not-decoded"),
]


@pytest.mark.parametrize(
    ("raw", "path", "query", "encoded_slash"),
    [row[:4] for row in CANONICAL],
    ids=[row[4] for row in CANONICAL],
)
def test_canonical_form(raw: str, path: str, query: str | None, encoded_slash: bool) -> None:
    """Each accepted target has the documented canonical path, query and encoded-slash flag."""
    assert canonicalize(raw) == Target(path=path, query=query, encoded_slash=encoded_slash)


# (raw target, fixed reason)
REFUSED = [
    # Item 89 / 113: not origin-form.
    ("http://evil.example/admin", "request target is not origin-form", "B113-absolute-form"),
    ("*", "request target is not origin-form", "B113-asterisk"),
    ("evil.example:443", "request target is not origin-form", "B113-authority-form"),
    ("", "request target is not origin-form", "empty"),
    # Item 106: a dot-segment beside an encoded slash becomes ".." for an upstream decoding %2F.
    ("/public%2f..%2fadmin", "dot-segment next to an encoded slash", "B106-slash-dotdot-slash"),
    ("/public/..%2Fadmin", "dot-segment next to an encoded slash", "B106-dotdot-encoded-slash"),
    # Item 107: other separators and terminators.
    ("/public/..%5cadmin", "encoded backslash", "B107-encoded-backslash"),
    ("/public/..%5Cadmin", "encoded backslash", "B107-encoded-backslash-upper"),
    ("/public\\..\\admin", "backslash in path", "B107-raw-backslash"),
    ("/admin%00.css", "encoded NUL", "B107-encoded-nul"),
    ("/public/secret%23/endpoint", "encoded '#' or '?' in path", "B107-encoded-hash"),
    ("/public/x%3F/../admin", "encoded '#' or '?' in path", "B107-encoded-question-mark"),
    ("/public/..;/admin", "dot-segment with parameters", "B107-dotdot-semicolon"),
    ("/public/.;x=1/admin", "dot-segment with parameters", "B107-dot-semicolon"),
    ("/public/%2e%2e%3b/admin", "dot-segment with parameters", "B107-encoded-dotdot-semicolon"),
    # Item 108: double encoding, also when the digits after %25 are themselves encoded.
    ("/public/%252e%252e/admin", "double percent-encoding", "B108-double-encoded-dots"),
    ("/public%252fadmin", "double percent-encoding", "B108-double-encoded-slash"),
    ("/public/%255c", "double percent-encoding", "B108-double-encoded-backslash"),
    ("/public/%25%32%65", "double percent-encoding", "B108-encoded-hex-digits"),
    # Item 111: full-width look-alikes that NFKC turns into "." or "/".
    ("/%EF%BC%8E%EF%BC%8E/admin", "Unicode look-alike of a dot-segment or separator", "B111-fullwidth-dots"),
    ("/public/%EF%BC%8Fadmin", "Unicode look-alike of a dot-segment or separator", "B111-fullwidth-slash"),
    # Item 114: invalid and overlong UTF-8 after percent-decoding.
    ("/%c0%ae%c0%ae/", "invalid UTF-8 in path", "B114-overlong-dot"),
    ("/%ff", "invalid UTF-8 in path", "B114-invalid-byte"),
    ("/%ed%a0%80", "invalid UTF-8 in path", "B114-surrogate"),
    ("/%c3", "invalid UTF-8 in path", "B114-truncated-sequence"),
    # Malformed escapes.
    ("/a%", "malformed percent-encoding", "percent-at-end"),
    ("/a%2", "malformed percent-encoding", "percent-one-digit"),
    ("/a%zz", "malformed percent-encoding", "percent-non-hex"),
    ("/a%%34%31", "malformed percent-encoding", "percent-before-escape"),
    # Encoded control characters other than NUL.
    ("/a%0d%0aX:1", "encoded control character", "encoded-crlf"),
    ("/a%7f", "encoded control character", "encoded-del"),
    # Raw control characters, space, non-ASCII, anywhere in the target.
    ("/a b", "control character, space or non-ASCII byte in request target", "raw-space"),
    ("/a\tb", "control character, space or non-ASCII byte in request target", "raw-tab"),
    ("/a\x00", "control character, space or non-ASCII byte in request target", "raw-nul"),
    ("/a\x7f", "control character, space or non-ASCII byte in request target", "raw-del"),
    ("/café", "control character, space or non-ASCII byte in request target", "raw-non-ascii"),
    ("/a?q=\r\nX: 1", "control character, space or non-ASCII byte in request target", "raw-crlf-in-query"),
]


@pytest.mark.parametrize(("raw", "reason"), [row[:2] for row in REFUSED], ids=[row[2] for row in REFUSED])
def test_refused(raw: str, reason: str) -> None:
    """Each unsafe target is refused with its fixed reason."""
    with pytest.raises(PathRejected) as caught:
        canonicalize(raw)
    assert caught.value.reason == reason


def test_reason_never_echoes_the_request() -> None:
    """A refusal's reason holds no byte of the request (error pages never echo it)."""
    with pytest.raises(PathRejected) as caught:
        canonicalize("/<script>%00")
    assert "script" not in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    [
        "/",
        "/admin",
        "/a/b%C3%A9/c;x=1/?q=%2F+a%20b&x=!%21&e&=&dup=1&dup=2",
        "/public/",
        "/a%2Fb",
        "/~user/x-y_z.html",
        "/a:b@c!$&'()*+,=",
    ],
    ids=[
        "root",
        "plain",
        "escapes-params-query",
        "trailing-slash",
        "encoded-slash",
        "unreserved",
        "sub-delims",
    ],
)
def test_canonical_target_is_unchanged(raw: str) -> None:
    """A target that is already canonical reaches the upstream byte-for-byte (DESIGN §7)."""
    assert canonicalize(raw).request_target == raw


def test_request_target_without_query() -> None:
    """Without a "?" the forwarded target is the path alone; with an empty query it keeps "?"."""
    assert Target("/a", None, False).request_target == "/a"
    assert Target("/a", "", False).request_target == "/a?"


def test_path_rejected_is_a_value_error() -> None:
    """PathRejected is a ValueError carrying its reason."""
    error = PathRejected("x")
    assert isinstance(error, ValueError)
    assert error.reason == "x"


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/a/b/../c", "/a/c"), ("/a/./b/.", "/a/b/"), ("/../a", "/a"), ("/a/..", "/"), ("/a/b/../..", "/")],
    ids=["dotdot", "dots", "above-root", "to-root-trailing", "two-up"],
)
def test_remove_dot_segments(path: str, expected: str) -> None:
    """remove_dot_segments follows RFC 3986 §5.2.4 and never climbs above "/"."""
    assert remove_dot_segments(path) == expected


# ---- properties ------------------------------------------------------------------------------

_PIECES = [
    "/", "//", "a", "B", "public", "admin", ".", "..", "%2e", "%2E", "%2f", "%2F", "%41", "%61", "%7e",
    "%25", "%3b", "%3B", ";", "%c3%a9", "%C3%A9", "%c3", "%00", "%0a", "%5c", "\\", "?", "#", "x=1",
    "%", "~", "-", "%EF%BC%8E", "%ef%bc%8f", "%20", "%3F", "%23", "%252e", "2", "e", "f", " ",
]  # fmt: skip
targets = st.lists(st.sampled_from(_PIECES), max_size=14).map(lambda parts: "/" + "".join(parts))
PREFIXES = ("/public", "/admin", "/public/admin", "/a")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _reference(raw: str) -> str:
    """An independent reading of where an upstream lands: decode everything, fold, resolve."""
    path = raw.split("#", 1)[0].split("?", 1)[0]
    resolved = posixpath.normpath(re.sub("/+", "/", unquote(path)))
    return "/" if resolved in ("/", "//", ".") else resolved


@given(targets | st.text(max_size=30).map(lambda s: "/" + s))
@example("/public/%2e%2e/admin")
@example("/a/./b/../../c/")
def test_canonicalize_is_idempotent(raw: str) -> None:
    """Canonicalising a canonical target changes nothing."""
    try:
        target = canonicalize(raw)
    except PathRejected:
        return
    assert canonicalize(target.request_target) == target


@given(targets)
@example("/public//../admin/.")
def test_output_has_no_dot_segments_or_empty_segments(raw: str) -> None:
    """A canonical path starts with "/" and holds no "." or ".." segment and no "//"."""
    try:
        path = canonicalize(raw).path
    except PathRejected:
        return
    assert path.startswith("/")
    assert "//" not in path
    assert "/../" not in path + "/"
    assert "/./" not in path + "/"


@given(targets)
@example("/public/../admin")
@example("/public/%2e%2e/admin")
@example("/public/x%2F..%2F..%2Fadmin")
def test_output_never_escapes_a_prefix(raw: str) -> None:
    """A canonical path is under a prefix only if an upstream that decodes everything lands there too."""
    try:
        target = canonicalize(raw)
    except PathRejected:
        return
    decoded = unquote(target.path)
    reference = _reference(raw)
    for prefix in PREFIXES:
        if target.encoded_slash:
            # A decoded %2F may add segments but never climbs out of a prefix.
            if _under(re.sub("/+", "/", decoded), prefix):
                assert _under(reference, prefix), (prefix, target, reference)
        else:
            assert _under(decoded, prefix) == _under(reference, prefix), (prefix, target, reference)


@given(st.text(max_size=40))
def test_only_path_rejected_escapes(raw: str) -> None:
    """Arbitrary input either canonicalises or raises PathRejected, never another error."""
    with contextlib.suppress(PathRejected):
        canonicalize(raw)


def test_encoded_slash_removed_by_dot_segment_is_not_reported() -> None:
    """`/%2f/..` resolves to `/`: no encoded slash is left, and canonicalising again agrees."""
    target = canonicalize("/%2f/..")
    assert target == Target(path="/", query=None, encoded_slash=False)
    assert canonicalize(target.request_target) == target
