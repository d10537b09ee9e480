"""SECURITY.md B.12 — pitfalls of the proxy's own HTTP client (items 137–141)."""

from __future__ import annotations

from tests.security.conftest import GZIP_BODY, HarnessFactory, RawUpstream
from tests.security.helpers import API, Harness, cookie_header


async def test_b12_137_upstream_cookies_are_never_shared_between_users(
    make_harness: HarnessFactory, upstream: str
) -> None:
    """The upstream sets a cookie for alice; bob's next request (and websocket handshake) carries
    only bob's cookies. The upstream is addressed by host name (`localhost`), where a default
    client cookie jar would keep and replay the cookie (it skips IP addresses)."""
    by_name = upstream.replace("127.0.0.1", "localhost")
    h = await make_harness(upstream_url=by_name)
    alice = await h.session_cookies("alice@example.com")
    bob = await h.session_cookies("bob@example.com")
    set_resp = await h.client.get("/app/set-user-cookie", headers={**API, "Cookie": cookie_header(alice)})
    assert set_resp.status == 200 and "upsess=" in set_resp.headers["Set-Cookie"]
    await h.client.get("/app/page", headers={**API, "Cookie": cookie_header(bob)})
    assert [v for k, v in h.recorder.last["headers"] if k.lower() == "cookie"] == []
    # The websocket leg too: the upstream's 101 for alice sets a cookie; bob's handshake is clean.
    origin = {"Origin": "http://localhost:8080"}
    ws = await h.client.ws_connect("/ws-set-cookie", headers={**origin, "Cookie": cookie_header(alice)})
    await ws.close()
    ws = await h.client.ws_connect("/ws", headers={**origin, "Cookie": cookie_header(bob)})
    await ws.close()
    assert [v for k, v in h.recorder.last["headers"] if k.lower() == "cookie"] == []


async def test_b12_138_upstream_redirects_go_back_to_the_browser(h: Harness) -> None:
    """A 302 from the upstream is relayed, Location as sent; the gateway never follows it."""
    resp = await h.client.get("/public/redirect-internal", headers=API, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "http://internal.example/secret"
    assert len(h.recorder) == 1


async def test_b12_139_forwarded_target_is_the_canonical_one_byte_for_byte(h: Harness) -> None:
    """Escapes other than unreserved ones, `;` parameters and the whole query pass exactly as
    sent; unreserved escapes are decoded (`%7E` is `~`), dot-segments resolved, as decided."""
    target = "/public/a%2Cb/%7Euser/c%3Ad;v=1/./e/../f?q=%2F%20+x&y=%21&&z"
    resp = await h.raw(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert resp.status == 200
    assert h.recorder.last["path"] == "/public/a%2Cb/~user/c%3Ad;v=1/f?q=%2F%20+x&y=%21&&z"


async def test_b12_140_response_body_and_encoding_pass_untouched(h: Harness) -> None:
    """auto_decompress is off: a gzip response reaches the client byte-identical with its
    Content-Encoding and Content-Length; HEAD keeps Content-Length. (Hop-by-hop response headers:
    item 84.)"""
    resp = await h.raw(
        b"GET /public/gzip HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    )
    assert resp.status == 200
    assert resp.header("Content-Encoding") == ["gzip"]
    assert resp.header("Content-Length") == [str(len(GZIP_BODY))]
    assert resp.body == GZIP_BODY
    head = await h.raw(b"HEAD /public/gzip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert head.status == 200 and head.header("Content-Length") == [str(len(GZIP_BODY))]
    assert head.body == b""


async def test_b12_141_bad_upstream_response_headers_are_a_502_not_a_crash(
    make_harness: HarnessFactory, raw_upstream: RawUpstream
) -> None:
    """An upstream response header with a bare CR, LF or NUL (say, reflected input): 502 with a
    generic body, never relayed; the gateway keeps serving."""
    h = await make_harness(upstream_url=raw_upstream.url, routes=[{"path": "/", "auth": "public"}])
    for bad in (b"X-Echo: a\rSet-Cookie: x=1", b"X-Echo: a\x00b", b"X-Echo: a\nSet-Cookie: x=1"):
        raw_upstream.response = (
            b"HTTP/1.1 200 OK\r\n" + bad + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        resp = await h.client.get("/x", headers=API)
        assert resp.status == 502, bad
        assert "x=1" not in resp.headers.get("Set-Cookie", "")
        assert (await resp.json())["error"] == "bad_gateway"
    raw_upstream.response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    assert (await h.client.get("/x", headers=API)).status == 200
