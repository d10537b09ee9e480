"""SECURITY.md B.7 — path normalisation and public-prefix bypass (items 104–114).

Routes: `/public` is public, `/admin` needs the admin role, everything else needs a session.
Every vector is sent anonymously over a raw socket (the test client would resolve dot-segments
before sending). The expected answer is 401 for a path that canonicalises into a protected route
or 400 for an encoding the gateway refuses; never a proxied request.
"""

from __future__ import annotations

import pytest

from tests.security.helpers import Harness, RawResponse


async def get(h: Harness, target: str, method: str = "GET") -> RawResponse:
    return await h.raw(
        f"{method} {target} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n"
        "Connection: close\r\n\r\n".encode()
    )


async def assert_not_proxied(h: Harness, target: str, *statuses: int) -> RawResponse:
    with h.unchanged():
        resp = await get(h, target)
    assert resp.status in statuses, (target, resp.status)
    return resp


async def test_b7_baseline_public_prefix_is_proxied(h: Harness) -> None:
    resp = await get(h, "/public/x")
    assert resp.status == 200
    assert h.recorder.last["path"] == "/public/x"


@pytest.mark.parametrize(
    "target", ["/public/../admin", "/public/../admin/panel", "/public/../app", "/public/x/../../admin"]
)
async def test_b7_104_dot_segments_cannot_escape_public_prefix(h: Harness, target: str) -> None:
    """The decision is taken on the canonical path (`/admin`), which is protected."""
    await assert_not_proxied(h, target, 401)


@pytest.mark.parametrize(
    "target",
    [
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "/public/%2e./admin",
        "/public/%2e/../admin",
        "/public/%2e%2e%2fadmin",
    ],
)
async def test_b7_105_encoded_dot_segments_cannot_escape_public_prefix(h: Harness, target: str) -> None:
    await assert_not_proxied(h, target, 400, 401)


@pytest.mark.parametrize(
    "target", ["/public%2f..%2fadmin", "/public/..%2Fadmin", "/%2F/admin", "/public%2Fx", "/admin%2fpanel"]
)
async def test_b7_106_encoded_slash_is_refused(h: Harness, target: str) -> None:
    await assert_not_proxied(h, target, 400)


@pytest.mark.parametrize(
    "target",
    [
        "/public/%5C..%5Cadmin",
        "/public/..\\admin",
        "/public/x%00.css",
        "/public/secret%23/../../admin",
        "/public/x%3F/../../admin",
        "/public/..;/admin",
        "/public/%2e%2e;/admin",
        "/public/x%0d%0aX-Evil:1",
    ],
    ids=[
        "encoded-backslash",
        "backslash",
        "nul",
        "encoded-hash",
        "encoded-question",
        "tomcat-params",
        "encoded-tomcat",
        "crlf",
    ],
)
async def test_b7_107_other_separators_and_terminators_are_refused(h: Harness, target: str) -> None:
    """(An encoded CR/LF never even matches the catch-all route: aiohttp's router answers 404.)"""
    await assert_not_proxied(h, target, *((400, 404) if "%0d" in target else (400,)))


async def test_b7_107_params_before_dot_segments_stay_protected(h: Harness) -> None:
    """`/public/x;/../../admin` resolves to `/admin` for everyone: protected, not proxied."""
    await assert_not_proxied(h, "/public/x;/../../admin", 400, 401)


@pytest.mark.parametrize(
    "target",
    [
        "/public/%252e%252e/admin",
        "/public/%252E%252E%252Fadmin",
        "/public/%25%32%65%25%32%65/admin",
        "/public/%255c",
    ],
)
async def test_b7_108_double_encoding_is_refused(h: Harness, target: str) -> None:
    await assert_not_proxied(h, target, 400)


@pytest.mark.parametrize(
    "target",
    [
        "//admin",
        "/public//../admin",
        "/./admin",
        "/admin/",
        "/admin/.",
        "///admin//panel",
        "/public/.//../admin",
    ],
)
async def test_b7_109_slash_and_dot_variants_stay_protected(h: Harness, target: str) -> None:
    await assert_not_proxied(h, target, 401)


async def test_b7_109_folded_path_is_what_the_upstream_receives(h: Harness) -> None:
    """Decision and forwarding agree: `/public//a/./b/../c` reaches the upstream as `/public/a/c`."""
    resp = await get(h, "/public//a/./b/../c?q=%2F..")
    assert resp.status == 200
    assert h.recorder.last["path"] == "/public/a/c?q=%2F.."


@pytest.mark.parametrize("target", ["/publicity", "/public-admin", "/public.bak", "/publicx/y", "/Public/x"])
async def test_b7_110_prefix_matches_only_on_a_segment_boundary(h: Harness, target: str) -> None:
    await assert_not_proxied(h, target, 400, 401)


