"""Property-based tests (hypothesis) for the pure parts the checklist leans on.

They extend the properties in tests/unit (canonical form, prefix escape, upstream readings,
`next` under a browser-like resolver, identity spellings) with: the decision and the forwarded
target never disagree, even with `strip_prefix`; `next` is idempotent and survives the login URL
round trip; hop-by-hop and `Connection`-listed headers never survive while everything else does;
duration and size strings round-trip.
"""

from __future__ import annotations

import string
from decimal import Decimal
from urllib.parse import parse_qs, unquote, urlsplit

from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.config import RouteConfig, parse_duration, parse_size
from gateway.config_load import _format_size
from gateway.config_rules import format_duration
from gateway.headers import HOP_BY_HOP, upstream_headers
from gateway.paths import PathRejected, canonicalize, remove_dot_segments
from gateway.redirects import login_url, safe_next
from gateway.routing import Router, upstream_target

# ---- paths: decide and forward on one string ----------------------------------------------------

UP = "http://127.0.0.1:9"
ROUTES = (
    RouteConfig(path="/", upstream=UP),
    RouteConfig(path="/public", upstream=UP, auth="public"),
    RouteConfig(path="/admin", upstream=UP, roles=("admin",)),
    RouteConfig(path="/public/admin", upstream=UP),
    RouteConfig(path="/legacy", upstream=UP, auth="public", strip_prefix=True),
    RouteConfig(path="/files", upstream=UP, allow_encoded_slash=True),
)
ROUTER = Router(ROUTES)
_PIECES = [
    "/",
    "//",
    "public",
    "admin",
    "legacy",
    "files",
    "Admin",
    "PUBLIC",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2f",
    "%2F",
    "%5c",
    "%25",
    "%252e",
    "%00",
    "%0a",
    ";",
    "%3b",
    "x",
    "%61",
    "%7E",
    "~",
    "?",
    "#",
    "=",
    "&",
    "y=1",
    "%EF%BC%8E",
    "%c0%ae",
    "%c3%a9",
    "é",
    " ",
    "\\",
    "%",
    "%3F",
    "%23",
]
targets = st.lists(st.sampled_from(_PIECES), max_size=14).map(lambda parts: "/" + "".join(parts)) | st.text(
    alphabet=string.printable, max_size=30
).map(lambda s: "/" + s)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


@settings(max_examples=400)
@given(targets)
@example("/public/../admin")
@example("/legacy/../admin")
@example("/legacy/x/../../admin")
@example("/files/a%2F..%2F..%2Fadmin")
@example("/public/admin/../x")
def test_decision_and_forwarded_target_never_disagree(raw: str) -> None:
    """Whatever the client sends, the target forwarded upstream is canonical already (an upstream
    that normalises it again finds nothing to change), and for routes that forward the path as is,
    it is exactly the target the decision was made on, so it routes to the same route again."""
    try:
        target = canonicalize(raw)
        route = ROUTER.route_for(target)
    except PathRejected:
        return
    if route is None:
        return
    forwarded = upstream_target(route, target)
    path = forwarded.split("?", 1)[0]
    assert path.startswith("/") and "//" not in path
    assert remove_dot_segments(path) == path
    assert canonicalize(forwarded).request_target == forwarded
    if not route.strip_prefix:
        assert forwarded == target.request_target
        assert ROUTER.route_for(canonicalize(forwarded)) is route


@settings(max_examples=400)
@given(targets)
@example("/legacy/%2e%2e/admin")
@example("/legacy/..")
def test_no_forwarded_path_escapes_its_route_prefix(raw: str) -> None:
    """The path the upstream gets is inside the route's prefix (or, with strip_prefix, inside the
    upstream's root); decoding it once more never climbs out of it."""
    try:
        target = canonicalize(raw)
        route = ROUTER.route_for(target)
    except PathRejected:
        return
    if route is None:
        return
    decoded = unquote(upstream_target(route, target).split("?", 1)[0])
    if not route.strip_prefix:
        assert _under(unquote(target.path), route.path.rstrip("/")) or route.path == "/"
    assert "/../" not in decoded + "/" and not decoded.endswith("/..")
    if target.encoded_slash is False:
        assert "/./" not in decoded + "/"


# ---- next: never leaves the origin --------------------------------------------------------------

_NEXT_PIECES = [
    "/",
    "//",
    "\\",
    "%2F",
    "%5C",
    ".",
    "..",
    "evil.example",
    "http:",
    "https:",
    "javascript:",
    "@",
    "?",
    "#",
    "\t",
    "\n",
    "\r",
    " ",
    "%09",
    "%0a",
    "%20",
    "a",
    "%25",
    "%",
    "\x00",
    "\u3000",
    "\x0b",
    "\\\\",
    "%2e",
    ":",
    "é",
]
next_values = st.lists(st.sampled_from(_NEXT_PIECES), max_size=8).map("".join) | st.text(max_size=24)


def _as_browser_reads(value: str) -> tuple[str, str]:
    """(scheme, authority) a browser resolving `value` against the gateway page would use
    (WHATWG URL: strip C0 and space at the ends, drop tab/CR/LF, read "\\" as "/")."""
    cleaned = value.strip("".join(chr(c) for c in range(0x21)))
    cleaned = "".join(ch for ch in cleaned if ch not in "\t\r\n").replace("\\", "/")
    if cleaned.startswith("//"):
        return "?", cleaned[2:].split("/", 1)[0]
    parts = urlsplit(cleaned)
    if parts.scheme and len(parts.scheme) > 1:
        return parts.scheme, parts.netloc
    return "https", "gw.example"


