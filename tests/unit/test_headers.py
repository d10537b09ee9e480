"""Header hygiene: identity spoofing, hop-by-hop, forwarding, cookies, framing (SECURITY B.5, B.6)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.config import HeadersConfig
from gateway.headers import (
    downstream_headers,
    framing_problem,
    header_key,
    is_gateway_cookie,
    upstream_headers,
)

IDENTITY_NAMES = HeadersConfig().names()
ROUTE_ONLY_NAME = "X-Team-User"  # a [routes.headers] name of another route
ALL_NAMES = (*IDENTITY_NAMES, ROUTE_ONLY_NAME)
GATEWAY_COOKIES = ("__Host-gw_access", "__Host-gw_refresh")
BOB = {"X-Auth-User-Id": "42", "X-Auth-User-Email": "bob@example.com", "X-Auth-User-Roles": "user"}


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def _up(*pairs: tuple[str, str], **overrides: Any) -> CIMultiDict[str]:
    arguments: dict[str, Any] = {
        "identity": None,
        "identity_names": ALL_NAMES,
        "gateway_cookies": GATEWAY_COOKIES,
        "strip_authorization": True,
        "client_ip": "203.0.113.7",
        "peer_trusted": False,
        "public_scheme": "https",
        "public_host": "gw.example",
    }
    arguments.update(overrides)
    return upstream_headers(_headers(*pairs), **arguments)


SPELLINGS = [
    "X-Auth-User-Id",
    "x-auth-user-id",
    "X_Auth_User_Id",
    "x_auth_user_id",
    "X-AUTH-USER-ID",
    "X-Auth_User-Id",
    "x_AUTH-user_ID",
]


@pytest.mark.parametrize("spelling", SPELLINGS, ids=SPELLINGS)
def test_identity_spelling_removed_on_public_route(spelling: str) -> None:
    """Each spelling of an identity name is removed even when no identity is added (items 79, 80)."""
    out = _up((spelling, "admin"), ("X-App", "kept"))
    assert all(header_key(name) != "x-auth-user-id" for name in out)
    assert out["X-App"] == "kept"


@pytest.mark.parametrize("spelling", SPELLINGS, ids=SPELLINGS)
def test_identity_spelling_replaced_when_authenticated(spelling: str) -> None:
    """Authenticated: the upstream sees exactly the gateway's value whatever the client sent (item 78)."""
    out = _up((spelling, "admin"), identity=BOB)
    assert [(k, v) for k, v in out.items() if header_key(k) == "x-auth-user-id"] == [("X-Auth-User-Id", "42")]


def test_all_spellings_and_duplicates_in_one_request() -> None:
    """Every spelling and duplicated line at once leaves exactly one injected value (items 80, 81)."""
    out = _up(*((s, "admin") for s in SPELLINGS), ("X-Auth-User-Id", "b"), identity=BOB)
    assert out.getall("X-Auth-User-Id") == ["42"]
    assert len(out) == len(BOB) + 3  # identity + X-Forwarded-For/-Proto/-Host


def test_other_routes_identity_names_removed() -> None:
    """Identity names configured only on another route are removed on this one too (DESIGN §7)."""
    out = _up(("X_Team_User", "admin"), ("x-team-user", "admin"), identity=BOB)
    assert all(header_key(name) != "x-team-user" for name in out)


def test_identity_keys_removed_even_if_not_listed() -> None:
    """A name in identity but missing from identity_names is still stripped before being set."""
    out = _up(("X_Extra", "spoof"), identity={"X-Extra": "v"}, identity_names=())
    assert list(out.items())[-1] == ("X-Extra", "v")
    assert "X_Extra" not in out


CONNECTION_LISTED = [
    ("close, X-Auth-User-Id", "X-Auth-User-Id", "identity-named"),
    ("X-Auth-User-Email, Cookie, Authorization", "X-Auth-User-Email", "several-options"),
    ("x_auth_user_id", "X-Auth-User-Id", "underscore-option"),
]


@pytest.mark.parametrize(
    ("connection", "name"), [c[:2] for c in CONNECTION_LISTED], ids=[c[2] for c in CONNECTION_LISTED]
)
def test_connection_cannot_remove_injected_identity(connection: str, name: str) -> None:
    """`Connection` naming an identity header cannot strip what the gateway adds (item 83, R-PX-5)."""
    out = _up(("Connection", connection), (name, "admin"), identity=BOB)
    assert out.getall(name) == [BOB[name]]
    assert "Connection" not in out


