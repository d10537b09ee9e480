"""Helpers shared by the security checklist tests (SECURITY.md Part B).

`Harness` bundles one real gateway (real `create_app`, real SQLite file, the production access
logger) with the recording upstream, and knows how to prove that something did *not* happen:
no upstream request, no database write, no argon2 run, no token in the logs. `raw()` talks to
the gateway over a plain socket for inputs the test client would normalise or refuse.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.config import Config
from gateway.keys import CONFIG, PASSWORDS, TOKENS
from tests.conftest import PASSWORD

API = {"Accept": "application/json"}
NAV = {
    "Accept": "text/html,application/xhtml+xml",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
}
SAME_ORIGIN = {"Origin": "http://localhost:8080", "Sec-Fetch-Site": "same-origin"}
GENERIC_401 = {"error": "unauthenticated", "message": "authentication required"}


# ---- raw HTTP ---------------------------------------------------------------------------------


@dataclass
class RawResponse:
    """The first response read from a raw connection, and whether the server closed it."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    closed: bool
    data: bytes  # everything received, for assertions about what is absent

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


def parse_response(data: bytes, closed: bool) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return RawResponse(0, [], b"", closed, data)
    status = int(lines[0].split(" ")[1])
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
    if length is not None:
        body = body[:length]
    return RawResponse(status, headers, body, closed, data)


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return match is not None and len(body) >= int(match[1])


async def raw_exchange(
    port: int, chunks: Iterable[bytes], *, timeout: float = 5.0, pause: float = 0.0, first_only: bool = False
) -> RawResponse:
    """Send `chunks` (waiting `pause` between them) while reading, until the server closes or
    `timeout` passes (or, with `first_only`, a first complete response with Content-Length has
    arrived). `closed` tells whether the server closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        for i, chunk in enumerate(chunks):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(send())
    data = b""
    closed = False
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                piece = await asyncio.wait_for(reader.read(65536), remaining)
            except (TimeoutError, ConnectionError):
                break
            if not piece:
                closed = True
                break
            data += piece
            if first_only and _complete(data):
                break
    finally:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return parse_response(data, closed)


# ---- tokens -------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A JWT assembled by hand: any header, any payload, any signature bytes."""
    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)])


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header = jwt.get_unverified_header(token)
    payload = jwt.decode(token, options={"verify_signature": False})
    return header, payload


# ---- the harness --------------------------------------------------------------------------------


@dataclass
class Harness:
    client: TestClient[Any, Any]
    recorder: Any
    db: Path
    caplog: Any
    secrets: set[str] = field(default_factory=set)
    # The client never keeps cookies (DummyCookieJar): each request carries exactly the cookies
    # the test gives it. `jar` holds the gateway cookies of the last login.
    jar: dict[str, str] = field(default_factory=dict)

    @property
    def app(self) -> web.Application:
        app: web.Application | None = self.client.app
        assert app is not None
        return app

    @property
    def config(self) -> Config:
        return self.app[CONFIG]

    @property
    def port(self) -> int:
        port = self.client.server.port
        assert port is not None
        return port

    @property
    def kdf_runs(self) -> int:
        """argon2 invocations so far (hashes and verifies)."""
        return self.app[PASSWORDS].runs

    @property
    def signing_key(self) -> Any:
        return self.app[TOKENS].ring.current.signing_key

    def keep_secret(self, *values: str | None) -> None:
        """Remember values that must never appear in a log line (checked at teardown)."""
        self.secrets.update(v for v in values if v)

    def tables(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table of the real SQLite file, as committed."""
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as db:
            names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {
                name: sorted(db.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr)  # noqa: S608
                for name in names
                if not name.startswith("sqlite_")
            }

    @contextlib.contextmanager
    def unchanged(
        self,
        *,
        upstream: bool = True,
        db: bool = True,
        kdf: bool = True,
        except_tables: Iterable[str] = (),
    ) -> Iterator[None]:
        """Assert on exit that the block sent nothing upstream, wrote nothing to the database
        (tables in `except_tables` aside) and ran argon2 zero times."""
        before_up, before_kdf = len(self.recorder), self.kdf_runs
        skip = set(except_tables)
        before_db = {k: v for k, v in self.tables().items() if k not in skip} if db else {}
        yield
        if upstream:
            assert len(self.recorder) == before_up, "the upstream received a request"
        if kdf:
            assert self.kdf_runs == before_kdf, "argon2 ran"
        if db:
            after = {k: v for k, v in self.tables().items() if k not in skip}
            changed = [k for k in after if after[k] != before_db.get(k)]
            assert not changed, f"database tables changed: {changed}"

    def refresh_rows(self) -> list[tuple[Any, ...]]:
        return self.tables()["refresh_tokens"]

    def cookie(self, name: str) -> str | None:
        return self.jar.get(name)

    # ---- flows ------------------------------------------------------------------------------

    async def register(self, email: str = "alice@example.com", password: str = PASSWORD) -> dict[str, Any]:
        resp = await self.client.post("/auth/register", json={"email": email, "password": password})
        assert resp.status == 201, await resp.text()
        return dict(await resp.json())

    async def login(self, email: str = "alice@example.com", password: str = PASSWORD) -> dict[str, Any]:
        resp = await self.client.post("/auth/login", json={"email": email, "password": password})
        assert resp.status == 200, await resp.text()
        body = dict(await resp.json())
        self.keep_secret(body["access_token"], password)
        self.jar = {morsel.key: morsel.value for morsel in resp.cookies.values()}
        self.keep_secret(*self.jar.values())
        return body

    async def signed_in(self, email: str = "alice@example.com", password: str = PASSWORD) -> dict[str, Any]:
        """Register and log in; `jar` then holds both cookies."""
        await self.register(email, password)
        return await self.login(email, password)

    async def session_cookies(self, email: str = "alice@example.com") -> dict[str, str]:
        """Register, sign in and return the gateway cookies (name -> value)."""
        await self.signed_in(email)
        return dict(self.jar)

    async def raw(
        self, *chunks: bytes, timeout: float = 5.0, pause: float = 0.0, first_only: bool = False
    ) -> RawResponse:
        return await raw_exchange(self.port, chunks, timeout=timeout, pause=pause, first_only=first_only)

    def logged_text(self, records: Iterable[logging.LogRecord] | None = None) -> str:
        """Everything logged (this test phase by default): messages, structured fields, tracebacks."""
        parts = []
        for record in self.caplog.records if records is None else records:
            if record.name == "aiohttp.access":
                continue  # the recording upstream's own access log, not the gateway's
            parts.append(record.getMessage())
            parts.append(repr(getattr(record, "fields", "")))
            if record.exc_info:
                parts.append(logging.Formatter().formatException(record.exc_info))
        return "\n".join(parts)

    def security_events(self) -> list[str]:
        return [r.getMessage() for r in self.caplog.records if r.name == "gateway.security"]


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def same_response(a: tuple[int, dict[str, str], bytes], b: tuple[int, dict[str, str], bytes]) -> bool:
    return a == b


async def snapshot_response(resp: Any) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (without Date) and body: what a client could use to tell two answers apart."""
    headers = {k: v for k, v in resp.headers.items() if k.lower() != "date"}
    return resp.status, headers, await resp.read()
