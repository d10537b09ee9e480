"""The benchmark's upstream: a tiny, fast HTTP/1.1 server on loopback (asyncio + httptools, uvloop).

It must cost far less than any proxy in front of it, so it is a bare `asyncio.Protocol`:

* `GET …/stream?bytes=N` streams N zero bytes with `Content-Length`, honouring backpressure;
* `POST`/`PUT` anything reads and discards the body (any framing) and answers with the byte count;
* any other request gets a 3-byte `ok\\n`.

Run as its own process: `python -m bench.upstream --port 9000`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque
from typing import Any, cast

import httptools

CHUNK = memoryview(bytes(256 * 1024))
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"
OK_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
)
MAX_STREAM = 1 << 40


class Job:
    __slots__ = ("body_bytes", "keep_alive", "method", "url")

    def __init__(self, method: bytes, url: bytes, keep_alive: bool, body_bytes: int) -> None:
        self.method = method
        self.url = url
        self.keep_alive = keep_alive
        self.body_bytes = body_bytes


class Conn(asyncio.Protocol):
    """One client connection; requests are answered strictly in order (pipelining-safe)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body_bytes = 0
        self.expect_continue = False
        self.jobs: deque[Job] = deque()
        self.busy = False
        self.closed = False
        self.stream_task: asyncio.Task[None] | None = None
        self.can_write = asyncio.Event()
        self.can_write.set()

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=4 * 1024 * 1024)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._close()
            return
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            self._close()
            return
        self._pump()

    # --- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.body_bytes = 0
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        if self.expect_continue and self.transport is not None and not self.jobs and not self.busy:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        self.jobs.append(Job(parser.get_method(), self.url, parser.should_keep_alive(), self.body_bytes))

    # --- answering --------------------------------------------------------------------------
    def _pump(self) -> None:
        transport = self.transport
        while self.jobs and not self.busy and not self.closed and transport is not None:
            job = self.jobs.popleft()
            if job.method in (b"POST", b"PUT"):
                body = b"%d" % job.body_bytes
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
                transport.write(head + (b"\r\n" if job.keep_alive else b"Connection: close\r\n\r\n") + body)
            elif job.method == b"GET" and b"/stream" in job.url:
                self.busy = True
                transport.pause_reading()
                self.stream_task = asyncio.get_running_loop().create_task(self._stream(job))
                return
            else:
                transport.write(OK if job.keep_alive else OK_CLOSE)
            if not job.keep_alive:
                self._close()
                return

    async def _stream(self, job: Job) -> None:
        transport = self.transport
        assert transport is not None
        size = stream_size(job.url)
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n%s\r\n"
            % (size, b"" if job.keep_alive else b"Connection: close\r\n")
        )
        left = size
        step = len(CHUNK)
        while left > 0 and not self.closed:
            if not self.can_write.is_set():
                await self.can_write.wait()
                continue
            n = step if left >= step else left
            transport.write(CHUNK[:n])
            left -= n
        self.busy = False
        if self.closed:
            return
        if not job.keep_alive:
            self._close()
            return
        transport.resume_reading()
        self._pump()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def stream_size(url: bytes) -> int:
    """`bytes=N` from the query string (default 1 MiB), bounded."""
    _, _, query = url.partition(b"?")
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == b"bytes" and value.isdigit():
            return min(int(value), MAX_STREAM)
    return 1024 * 1024


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, host, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
