"""Socket-level clients: big streams (h) and idle keep-alive connections (j).

    python -m bench.rawload download --port P --path /pub/stream --bytes N
    python -m bench.rawload upload --port P --path /pub/upload --bytes N
    python -m bench.rawload idle --port P --path /pub/idle --connections 2000

Streams use a blocking socket and httptools (cheap, so the client is not what is measured).
`idle` opens the connections, sends one request on each, prints `{"open": …}`, holds them until a
line arrives on stdin (at most 120 s), then prints `{"still_open": …}` and closes them. Every
command prints JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import sys
import time
from collections import Counter
from typing import Any

import httptools

SOCKET_TIMEOUT = 60.0
BUFFER = 1024 * 1024


class Response:
    """httptools callbacks: count the body, keep a small one, note completion."""

    def __init__(self) -> None:
        self.body_bytes = 0
        self.small = b""
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if len(self.small) < 1024:
            self.small += body[:1024]

    def on_message_complete(self) -> None:
        self.done = True


def _read_response(sock: socket.socket, resp: Response, parser: httptools.HttpResponseParser) -> None:
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    while not resp.done:
        n = sock.recv_into(buf)
        if not n:
            break
        parser.feed_data(view[:n])


def _status(parser: httptools.HttpResponseParser) -> int:
    try:
        return int(parser.get_status_code())
    except httptools.HttpParserError:
        return 0


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def download(port: int, path: str, size: int) -> dict[str, Any]:
    resp = Response()
    parser = httptools.HttpResponseParser(resp)
    error = ""
    started = time.perf_counter()
    try:
        with _connect(port) as sock:
            sock.sendall(f"GET {path}?bytes={size} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            _read_response(sock, resp, parser)
    except (OSError, httptools.HttpParserError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - started
    complete = resp.done and resp.body_bytes == size
    return _result(_status(parser), resp.body_bytes, seconds, complete, error)


def upload(port: int, path: str, size: int) -> dict[str, Any]:
    resp = Response()
    parser = httptools.HttpResponseParser(resp)
    error = ""
    started = time.perf_counter()
    sent = 0
    try:
        with _connect(port) as sock:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n"
            )
            sock.sendall(head.encode())
            chunk = memoryview(bytes(BUFFER))
            try:
                while sent < size:
                    n = min(size - sent, len(chunk))
                    sock.sendall(chunk[:n])
                    sent += n
            except OSError as exc:  # an early answer (413, 502) closes the connection: read it below
                error = f"{type(exc).__name__} after {sent} bytes sent"
            _read_response(sock, resp, parser)
    except (OSError, httptools.HttpParserError) as exc:
        error = error or f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - started
    echoed = resp.small.strip()
    complete = resp.done and sent == size and echoed == str(size).encode()
    return _result(_status(parser), sent, seconds, complete, error)


def _result(status: int, size: int, seconds: float, complete: bool, error: str) -> dict[str, Any]:
    return {
        "status": status,
        "bytes": size,
        "seconds": seconds,
        "mb_s": size / 1e6 / seconds if seconds > 0 else 0.0,
        "complete": complete,
        "error": error,
    }


async def idle(port: int, path: str, connections: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 256
    if soft < want:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard)
        )
    counts: Counter[str] = Counter()
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    gate = asyncio.Semaphore(100)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    async def open_one() -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                await asyncio.wait_for(_read_body(reader, head), 10)
            except (
                OSError,
                TimeoutError,
                ValueError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
            ) as exc:
                counts[f"error {type(exc).__name__}"] += 1
                return
            counts[f"HTTP {head.split(b' ', 2)[1].decode()}"] += 1
            held.append((reader, writer))

    await asyncio.gather(*(open_one() for _ in range(connections)))
    _emit({"open": len(held), "counts": dict(counts)})
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), 120)
    _emit({"still_open": sum(1 for reader, _ in held if not reader.at_eof())})
    for _, writer in held:
        writer.close()


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> None:
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        await reader.readuntil(b"0\r\n\r\n")
        return
    for line in lowered.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":", 1)[1]))


def _emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rawload")
    parser.add_argument("command", choices=("download", "upload", "idle"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--bytes", type=int, default=1 << 30)
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    if args.command == "download":
        _emit(download(args.port, args.path, args.bytes))
    elif args.command == "upload":
        _emit(upload(args.port, args.path, args.bytes))
    else:
        from bench.upstream import loop_factory

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(idle(args.port, args.path, min(args.connections, 20000)))


if __name__ == "__main__":
    main()