def test_connection_listed_headers_removed() -> None:
    """Headers named in any Connection header are removed, in any case (RFC 9110 §7.6.1)."""
    out = _up(
        ("Connection", "close, X-Secret"),
        ("Connection", "x-other"),
        ("x-secret", "1"),
        ("X-Other", "2"),
        ("X-Kept", "3"),
    )
    assert "X-Secret" not in out
    assert "X-Other" not in out
    assert out["X-Kept"] == "3"


HOP_BY_HOP = [
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "TE",
    "Trailer",
    "Trailers",
    "Transfer-Encoding",
    "Upgrade",
]
GATEWAY_OWNED = [
    "Expect",
    "Host",
    "Content-Length",
    "Forwarded",
    "X-Real-IP",
    "X-Original-URL",
    "X-Rewrite-URL",
]


@pytest.mark.parametrize("name", HOP_BY_HOP + GATEWAY_OWNED, ids=HOP_BY_HOP + GATEWAY_OWNED)
def test_hop_by_hop_and_owned_headers_not_forwarded(name: str) -> None:
    """Hop-by-hop, framing, Host and forwarding/routing headers never go upstream (items 84–87, 102)."""
    out = _up((name, "x"), (name.replace("-", "_"), "y"))
    assert all(header_key(k) != header_key(name) for k in out)


@pytest.mark.parametrize(
    "name",
    ["X-Forwarded-Uri", "X-Forwarded-Prefix", "X-Forwarded-Port", "X_Forwarded_Host"],
    ids=["uri", "prefix", "port", "underscore-host"],
)
def test_any_x_forwarded_header_is_replaced(name: str) -> None:
    """Every client X-Forwarded-* header is removed; only the gateway's three remain (items 86, 87)."""
    out = _up((name, "/admin"))
    assert [k for k in out if header_key(k).startswith("x-forwarded-")] == [
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
    ]


def test_forwarded_for_untrusted_peer() -> None:
    """From an untrusted peer the forged chain is dropped and XFF is the peer alone (item 85)."""
    out = _up(("X-Forwarded-For", "127.0.0.1"), ("X-Real-IP", "10.0.0.1"), ("Forwarded", "for=1.2.3.4"))
    assert out.getall("X-Forwarded-For") == ["203.0.113.7"]
    assert "Forwarded" not in out
    assert "X-Real-IP" not in out


def test_forwarded_for_trusted_peer_appends() -> None:
    """From a trusted proxy the incoming chain (all lines) is kept and the peer appended (R-PX-6)."""
    out = _up(
        ("X-Forwarded-For", "198.51.100.1, 10.0.0.2"), ("X-Forwarded-For", "10.0.0.3"), peer_trusted=True
    )
    assert out.getall("X-Forwarded-For") == ["198.51.100.1, 10.0.0.2, 10.0.0.3, 203.0.113.7"]


def test_forwarded_for_trusted_peer_without_chain() -> None:
    """A trusted peer that sent no XFF yields the peer alone, no leading comma."""
    assert _up(peer_trusted=True)["X-Forwarded-For"] == "203.0.113.7"


def test_forwarded_proto_and_host_from_configuration() -> None:
    """X-Forwarded-Proto/-Host come from the public URL, never from the client (item 86)."""
    out = _up(("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Proto", "http"), ("Host", "evil.example"))
    assert out.getall("X-Forwarded-Proto") == ["https"]
    assert out.getall("X-Forwarded-Host") == ["gw.example"]


COOKIES = [
    (["__Host-gw_access=a; app=1; __Host-gw_refresh=r; other=2"], "app=1; other=2", "prefixed-removed"),
    (["gw_access=a; app=1"], "app=1", "unprefixed-removed"),
    (["app=1", "__Host-gw_refresh=r", "b=2"], "app=1; b=2", "several-headers-joined"),
    (['z=1;y=2 ;  x="q"'], 'z=1; y=2; x="q"', "order-and-values-kept"),
    (["__host-gw_access=a; __Secure-gw_refresh=b; gw_accessx=c"], "gw_accessx=c", "prefix-case-and-secure"),
]


@pytest.mark.parametrize(("cookies", "expected"), [c[:2] for c in COOKIES], ids=[c[2] for c in COOKIES])
def test_gateway_cookies_removed_app_cookies_kept(cookies: list[str], expected: str) -> None:
    """Gateway cookies never reach the upstream; the app's own cookies keep their order (item 74)."""
    out = _up(*(("Cookie", c) for c in cookies))
    assert out.getall("Cookie") == [expected]


