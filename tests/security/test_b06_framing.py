"""SECURITY.md B.6 — framing and request smuggling (items 93–103).

Raw bytes over a socket, aimed at a *public* route so that anything the parser let through would
be forwarded: every vector must get 400, the connection closed, and nothing upstream. These pin
what aiohttp's llhttp parser does today, so a parser or version change that loosens it fails here.
"""

from __future__ import annotations

import re
from importlib.metadata import version

import pytest
from aiohttp import http_parser

from gateway.server import check_runtime
from tests.security.conftest import HarnessFactory, RawUpstream
from tests.security.helpers import Harness

POST = b"POST /public/x HTTP/1.1\r\nHost: x\r\n"


async def assert_refused(h: Harness, data: bytes) -> None:
    """400, connection closed, nothing forwarded, nothing written, no argon2."""
    with h.unchanged():
        resp = await h.raw(data)
    assert resp.status == 400, resp.data[:200]
    assert resp.closed


async def test_b6_baseline_a_well_formed_post_is_forwarded(h: Harness) -> None:
    """Baseline: the same route accepts a well-formed request, so the refusals below mean something."""
    resp = await h.raw(POST + b"Content-Length: 4\r\nConnection: close\r\n\r\nabcd")
    assert resp.status == 200
    assert h.recorder.last["body"] == b"abcd"


async def test_b6_093_content_length_with_transfer_encoding_is_refused(h: Harness) -> None:
    await assert_refused(h, POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    await assert_refused(h, POST + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    "lines",
    [
        b"Content-Length: 4\r\nContent-Length: 4\r\n",
        b"Content-Length: 4\r\nContent-Length: 5\r\n",
        b"Content-Length: 4, 4\r\n",
        b"Content-Length: +4\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 0x4\r\n",
        b"Content-Length: 4 4\r\n",
        b"Content-Length: 4a\r\n",
        b"Content-Length: 99999999999999999999999\r\n",
    ],
    ids=["dup-equal", "dup-different", "list", "plus", "negative", "hex", "space", "suffix", "overflow"],
)
async def test_b6_094_bad_content_length_is_refused(h: Harness, lines: bytes) -> None:
    await assert_refused(h, POST + lines + b"\r\nabcd")


@pytest.mark.parametrize(
    "lines",
    [
        b"Transfer-Encoding: xchunked\r\n",
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Transfer-Encoding: chunked, chunked\r\n",
        b"Transfer-Encoding: identity\r\nContent-Length: 4\r\n",
        b"Transfer-Encoding : chunked\r\n",
        b"Transfer-Encoding: \x0bchunked\r\n",
        b"Transfer-Encoding: \x0cchunked\r\n",
        b"Transfer-Encoding: \r\n",
        b"Transfer-Encoding: chunk\xc3\xa9d\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
    ],
    ids=[
        "xchunked",
        "chunked-identity",
        "chunked-twice",
        "identity-cl",
        "space-before-colon",
        "vtab",
        "formfeed",
        "empty",
        "non-ascii",
        "two-lines",
    ],
)
async def test_b6_095_obfuscated_transfer_encoding_is_refused(h: Harness, lines: bytes) -> None:
    await assert_refused(h, POST + lines + b"\r\n4\r\nabcd\r\n0\r\n\r\n")


async def test_b6_096_http_1_0_with_transfer_encoding_is_refused(h: Harness) -> None:
    """RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing; close."""
    await assert_refused(
        h, b"POST /public/x HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        b"GET /public/x HTTP/1.1\nHost: x\n\n",
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\n Host: x\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-\x00A: a\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n",
    ],
    ids=[
        "obs-fold",
        "bare-lf",
        "bare-cr",
        "space-before-first-header",
        "nul-in-name",
        "nul-in-value",
        "space-before-colon",
    ],
)
async def test_b6_097_line_ending_and_whitespace_tricks_are_refused(h: Harness, data: bytes) -> None:
    await assert_refused(h, data)


@pytest.mark.parametrize(
    "data",
    [
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: user@x\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: x/admin\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: a, b\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: x:80:80\r\n\r\n",
    ],
    ids=["duplicate-same", "duplicate-different", "missing", "userinfo", "path", "comma", "two-ports"],
)
async def test_b6_098_host_header_anomalies_are_refused(h: Harness, data: bytes) -> None:
    """RFC 9112 §3.2: a missing, repeated or invalid Host is answered 400."""
    await assert_refused(h, data)


