"""Route matching on segment boundaries, the upstream target, and refusal of ambiguous paths."""

from __future__ import annotations

import posixpath
import re
from urllib.parse import unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.config import RouteConfig
from gateway.paths import PathRejected, canonicalize
from gateway.routing import Router, match_route, upstream_target

ROOT = RouteConfig(path="/", upstream="http://127.0.0.1:9000")
PUBLIC = RouteConfig(path="/public", upstream="http://127.0.0.1:9001", auth="public")
PUBLIC_DEEP = RouteConfig(path="/public/admin", upstream="http://127.0.0.1:9002")
ADMIN = RouteConfig(path="/admin", upstream="http://127.0.0.1:9003", roles=("admin",))
CAFE = RouteConfig(path="/café", upstream="http://127.0.0.1:9004")
FILES = RouteConfig(path="/files", upstream="http://127.0.0.1:9005", allow_encoded_slash=True)
ROUTES = (ROOT, PUBLIC, PUBLIC_DEEP, ADMIN, CAFE, FILES)

MATCHES = [
    ("/public", PUBLIC, "exact-prefix"),
    ("/public/", PUBLIC, "prefix-with-slash"),
    ("/public/x", PUBLIC, "below-prefix"),
    # SECURITY B.7 item 110: no match without a segment boundary.
    ("/publicity", ROOT, "B110-publicity"),
    ("/public-admin", ROOT, "B110-public-dash"),
    ("/public.bak", ROOT, "B110-public-dot"),
    ("/public/admin/x", PUBLIC_DEEP, "longest-prefix-wins"),
    ("/public/administrator", PUBLIC, "longest-prefix-needs-boundary-too"),
    ("/", ROOT, "root"),
    ("/anything/else", ROOT, "root-matches-all"),
    # Route paths are written decoded; canonical paths keep escapes (RFC 3986 §6.2.2).
    ("/caf%C3%A9/menu", CAFE, "encoded-non-ascii-matches-decoded-route"),
    ("/caf%c3%a9", CAFE, "lowercase-hex-matches-too"),
    ("/ad%6Din", ADMIN, "any-escape-is-compared-decoded"),
    ("/files%2Fx", ROOT, "encoded-slash-is-not-a-boundary"),
]


@pytest.mark.parametrize(("path", "route"), [m[:2] for m in MATCHES], ids=[m[2] for m in MATCHES])
def test_match_route(path: str, route: RouteConfig) -> None:
    """match_route picks the longest prefix the path equals or continues with "/"."""
    assert match_route(ROUTES, path) is route


@pytest.mark.parametrize(("path", "route"), [m[:2] for m in MATCHES], ids=[m[2] for m in MATCHES])
def test_router_match_agrees(path: str, route: RouteConfig) -> None:
    """Router.match gives the same answer as match_route."""
    assert Router(ROUTES).match(path) is route


def test_no_route() -> None:
    """Without a root route, a path outside every prefix has no route."""
    assert match_route((PUBLIC,), "/publicity") is None
    assert Router((PUBLIC,)).route_for(canonicalize("/other")) is None


def test_equal_prefixes_first_wins() -> None:
    """Among routes with equal prefixes the first configured wins, in both APIs."""
    first = RouteConfig(path="/x", upstream="http://127.0.0.1:1")
    second = RouteConfig(path="/x/", upstream="http://127.0.0.1:2")
    assert match_route((first, second), "/x/y") is first
    assert Router((first, second)).match("/x/y") is first


def test_router_orders_longest_first() -> None:
    """The router keeps its routes sorted by prefix length, longest first."""
    assert Router(ROUTES).routes[0] is PUBLIC_DEEP
    assert Router(ROUTES).routes[-1] is ROOT


UPSTREAM = [
    ("/public/x?a=%2F+b", False, "/public/x?a=%2F+b", "no-strip-keeps-all"),
    ("/public/x?a=%2F+b", True, "/x?a=%2F+b", "strip-keeps-query"),
    ("/public", True, "/", "strip-exact-prefix-gives-root"),
    ("/public/", True, "/", "strip-prefix-slash-gives-root"),
    ("/public/a/b/", True, "/a/b/", "strip-keeps-trailing-slash"),
    ("/public?", True, "/?", "strip-keeps-empty-query"),
]


@pytest.mark.parametrize(
    ("raw", "strip", "expected"), [u[:3] for u in UPSTREAM], ids=[u[3] for u in UPSTREAM]
)
def test_upstream_target(raw: str, strip: bool, expected: str) -> None:
    """strip_prefix removes the route prefix (keeping a leading "/"); the query passes as sent."""
    route = RouteConfig(path="/public", upstream="http://127.0.0.1:9001", strip_prefix=strip)
    assert upstream_target(route, canonicalize(raw)) == expected


def test_upstream_target_strips_encoded_prefix_by_segments() -> None:
    """A prefix matched through escapes is stripped by segments, the rest kept encoded."""
    route = RouteConfig(path="/café", upstream="http://127.0.0.1:9004", strip_prefix=True)
    assert upstream_target(route, canonicalize("/caf%C3%A9/a%20b")) == "/a%20b"


