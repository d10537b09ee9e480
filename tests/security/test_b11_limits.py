"""SECURITY.md B.11 — resource limits, timeouts and availability (items 131–136)."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import time
from typing import Any

import pytest

from tests.security.conftest import HarnessFactory, RawUpstream
from tests.security.helpers import API, SAME_ORIGIN, Harness, cookie_header

SMALL_CAP = {"routes": [{"path": "/", "auth": "public", "max_body_size": 4096}]}


@pytest.mark.parametrize(
    "data",
    [
        b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 16385 + b"\r\n\r\n",
        b"GET /public/" + b"a" * 16400 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: 1\r\n" % i for i in range(129))
        + b"\r\n",
    ],
    ids=["field-over-16k", "request-line-over-16k", "129-headers"],
)
async def test_b11_131_parser_limits(h: Harness, data: bytes) -> None:
    """Header fields and the request line are capped (16 KiB: raised from aiohttp's 8190 for
    legacy SSO cookies), and at most 128 header lines: 400 and close, nothing forwarded."""
    with h.unchanged():
        resp = await h.raw(data)
    assert resp.status == 400 and resp.closed


async def test_b11_131_limits_are_what_the_design_says(h: Harness) -> None:
    """A 12 kB field (a legacy SSO cookie) is within the gateway's limit."""
    ok = await h.raw(
        b"GET /auth/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 12000 + b"\r\nConnection: close\r\n\r\n"
    )
    assert ok.status == 200


async def test_b11_132_body_over_the_route_cap_is_413(make_harness: HarnessFactory) -> None:
    """Announced by Content-Length: 413 before reading, the upstream untouched. Streamed chunked
    past the cap: the upstream request is aborted and the client gets 413 (or a closed
    connection), never a complete forwarded body."""
    h = await make_harness(**SMALL_CAP)
    with h.unchanged():
        announced = await h.client.post("/x", data=io.BytesIO(b"a" * 5000), headers=API)
    assert announced.status == 413

    async def chunks() -> Any:
        for _ in range(10):
            yield b"b" * 1000

    with h.unchanged():
        try:
            streamed = await h.client.post("/x", data=chunks(), headers=API)
            status = streamed.status
        except Exception:  # the gateway may close while the client still sends
            status = 0
    assert status in (0, 413)


@pytest.mark.parametrize("path", ["/public/upload", "/auth/login"])
async def test_b11_133_slow_body_gets_408_within_the_deadline(
    make_harness: HarnessFactory, path: str
) -> None:
    """A body trickled one byte a second is cut at request_body_timeout with 408, on proxied
    routes and on the gateway's own endpoints; the upstream never gets a complete request."""
    h = await make_harness(server={"request_body_timeout": 1.0})
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with h.unchanged(kdf=False):
        resp = await h.raw(head, *([b"{"] + [b" "] * 30), pause=0.3, timeout=8, first_only=True)
    assert resp.status == 408, resp.data[:200]
    assert time.monotonic() - started < 3
    assert resp.header("Connection") == ["close"]


async def test_b11_133_slow_headers_are_cut_at_the_keepalive_timeout(make_harness: HarnessFactory) -> None:
    """Header lines trickled slower than keepalive_timeout: the connection is closed."""
    h = await make_harness(server={"keepalive_timeout": 1.0})
    started = time.monotonic()
    with h.unchanged():
        resp = await h.raw(
            b"GET /public/x HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 1\r\n", pause=1.5, timeout=8
        )
    assert resp.closed
    assert resp.status in (0, 408)
    assert time.monotonic() - started < 7


async def test_b11_133_idle_keep_alive_connection_is_closed(make_harness: HarnessFactory) -> None:
    h = await make_harness(server={"keepalive_timeout": 1.0})
    started = time.monotonic()
    resp = await h.raw(b"GET /public/x HTTP/1.1\r\nHost: x\r\n\r\n", timeout=6)
    assert resp.status == 200 and resp.closed
    assert time.monotonic() - started < 4