async def test_b6_099_cve_2023_37276_vector_is_refused(h: Harness) -> None:
    await assert_refused(
        h, POST + b"X-Abc: \rxTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"0x4\r\nabcd\r\n0\r\n\r\n",
        b"-4\r\nabcd\r\n0\r\n\r\n",
        b" 4\r\nabcd\r\n0\r\n\r\n",
        b"4\nabcd\r\n0\r\n\r\n",
        b"4;a=b\nc\r\nabcd\r\n0\r\n\r\n",
        b"ffffffffffffffffffff\r\nabcd\r\n0\r\n\r\n",
        b"4\r\nabcdX0\r\n\r\n",
        b"2\r\nabcd\r\n0\r\n\r\n",
        b"4\r\nabcd\n0\r\n\r\n",
    ],
    ids=[
        "hex-prefix",
        "negative",
        "leading-space",
        "bare-lf-after-size",
        "lf-in-extension",
        "oversized-size",
        "missing-crlf",
        "more-than-declared",
        "bare-lf-after-data",
    ],
)
async def test_b6_100_chunk_level_tricks_are_refused(h: Harness, body: bytes) -> None:
    await assert_refused(h, POST + b"Transfer-Encoding: chunked\r\n\r\n" + body)


async def test_b6_101_request_hidden_in_a_body_is_authenticated_on_its_own(h: Harness) -> None:
    """A second request after a Content-Length body is parsed as its own request and judged on its
    own: the public one is forwarded with its 3-byte body, the hidden /admin one gets 401."""
    data = (
        b"POST /public/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /admin/panel HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )
    resp = await h.raw(data)
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", resp.data)]
    assert statuses == [200, 401]
    assert len(h.recorder) == 1
    assert h.recorder.last["body"] == b"abc" and h.recorder.last["path"] == "/public/x"


async def test_b6_102_upstream_request_is_reframed_by_the_gateway(
    make_harness: HarnessFactory, raw_upstream: RawUpstream
) -> None:
    """The client's framing headers are never copied: a chunked body with extensions arrives
    re-chunked without them (and a Content-Length body keeps a Content-Length of its own)."""
    h = await make_harness(upstream_url=raw_upstream.url, routes=[{"path": "/", "auth": "public"}])
    resp = await h.raw(
        POST
        + b'Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2;ext="x"\r\nab\r\n2\r\ncd\r\n0\r\n\r\n'
    )
    assert resp.status == 200
    head, _, body = raw_upstream.received[-1].partition(b"\r\n\r\n")
    assert b"ext=" not in body and b"abcd" in body.replace(b"\r\n", b"").replace(b"2", b"")
    assert head.lower().count(b"transfer-encoding") <= 1
    resp = await h.raw(POST + b"Content-Length: 4\r\nConnection: close\r\n\r\nabcd")
    head, _, body = raw_upstream.received[-1].partition(b"\r\n\r\n")
    assert b"content-length: 4" in head.lower() and body == b"abcd"
    assert b"transfer-encoding" not in head.lower()


def test_b6_102_startup_refuses_the_pure_python_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """`gateway serve` refuses to run without aiohttp's C (llhttp) parser, the strict one."""
    check_runtime()  # the C parser is active here
    monkeypatch.setattr(http_parser, "HttpRequestParser", http_parser.HttpRequestParserPy)
    with pytest.raises(SystemExit, match="C HTTP parser"):
        check_runtime()


def test_b6_102_aiohttp_is_at_least_3_13_3() -> None:
    """CVE-2025-53643 and the decompression limit are fixed from 3.13.3 on (SECURITY R-PX-9)."""
    parts = tuple(int(p) for p in version("aiohttp").split(".")[:3])
    assert parts >= (3, 13, 3)


@pytest.mark.parametrize(
    "lines",
    [
        b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
        b"Upgrade: foo/1\r\nConnection: Upgrade\r\n",
        b"Connection: Upgrade\r\n",
    ],
    ids=["h2c", "custom", "connection-only"],
)
async def test_b6_103_non_websocket_upgrades_are_not_tunnelled(h: Harness, lines: bytes) -> None:
    """Upgrade requests other than websocket are proxied as plain HTTP: Upgrade is stripped and
    the client never gets 101."""
    resp = await h.raw(b"GET /public/x HTTP/1.1\r\nHost: x\r\n" + lines + b"Connection: close\r\n\r\n")
    assert resp.status == 200
    sent = {k.lower() for k, _ in h.recorder.last["headers"]}
    assert "upgrade" not in sent and "http2-settings" not in sent
    assert b" 101 " not in resp.data