@pytest.mark.parametrize(
    ("target", "statuses"),
    [
        ("/%61dmin", (401,)),
        ("/%41dmin", (400, 401)),
        ("/ADMIN", (400, 401)),
        ("/Admin/panel", (400, 401)),
        ("/public/%EF%BC%8E%EF%BC%8E/admin", (400,)),
        ("/public/%EF%BC%8F..%EF%BC%8Fadmin", (400,)),
    ],
    ids=["encoded-a", "encoded-A", "upper", "mixed-case", "fullwidth-dots", "fullwidth-slash"],
)
async def test_b7_111_encoded_unreserved_case_and_fullwidth_variants(
    h: Harness, target: str, statuses: tuple[int, ...]
) -> None:
    """`%61` is decoded before the decision; a case variant that a case-insensitive upstream would
    route to /admin is refused or judged protected; full-width dots and slashes are refused."""
    await assert_not_proxied(h, target, *statuses)


@pytest.mark.parametrize(("method", "status"), [("TRACE", 405), ("TRACK", 400)])
async def test_b7_112_trace_is_disabled(h: Harness, method: str, status: int) -> None:
    """TRACE would echo cookies back: 405 from the gateway; TRACK is refused by the parser."""
    with h.unchanged():
        resp = await get(h, "/public/x", method)
    assert resp.status == status


@pytest.mark.parametrize("method", ["get", "Get", "G\x00T"])
async def test_b7_112_lowercase_or_odd_method_is_refused(h: Harness, method: str) -> None:
    """Method names are case-sensitive tokens: `get` is not GET (aiohttp threat 1.6)."""
    with h.unchanged():
        resp = await get(h, "/admin/panel", method)
    assert resp.status in (400, 405)


@pytest.mark.parametrize(
    ("method", "status"), [("FOO", 400), ("PROPFIND", 401), ("OPTIONS", 401), ("DELETE", 401)]
)
async def test_b7_112_unknown_and_other_methods_need_auth_on_protected_routes(
    h: Harness, method: str, status: int
) -> None:
    """Routes are not method-scoped: every method the parser knows needs the route's
    authentication (unknown methods like FOO are refused by the parser)."""
    with h.unchanged():
        resp = await get(h, "/admin/panel", method)
    assert resp.status == status


async def test_b7_112_cors_preflight_is_not_an_auth_bypass(h: Harness) -> None:
    """A preflight on a protected route is authenticated like anything else; on a public route it
    passes, without identity headers."""
    preflight = (
        b"OPTIONS {} HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n"
        b"Access-Control-Request-Method: DELETE\r\nConnection: close\r\n\r\n"
    )
    with h.unchanged():
        denied = await h.raw(preflight.replace(b"{}", b"/admin/panel"))
    assert denied.status == 401
    ok = await h.raw(preflight.replace(b"{}", b"/public/x"))
    assert ok.status == 200
    assert not [k for k, _ in h.recorder.last["headers"] if k.lower().startswith("x-auth-")]


@pytest.mark.parametrize(
    "request_line",
    [
        "GET * HTTP/1.1",
        "CONNECT evil.example:443 HTTP/1.1",
        "GET evil.example:443 HTTP/1.1",
        "OPTIONS * HTTP/1.1",
    ],
    ids=["asterisk-get", "connect", "authority-form", "asterisk-options"],
)
async def test_b7_113_odd_request_targets_are_refused(h: Harness, request_line: str) -> None:
    with h.unchanged():
        resp = await h.raw(f"{request_line}\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert resp.status in (400, 404, 405)


async def test_b7_113_fragment_never_changes_the_decision(h: Harness) -> None:
    """A fragment in the target is dropped: `/admin#x` is /admin (401); `/public/x#/../../admin`
    is /public/x and reaches the upstream as exactly that."""
    await assert_not_proxied(h, "/admin#x", 401)
    resp = await get(h, "/public/x#/../../admin")
    assert resp.status == 200
    assert h.recorder.last["path"] == "/public/x"


@pytest.mark.parametrize(
    "target",
    [
        "/public/%c0%ae%c0%ae/admin",
        "/public/%c0%af",
        "/public/%ff",
        "/public/%ed%a0%80",
        "/public/%f4%90%80%80",
        "/public/%c3",
    ],
    ids=["overlong-dots", "overlong-slash", "invalid-byte", "surrogate", "past-max", "truncated"],
)
async def test_b7_114_invalid_utf8_and_overlong_forms_are_refused(h: Harness, target: str) -> None:
    await assert_not_proxied(h, target, 400)