async def test_b11_134_compressed_bodies_pass_as_sent_and_the_cap_counts_wire_bytes(
    make_harness: HarnessFactory, raw_upstream: RawUpstream
) -> None:
    """No server-side decompression: a gzip body (1 MB of zeros in under 4 kB) reaches the
    upstream byte-identical with its Content-Encoding; the cap applies to the bytes on the wire."""
    h = await make_harness(upstream_url=raw_upstream.url, **SMALL_CAP)
    bomb = gzip.compress(b"\0" * 1_000_000)
    assert len(bomb) < 4096
    resp = await h.client.post(
        "/x", data=bomb, headers={**API, "Content-Encoding": "gzip", "Content-Type": "text/plain"}
    )
    assert resp.status == 200
    head, _, body = raw_upstream.received[-1].partition(b"\r\n\r\n")
    assert body == bomb
    assert b"content-encoding: gzip" in head.lower()
    over = await h.client.post("/x", data=os.urandom(5000), headers={**API, "Content-Encoding": "gzip"})
    assert over.status == 413
    assert len(raw_upstream.received) == 1


async def test_b11_135_upstream_failures_are_generic_502_and_504(
    make_harness: HarnessFactory, unused_tcp_port: int, upstream: str
) -> None:
    """Refused: 502. Silent past upstream_timeout: 504. Bodies are the gateway's generic ones:
    no upstream address, no traceback."""
    dead = f"http://127.0.0.1:{unused_tcp_port}"
    h = await make_harness(upstream_url=dead, routes=[{"path": "/", "auth": "public"}])
    refused = await h.client.get("/x", headers=API)
    assert refused.status == 502
    text = await refused.text()
    assert str(unused_tcp_port) not in text and "Traceback" not in text
    slow = await make_harness(server={"upstream_timeout": 0.5}, routes=[{"path": "/", "auth": "public"}])
    timeout = await slow.client.get("/x/slow", headers=API)
    assert timeout.status == 504
    assert "127.0.0.1" not in await timeout.text()


async def test_b11_135_upstream_dying_mid_response_closes_the_connection(
    make_harness: HarnessFactory, raw_upstream: RawUpstream
) -> None:
    """Headers sent, body cut short: the status is gone already, so the client connection is
    closed and the client sees a truncated body, never a complete-looking one."""
    raw_upstream.response = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n" + b"x" * 10
    )
    h = await make_harness(upstream_url=raw_upstream.url, routes=[{"path": "/", "auth": "public"}])
    resp = await h.raw(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
    assert resp.closed
    assert len(resp.body) < 1000


async def test_b11_136_refresh_attempts_with_random_tokens_are_limited_per_address(h: Harness) -> None:
    """Many refreshes with random tokens from one address: after 30 failures, 429 with
    Retry-After and no database work; the real session of another address is unaffected."""
    real = (await h.session_cookies())["gw_refresh"]
    statuses = []
    for i in range(31):
        resp = await h.client.post("/auth/refresh", headers={"Cookie": f"gw_refresh=forged{i:040d}"})
        statuses.append(resp.status)
    assert statuses[:30] == [401] * 30
    assert statuses[30] == 429
    with h.unchanged():
        limited = await h.client.post("/auth/refresh", headers={"Cookie": f"gw_refresh={real}"})
        proxied = await h.client.get("/app/page", headers={**API, "Cookie": f"gw_refresh={real}"})
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert proxied.status == 429
    assert all(row[5] is None for row in h.refresh_rows())


async def test_b11_136_proxied_traffic_flows_during_a_refresh_flood(h: Harness) -> None:
    cookies = await h.session_cookies()
    flood = [
        asyncio.create_task(h.client.post("/auth/refresh", headers={"Cookie": f"gw_refresh=x{i:042d}"}))
        for i in range(60)
    ]
    ok = await h.client.get("/app/page", headers={**API, **SAME_ORIGIN, "Cookie": cookie_header(cookies)})
    await asyncio.gather(*flood)
    assert ok.status == 200