def test_cookie_header_dropped_when_only_gateway_cookies() -> None:
    """When nothing but gateway cookies was sent, no Cookie header goes upstream (item 74)."""
    assert "Cookie" not in _up(("Cookie", "__Host-gw_access=a; __Host-gw_refresh=b"), ("Cookie", " ; "))


def test_plain_gateway_names_strip_prefixed_spelling_too() -> None:
    """Unprefixed gateway names (Secure off) strip both spellings as well."""
    out = _up(("Cookie", "gw_access=a; __Host-gw_access=b; app=1"), gateway_cookies=("gw_access",))
    assert out["Cookie"] == "app=1"


@pytest.mark.parametrize("strip", [True, False], ids=["stripped", "kept"])
def test_authorization(strip: bool) -> None:
    """Authorization is dropped when the gateway validated it and kept when a route opts in (item 91)."""
    out = _up(("Authorization", "Bearer t"), strip_authorization=strip)
    assert ("Authorization" in out) is not strip


@pytest.mark.parametrize(
    "value",
    ["bob\r\nX-Admin: 1", "bob\n", "bob\r", "bob\x00", "bob\x1b[31m", "bob\tx", "bob\x7f", "bob\x85"],
    ids=["crlf", "lf", "cr", "nul", "escape", "tab", "del", "c1-next-line"],
)
def test_identity_value_with_control_character_raises(value: str) -> None:
    """An identity value holding a control character raises ValueError (RFC 9110 §5.5, item 82)."""
    with pytest.raises(ValueError, match="control character"):
        _up(identity={"X-Auth-User-Email": value})


@pytest.mark.parametrize(
    "name", ["X Auth", "X-Auth:", "", "X-Auth\r\n"], ids=["space", "colon", "empty", "crlf"]
)
def test_identity_name_must_be_token(name: str) -> None:
    """An identity header name that is not an HTTP token raises ValueError."""
    with pytest.raises(ValueError, match="not an HTTP token"):
        _up(identity={name: "v"})


def test_gateway_built_values_are_checked() -> None:
    """client_ip and the public host are checked for control characters like identity values."""
    with pytest.raises(ValueError):
        _up(client_ip="1.2.3.4\r\nX: 1")
    with pytest.raises(ValueError):
        _up(public_host="gw.example\n")


def test_identity_added_last_and_order_kept() -> None:
    """Other headers keep their order and values; identity headers come last."""
    out = _up(("Accept", "text/html"), ("X-App", "1"), ("X-App", "2"), identity=BOB)
    assert list(out.items())[:3] == [("Accept", "text/html"), ("X-App", "1"), ("X-App", "2")]
    assert list(out.items())[-3:] == list(BOB.items())


def test_identity_set_with_replace_semantics() -> None:
    """Identity keys differing only in case leave one header, the last value (replace, not add)."""
    out = _up(identity={"X-Auth-User-Id": "1", "x-auth-user-id": "2"})
    assert out.getall("X-Auth-User-Id") == ["2"]


def test_non_identity_underscore_headers_kept() -> None:
    """Underscore headers that are not gateway-owned pass (only gateway names are normalised)."""
    assert _up(("X_App_Flag", "1"))["X_App_Flag"] == "1"


# ---- downstream -----------------------------------------------------------------------------


def test_downstream_keeps_every_set_cookie() -> None:
    """Several Set-Cookie headers from the upstream all reach the client, in order (AIOHTTP §1.9)."""
    up = _headers(
        ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly"), ("Set-Cookie", "a=3; Path=/x")
    )
    assert downstream_headers(up, gateway_cookies=GATEWAY_COOKIES) == [
        ("Set-Cookie", "a=1; Path=/"),
        ("Set-Cookie", "b=2; HttpOnly"),
        ("Set-Cookie", "a=3; Path=/x"),
    ]


@pytest.mark.parametrize(
    "set_cookie",
    ["__Host-gw_access=evil; Path=/; Secure", "gw_refresh=x", "__secure-gw_access=y", " gw_access =z"],
    ids=["prefixed", "unprefixed", "secure-prefix-any-case", "padded-name"],
)
def test_downstream_drops_gateway_set_cookie(set_cookie: str) -> None:
    """An upstream Set-Cookie naming a gateway cookie is dropped; others pass (item 75)."""
    up = _headers(("Set-Cookie", set_cookie), ("Set-Cookie", "app=1"))
    assert downstream_headers(up, gateway_cookies=GATEWAY_COOKIES) == [("Set-Cookie", "app=1")]