@settings(max_examples=500)
@given(next_values)
@example("/\\evil.example")
@example("/%2F%2Fevil.example")
@example("/\t/evil.example")
@example("/./\\evil.com")
def test_next_never_leaves_the_origin_and_is_idempotent(value: str) -> None:
    """`safe_next` returns the value or "/"; the result is printable ASCII starting with exactly
    one "/", stays on the gateway's origin as a browser reads it (before and after one decode),
    checking it twice changes nothing, and it survives the login URL round trip."""
    result = safe_next(value)
    assert result in (value, "/")
    assert result.isascii() and result.isprintable()
    assert result.startswith("/") and not result.startswith("//")
    for candidate in (result, unquote(result)):
        assert _as_browser_reads(candidate) == ("https", "gw.example"), candidate
    assert safe_next(result) == result
    url = login_url("/auth", value)
    assert not urlsplit(url).netloc and url.startswith("/auth/login?next=")
    assert parse_qs(urlsplit(url).query)["next"] == [result]


# ---- header hygiene ---------------------------------------------------------------------------

IDENTITY = ("X-Auth-User-Id", "X-Auth-User-Email", "X-Auth-User-Roles", "X-Auth-Session-Id")


def header_key(name: str) -> str:
    """How CGI, WSGI and PHP see a header name (independent of the gateway's own helper)."""
    return name.lower().replace("_", "-")


_NAME_CHARS = string.ascii_letters + string.digits + "-_"
_NAMES = [
    *IDENTITY,
    "Connection",
    "Keep-Alive",
    "TE",
    "Upgrade",
    "Trailer",
    "Proxy-Authorization",
    "X-Forwarded-For",
    "X-Real-IP",
    "Forwarded",
    "X-Original-URL",
    "Host",
    "Content-Length",
    "Expect",
    "Cookie",
    "Accept",
    "X-App",
    "x_auth_user_id",
    "X_AUTH_USER_ROLES",
    "Authorization",
]
header_names = st.sampled_from(_NAMES) | st.text(alphabet=_NAME_CHARS, min_size=1, max_size=12)
header_values = st.text(alphabet=string.ascii_letters + string.digits + " ,;=-_.", max_size=20)


@settings(max_examples=400)
@given(
    st.lists(st.tuples(header_names, header_values), max_size=10),
    st.lists(header_names, max_size=4),
    st.booleans(),
)
def test_header_hygiene(pairs: list[tuple[str, str]], listed: list[str], authenticated: bool) -> None:
    """Whatever the client sends: no identity spelling survives except the gateway's own values;
    no hop-by-hop or Connection-listed header survives; X-Forwarded-* are the gateway's; the
    gateway's cookies never go upstream; every other header passes untouched."""
    incoming: CIMultiDict[str] = CIMultiDict(pairs)
    if listed:
        incoming.add("Connection", ", ".join(listed))
    identity = (
        dict(zip(IDENTITY, ("u1", "bob@example.com", "user", "s1"), strict=True)) if authenticated else None
    )
    out = upstream_headers(
        incoming,
        identity=identity,
        identity_names=IDENTITY,
        gateway_cookies=("gw_access", "gw_refresh"),
        strip_authorization=False,
        client_ip="203.0.113.1",
        peer_trusted=False,
        public_scheme="https",
        public_host="gw.example",
    )
    own = {header_key(n) for n in IDENTITY}
    survivors = [(header_key(k), v) for k, v in out.items() if header_key(k) in own]
    assert survivors == ([(header_key(k), v) for k, v in identity.items()] if identity else [])
    listed_keys = {
        header_key(n.strip()) for v in incoming.getall("Connection", ()) for n in v.split(",") if n.strip()
    }
    for name, value in out.items():
        key = header_key(name)
        assert key not in HOP_BY_HOP
        if key not in own and not key.startswith("x-forwarded-"):
            assert key not in listed_keys
        if key == "cookie":
            assert "gw_access" not in value and "gw_refresh" not in value
    assert out.getall("X-Forwarded-For") == ["203.0.113.1"]
    assert out.getall("X-Forwarded-Host") == ["gw.example"]
    dropped = {
        "host",
        "content-length",
        "expect",
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "cookie",
    }
    for name, value in incoming.items():
        key = header_key(name)
        if (
            key in own
            or key in HOP_BY_HOP
            or key in listed_keys
            or key in dropped
            or key.startswith("x-forwarded-")
        ):
            continue
        assert (name, value) in list(out.items()), name


# ---- durations and sizes ------------------------------------------------------------------------

_DURATION_UNITS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 10**6, "GB": 10**9}
numbers = st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False)


@given(numbers, st.sampled_from(sorted(_DURATION_UNITS)))
def test_duration_parses_to_exact_seconds_and_round_trips(number: Decimal, unit: str) -> None:
    text = f"{number.normalize():f}{unit}"
    seconds = parse_duration(text)
    assert seconds == float(number * _DURATION_UNITS[unit])
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**7), st.sampled_from(sorted(_SIZE_UNITS)))
def test_size_parses_to_exact_bytes_and_round_trips(number: int, unit: str) -> None:
    size = parse_size(f"{number}{unit}")
    assert size == number * _SIZE_UNITS[unit]
    assert parse_size(_format_size(size)) == size


@given(st.text(max_size=12))
@example("-5m")
@example("5")
@example("1e3s")
@example("5 m")
@example("0x10s")
def test_anything_else_is_a_value_error(text: str) -> None:
    """Only `<number><unit>` parses; everything else is a ValueError (never another exception,
    never a negative or a silently guessed unit)."""
    for parse in (parse_duration, parse_size):
        try:
            value = parse(text)
        except ValueError:
            continue
        assert value >= 0
        assert text[:1].isdigit()
