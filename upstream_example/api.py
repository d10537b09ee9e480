"""The example app's machine-facing endpoints: echo, streaming download and upload, websocket echo,
whoami, the recorded notes and a pair of the app's own cookies. Bodies are streamed, never held whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from aiohttp import WSMsgType, web

from upstream_example.state import NOTES, identity_of

CHUNK = 64 * 1024
DEFAULT_DOWNLOAD = 1024 * 1024
MAX_DOWNLOAD = 64 * 1024**3
# Close codes that exist only locally (RFC 6455 §7.4.1) and so can never be echoed on the wire.
_LOCAL_CLOSE_CODES = frozenset({1005, 1006, 1015})
_BLOCK = bytes(range(256)) * (CHUNK // 256)


def pattern_chunks(size: int) -> Iterator[bytes]:
    """The download body in 64 KiB chunks: a fixed block stamped with the chunk's index, so a chunk
    lost, repeated or reordered on the way changes the digest."""
    for index, start in enumerate(range(0, size, CHUNK)):
        chunk = index.to_bytes(8, "big") + _BLOCK[8:]
        yield chunk[: min(CHUNK, size - start)]


def _text(raw: bytes) -> str:
    """Header bytes as text: UTF-8 when valid, else ISO-8859-1 (which maps every byte)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


async def echo(request: web.Request) -> web.Response:
    """What arrived, as received: the raw target, every header in wire order and case, the body's digest."""
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        length += len(chunk)
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "headers": [[_text(name), _text(value)] for name, value in request.raw_headers],
            "body_length": length,
            "body_sha256": digest.hexdigest(),
        }
    )


async def download(request: web.Request) -> web.StreamResponse:
    raw = request.query.get("size", str(DEFAULT_DOWNLOAD))
    if not raw.isdigit() or int(raw) > MAX_DOWNLOAD:
        raise web.HTTPBadRequest(text=f"size must be a whole number of bytes up to {MAX_DOWNLOAD}\n")
    size = int(raw)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    if request.method != "HEAD":
        for chunk in pattern_chunks(size):
            await response.write(chunk)  # awaits the drain: memory stays at one chunk per client
    await response.write_eof()
    return response


async def upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        length += len(chunk)
    return web.json_response({"length": length, "sha256": digest.hexdigest()})


async def websocket_echo(request: web.Request) -> web.WebSocketResponse:
    """Echoes text and binary messages; answers a close with the peer's own code; the text message
    `close:NNNN` makes the app close first with that code (for testing close-code propagation)."""
    ws = web.WebSocketResponse(protocols=("echo.v1", "echo.v2"), autoclose=False)
    await ws.prepare(request)
    while True:
        msg = await ws.receive()
        if msg.type is WSMsgType.TEXT:
            command, _, requested = msg.data.partition(":")
            if command == "close" and requested.isdigit():
                await ws.close(code=int(requested), message=b"closed on request")
                break
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            echoed = msg.data if msg.data and msg.data not in _LOCAL_CLOSE_CODES else 1000
            await ws.close(code=echoed, message=(msg.extra or "").encode())
            break
        else:  # CLOSING, CLOSED, ERROR: the peer is gone
            break
    return ws


async def whoami(request: web.Request) -> web.Response:
    who = identity_of(request)
    return web.json_response(
        {"user_id": who.user_id, "email": who.email, "roles": list(who.roles), "session_id": who.session_id}
    )


async def notes(request: web.Request) -> web.Response:
    return web.json_response([note.text for note in request.app[NOTES]])


async def cookies(request: web.Request) -> web.Response:
    """Sets two cookies of the app's own: a proxy that keeps only one Set-Cookie loses one of them."""
    response = web.json_response({"set": {"app_a": "1", "app_b": "2"}, "received": dict(request.cookies)})
    response.set_cookie("app_a", "1", path="/", httponly=True, samesite="Lax")
    response.set_cookie("app_b", "2", path="/", httponly=True, samesite="Lax")
    return response
