"""One canonical request path: the gateway decides and forwards on the same string.

A proxy that authorises one reading of a path while the upstream resolves another is bypassed
(`/public/../admin`, `/public/%2e%2e/admin`, `/public/..;/admin`): OWASP ASVS 4.0.3 V13.1.1,
SECURITY.md R-PX-10 and B.7. `canonicalize` therefore refuses every encoding that upstreams read
differently and turns the rest into one form (RFC 3986 §6.2.2): unreserved escapes decoded,
dot-segments removed (§5.2.4), runs of "/" folded, every other escape kept exactly as sent. The
query string is never touched (DESIGN §7). Pure string work, no aiohttp objects.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["PathRejected", "Target", "canonicalize", "remove_dot_segments"]

# RFC 3986 §2.3: escapes of these are equivalent to the characters themselves (§6.2.2.2).
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_HEX = frozenset(string.hexdigits)
_ENCODED_SLASH = re.compile("%2[fF]")
_SLASH_RUN = re.compile("/{2,}")
_PRINTABLE_ASCII = re.compile("[!-~]*")
# Characters an upstream's Unicode normalisation (NFKC: full-width "．", "／", "＼", …) must not
# be able to create inside a segment.
_NFKC_DANGEROUS = frozenset("/\\%?#")


class PathRejected(ValueError):
    """The request target cannot be forwarded safely; the caller answers 400.

    `reason` is a fixed phrase that never contains request bytes, so it is safe to log or show
    (SECURITY R-PX-16: error pages never echo the request).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Target:
    """A canonical origin-form request target."""

    path: str  # canonical, still percent-encoded, always starts with "/"
    query: str | None  # byte-for-byte as sent; None when the target had no "?"
    encoded_slash: bool  # the path holds %2F/%2f (kept encoded, part of its segment)

    @property
    def request_target(self) -> str:
        """The path and query to forward: `path + ("?" + query if query is not None else "")`."""
        return self.path if self.query is None else f"{self.path}?{self.query}"


def canonicalize(raw_target: str) -> Target:
    """Canonicalise `request.raw_path`; raise `PathRejected` for anything unsafe to forward.

    A target that is already canonical comes back byte-for-byte identical, and the function is
    idempotent: `canonicalize(t.request_target) == t`.
    """
    # RFC 9112 §3.2: only origin-form is acceptable for a proxied request; absolute-form
    # (`GET http://evil/x`) would make aiohttp take host and path from the target (AIOHTTP §1.3).
    if not raw_target.startswith("/"):
        raise PathRejected("request target is not origin-form")
    if not _PRINTABLE_ASCII.fullmatch(raw_target):
        # RFC 3986 §2 / RFC 9112 §3.2: a target is printable US-ASCII; anything else would be
        # forwarded verbatim by `URL(..., encoded=True)`.
        raise PathRejected("control character, space or non-ASCII byte in request target")
    # A fragment is never part of a request (RFC 9112 §3.2); ignoring it cannot change the path.
    without_fragment = raw_target.split("#", 1)[0]
    raw_path, question, query = without_fragment.partition("?")
    path, encoded_slash = _decode_unreserved(raw_path)
    path = _SLASH_RUN.sub("/", path)
    _check_segments(path)
    path = remove_dot_segments(path)
    # Judged on the result: a ".." may have removed the segment holding the encoded slash, and
    # canonicalising the output again must give the same Target (idempotence).
    encoded_slash = encoded_slash and ("%2f" in path or "%2F" in path)
    return Target(path=path, query=query if question else None, encoded_slash=encoded_slash)