def test_upstream_target_root_route_strips_nothing() -> None:
    """The root route with strip_prefix forwards the whole path."""
    root = RouteConfig(path="/", upstream="http://127.0.0.1:9000", strip_prefix=True)
    assert upstream_target(root, canonicalize("/a/b?c")) == "/a/b?c"


def test_upstream_target_refuses_foreign_route() -> None:
    """upstream_target raises ValueError for a route that does not match the path."""
    with pytest.raises(ValueError, match="does not match"):
        upstream_target(PUBLIC, canonicalize("/publicity"))


def test_route_for_returns_route() -> None:
    """route_for returns the matched route for an unambiguous canonical target."""
    assert Router(ROUTES).route_for(canonicalize("/public/a;jsessionid=1?x")) is PUBLIC


REFUSED = [
    # SECURITY B.7 item 106: encoded slash refused unless the route allows it.
    ("/%2F/admin", "encoded slash in path", "B106-encoded-slash-root-route"),
    ("/public/a%2Fb", "encoded slash in path", "encoded-slash-public-route"),
    # Servlet containers drop `;params`: `/admin;x/secret` is /admin to Tomcat (item 107).
    ("/admin;x/secret", "path is ambiguous between routes", "B107-servlet-params-hide-admin"),
    ("/admin%3Bx/secret", "path is ambiguous between routes", "B107-encoded-semicolon"),
    ("/public;x/y", "path is ambiguous between routes", "params-reach-public"),
    # Case-insensitive upstreams (item 111).
    ("/ADMIN/x", "path is ambiguous between routes", "B111-uppercase-admin"),
    ("/Public/x", "path is ambiguous between routes", "B111-mixed-case-public"),
    # A route that allows %2F still may not be left through one.
    ("/files%2Fx", "encoded slash in path", "encoded-slash-outside-allowing-route"),
]


@pytest.mark.parametrize(("raw", "reason"), [r[:2] for r in REFUSED], ids=[r[2] for r in REFUSED])
def test_route_for_refuses(raw: str, reason: str) -> None:
    """route_for refuses encoded slashes on routes that do not allow them and ambiguous paths."""
    with pytest.raises(PathRejected) as caught:
        Router(ROUTES).route_for(canonicalize(raw))
    assert caught.value.reason == reason


def test_encoded_slash_allowed_by_route() -> None:
    """A route with allow_encoded_slash accepts %2F inside it, forwarded still encoded."""
    target = canonicalize("/files/a%2Fb")
    assert Router(ROUTES).route_for(target) is FILES
    assert upstream_target(FILES, target) == "/files/a%2Fb"


def test_encoded_slash_changing_route_is_ambiguous() -> None:
    """An allowed %2F that would lead to another route once decoded is refused."""
    allow_all = RouteConfig(path="/", upstream="http://127.0.0.1:9000", allow_encoded_slash=True)
    with pytest.raises(PathRejected, match="ambiguous"):
        Router((allow_all, ADMIN)).route_for(canonicalize("/admin%2Fx"))


def test_case_variant_is_fine_without_competing_route() -> None:
    """Case variants are refused only when they would change the route."""
    assert Router((ROOT, PUBLIC)).route_for(canonicalize("/ADMIN/x")) is ROOT


# ---- property: the route decision holds for every common upstream reading ----------------------

_PIECES = [
    "/", "//", "public", "admin", "Admin", ".", "..", "%2e", "%2f", "%2F", ";", "%3b", "x", "%61",
    "%25", "%5c", "?", "#", "y=1", "%00", "%EF%BC%8E",
]  # fmt: skip
targets = st.lists(st.sampled_from(_PIECES), max_size=12).map(lambda parts: "/" + "".join(parts))
PROTECTED_UNDER_PUBLIC = RouteConfig(path="/public/admin", upstream="http://127.0.0.1:9002")
PROPERTY_ROUTES = (ROOT, PUBLIC, ADMIN, PROTECTED_UNDER_PUBLIC)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _upstream_readings(forwarded_path: str) -> list[str]:
    """How different upstreams could resolve the forwarded path: decoded, servlet, case-folded."""
    decoded = unquote(forwarded_path)
    servlet = "/".join(s.split(";", 1)[0] for s in forwarded_path.split("/"))
    readings = []
    for variant in (decoded, unquote(servlet)):
        resolved = posixpath.normpath(re.sub("/+", "/", variant))
        readings += [resolved, resolved.lower()]
    return readings


@given(targets)
@example("/public/../admin")
@example("/public;x/../admin")
@example("/admin;x/y")
@example("/public/x%2F..%2F..%2Fadmin")
@example("/Admin/x")
def test_decision_holds_for_every_upstream_reading(raw: str) -> None:
    """A target routed outside /admin and /public/admin never reaches them under any upstream reading."""
    try:
        target = canonicalize(raw)
        route = Router(PROPERTY_ROUTES).route_for(target)
    except PathRejected:
        return
    if route is None or route in (ADMIN, PROTECTED_UNDER_PUBLIC):
        return
    for reading in _upstream_readings(upstream_target(route, target).split("?", 1)[0]):
        assert not _under(reading, "/admin"), (raw, reading)
        assert not _under(reading, "/public/admin"), (raw, reading)
        if route is PUBLIC:
            assert _under(reading, "/public"), (raw, reading)