def test_downstream_drops_hop_by_hop_and_connection_listed() -> None:
    """Hop-by-hop and Connection-listed response headers are dropped (RFC 9110 §7.6.1, item 84)."""
    up = _headers(
        ("Connection", "keep-alive, X-Internal"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Proxy-Authenticate", "Basic"),
        ("Trailer", "X-Checksum"),
        ("X-Internal", "secret"),
        ("Content-Type", "text/html"),
    )
    assert downstream_headers(up, gateway_cookies=GATEWAY_COOKIES) == [("Content-Type", "text/html")]


def test_downstream_keeps_body_framing_as_sent() -> None:
    """Content-Length and Content-Encoding pass untouched: the body is relayed as is (DESIGN §7)."""
    up = _headers(("Content-Encoding", "gzip"), ("Content-Length", "52"), ("Vary", "Accept-Encoding"))
    assert downstream_headers(up, gateway_cookies=GATEWAY_COOKIES) == list(up.items())


# ---- framing --------------------------------------------------------------------------------

FRAMING = [
    ([("Authorization", "Bearer a"), ("Authorization", "Bearer b")], "duplicate Authorization", "two-auth"),
    ([("Authorization", "Bearer a"), ("authorization", "Bearer a")], "duplicate Authorization", "same-value"),
    (
        [("Cookie", "__Host-gw_refresh=A; __Host-gw_refresh=B")],
        "duplicate cookie __Host-gw_refresh",
        "one-line",
    ),
    (
        [("Cookie", "__Host-gw_access=A"), ("Cookie", "x=1; __Host-gw_access=B")],
        "duplicate cookie __Host-gw_access",
        "two-lines",
    ),
    ([("Cookie", "__Host-gw_access=A; __Host-gw_refresh=B; app=1; app=2")], None, "app-duplicates-fine"),
    (
        [("Cookie", "__Host-gw_access=A; gw_access=B; __host-gw_access=C")],
        None,
        "look-alikes-are-other-names",
    ),
    ([("Authorization", "Bearer a")], None, "single-auth"),
    ([], None, "nothing"),
]


@pytest.mark.parametrize(("pairs", "problem"), [f[:2] for f in FRAMING], ids=[f[2] for f in FRAMING])
def test_framing_problem(pairs: list[tuple[str, str]], problem: str | None) -> None:
    """Duplicate Authorization or a duplicated gateway cookie is reported; the caller answers 400."""
    assert framing_problem(_headers(*pairs), gateway_cookies=GATEWAY_COOKIES) == problem


@pytest.mark.parametrize(
    ("name", "expected"),
    [("gw_access", True), ("__Host-gw_access", True), ("__HOST-gw_refresh", True), ("GW_ACCESS", False)],
    ids=["plain", "host-prefix", "prefix-case", "name-case-differs"],
)
def test_is_gateway_cookie(name: str, expected: bool) -> None:
    """Cookie prefixes match in any case (RFC 6265bis §4.1.3); the name itself exactly."""
    assert is_gateway_cookie(name, GATEWAY_COOKIES) is expected


# ---- property -------------------------------------------------------------------------------


@st.composite
def spellings(draw: st.DrawFn) -> str:
    """A random spelling of a random identity name: any case, "-" and "_" mixed."""
    name = draw(st.sampled_from(ALL_NAMES))
    flips = draw(st.lists(st.booleans(), min_size=2 * len(name), max_size=2 * len(name)))
    out = []
    for i, ch in enumerate(name):
        ch = ch.swapcase() if flips[2 * i] else ch
        if ch in "-_" and flips[2 * i + 1]:
            ch = "_" if ch == "-" else "-"
        out.append(ch)
    return "".join(out)


@given(st.lists(st.tuples(spellings(), st.sampled_from(["admin", "root", ""])), max_size=8), st.booleans())
def test_no_identity_spelling_survives(spoofed: list[tuple[str, str]], authenticated: bool) -> None:
    """Whatever spellings a client sends, only the gateway's identity values reach the upstream."""
    out = _up(*spoofed, identity=BOB if authenticated else None)
    own = {header_key(n) for n in ALL_NAMES}
    survivors = [(header_key(k), v) for k, v in out.items() if header_key(k) in own]
    expected = [(header_key(k), v) for k, v in BOB.items()] if authenticated else []
    assert survivors == expected