def _decode_unreserved(raw_path: str) -> tuple[str, bool]:
    """Decode unreserved escapes, keep the others as sent, refuse dangerous ones.

    Returns the path and whether it holds an encoded slash.
    """
    if "\\" in raw_path:  # IIS and others treat "\" as "/" (SECURITY B.7 item 107)
        raise PathRejected("backslash in path")
    if "%" not in raw_path:
        return raw_path, False  # printable ASCII without escapes: nothing to decode
    out: list[str] = []
    octets = bytearray()  # the path after one full percent-decode, for the UTF-8 check
    from_percent25: list[int] = []  # positions in `octets` of a "%" that came from "%25"
    encoded_slash = False
    i, n = 0, len(raw_path)
    while i < n:
        ch = raw_path[i]
        if ch != "%":
            out.append(ch)
            octets.append(ord(ch))
            i += 1
            continue
        hex_digits = raw_path[i + 1 : i + 3]
        if len(hex_digits) != 2 or not _HEX.issuperset(hex_digits):
            raise PathRejected("malformed percent-encoding")
        value = int(hex_digits, 16)
        decoded = chr(value)
        if value == 0:
            raise PathRejected("encoded NUL")
        if value < 0x20 or value == 0x7F:
            raise PathRejected("encoded control character")
        if decoded == "\\":
            raise PathRejected("encoded backslash")
        if decoded in "#?":
            # An upstream that decodes before splitting cuts the path there (oauth2-proxy
            # GHSA-pxq7-h93f-9jrg: `/public/secret%23/endpoint`).
            raise PathRejected("encoded '#' or '?' in path")
        if decoded == "%":
            from_percent25.append(len(octets))
        if decoded == "/":
            encoded_slash = True
        out.append(decoded if decoded in _UNRESERVED else raw_path[i : i + 3])
        octets.append(value)
        i += 3
    # Double encoding: one decode must not produce a new escape (`%252e` -> `%2e`), checked on
    # the decoded octets so that `%25%32%65` is caught too (SECURITY B.7 item 108).
    for pos in from_percent25:
        following = octets[pos + 1 : pos + 3].decode("latin-1")
        if len(following) == 2 and _HEX.issuperset(following):
            raise PathRejected("double percent-encoding")
    try:
        # RFC 3629 §3, §10: strict decoding refuses overlong forms (`%c0%ae`), surrogates and
        # code points past U+10FFFF.
        octets.decode("utf-8")
    except UnicodeDecodeError:
        raise PathRejected("invalid UTF-8 in path") from None
    return "".join(out), encoded_slash


def _check_segments(path: str) -> None:
    """Refuse segments that some upstream would turn into a dot-segment or a separator."""
    for segment in path.split("/"):
        if "." not in segment and "%" not in segment:
            continue  # fast path: plain segments cannot hide a dot-segment
        pieces = _ENCODED_SLASH.split(segment)
        for piece in pieces:
            decoded = unquote(piece, errors="strict")
            if _is_dot_segment(decoded):
                if ";" in decoded:
                    # Servlet containers drop `;params` before resolving: `/public/..;/admin`
                    # is `/admin` to Tomcat (SECURITY B.7 item 107).
                    raise PathRejected("dot-segment with parameters")
                if len(pieces) > 1:
                    # `..%2F` becomes a real ".." for an upstream that decodes %2F.
                    raise PathRejected("dot-segment next to an encoded slash")
            if not decoded.isascii():
                folded = unicodedata.normalize("NFKC", decoded)
                if folded != decoded and (_is_dot_segment(folded) or not _NFKC_DANGEROUS.isdisjoint(folded)):
                    # Full-width "．．" or "／" become ".." or "/" for an upstream that applies
                    # NFKC (SECURITY B.7 item 111).
                    raise PathRejected("Unicode look-alike of a dot-segment or separator")


def _is_dot_segment(decoded: str) -> bool:
    return decoded.split(";", 1)[0] in (".", "..")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path with no empty segments: ".." never climbs above "/".

    A path ending in "." or ".." keeps its trailing "/" (`/a/b/..` -> `/a/`), as the RFC does.
    """
    segments = path.split("/")[1:]
    kept: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            if segment == ".." and kept:
                kept.pop()
            if index == last:
                kept.append("")
            continue
        kept.append(segment)
    return "/" + "/".join(kept)
