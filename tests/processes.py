"""Real processes for end-to-end tests: the example upstream and `python -m gateway`, on free ports.

Every child is started with bounded waits and stopped by a context manager (SIGTERM, then SIGKILL),
so a failing test never leaves a process behind. A gateway's stderr, its log, goes to a file the
test reads. The interpreter is the one running the tests (the project's virtualenv).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

PASSWORD = "correct horse battery staple 42"
NEW_PASSWORD = "a different, quite long passphrase 7"
READY_TIMEOUT = 30.0  # a loaded CI machine may take a while to import and migrate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env() -> dict[str, str]:
    """The test's environment without GATEWAY_* overrides (a developer's must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}


def stop(proc: subprocess.Popen[Any], timeout: float = 15.0) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL the child's whole process group (it was started
    in its own session), so that a supervisor's workers never outlive a test; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever the leader left behind
    return proc.returncode


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def upstream_example() -> Iterator[int]:
    """`python -m upstream_example` on a free port; yields the port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "upstream_example", "--port", str(port), "--no-access-log"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _port_open(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"upstream_example did not start (exit status {proc.poll()})")
            time.sleep(0.05)
        yield port
    finally:
        stop(proc)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(
    folder: Path,
    *,
    port: int,
    upstream_port: int,
    name: str = "config.toml",
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """A config file in `folder`: SQLite and the key file beside it, cheap argon2, JSON logs, and
    routes "/" (signed in), "/echo/admin" (role admin) and "/public" to the upstream."""
    tables: dict[str, dict[str, Any]] = {
        "server": {
            "listen": f"127.0.0.1:{port}",
            "public_url": f"http://127.0.0.1:{port}",
            "shutdown_timeout": "10s",
        },
        "storage": {"url": "sqlite:///gateway.db"},
        "passwords": {"argon2_time_cost": 1, "argon2_memory_kib": 8, "argon2_parallelism": 1},
        "logging": {"format": "json"},
    }
    for table, values in (sections or {}).items():
        tables.setdefault(table, {}).update(values)
    upstream = f"http://127.0.0.1:{upstream_port}"
    lines = []
    for table, values in tables.items():
        lines += [f"[{table}]", *(f"{k} = {_toml(v)}" for k, v in values.items()), ""]
    for path, extra in (("/", ""), ("/echo/admin", 'roles = ["admin"]'), ("/public", 'auth = "public"')):
        lines += ["[[routes]]", f'path = "{path}"', f'upstream = "{upstream}"', extra, ""]
    config = folder / name
    config.write_text("\n".join(lines))
    return config


@dataclass
class Gateway:
    """A running `python -m gateway serve`."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """Every JSON line of the log (lines that are not JSON are skipped)."""
        records = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
        return records


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/auth/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def running_gateway(config: Path, port: int, *, log_name: str = "gateway.log") -> Iterator[Gateway]:
    """`python -m gateway serve --config CONFIG`, ready (health 200) before it is yielded."""
    log = config.parent / log_name
    with log.open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env=child_env(),
            start_new_session=True,
        )
    gateway = Gateway(proc, port, log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not _healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = gateway.log_text()[-3000:]
                raise RuntimeError(f"gateway did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.1)
        yield gateway
    finally:
        stop(proc)


def run_cli(
    config: Path, *args: str, stdin: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS --config CONFIG` (the config after the subcommand, as DESIGN §9
    allows); stdin is the given text, or empty and not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args, "--config", str(config)],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        check=False,
    )


def http_client(base_url: str, *, fresh_connections: bool = False) -> aiohttp.ClientSession:
    """A client with its own cookie jar (unsafe=True: cookies for a bare IP address are kept).
    `fresh_connections`: one TCP connection per request, so SO_REUSEPORT spreads them over workers."""
    return aiohttp.ClientSession(
        base_url=base_url,
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        connector=aiohttp.TCPConnector(force_close=fresh_connections),
        timeout=aiohttp.ClientTimeout(total=15),
    )


async def login(client: aiohttp.ClientSession, email: str, password: str = PASSWORD) -> dict[str, Any]:
    async with client.post("/auth/login", json={"email": email, "password": password}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return dict(body)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JWT's header and payload, unverified (only to read kid and roles in tests)."""

    def part(segment: str) -> dict[str, Any]:
        return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))

    header, payload, _ = token.split(".")
    return part(header), part(payload)


async def status_of(
    client: aiohttp.ClientSession, path: str, headers: Mapping[str, str] | None = None
) -> int:
    async with client.get(path, headers=headers) as resp:
        await resp.read()
        return resp.status


async def seconds_until(
    client: aiohttp.ClientSession, path: str, headers: Mapping[str, str] | None, statuses: Sequence[int]
) -> float:
    """Poll GET `path` every 100 ms until its status is in `statuses`; the seconds it took.
    Gives up after 10 s (returning infinity) so a broken feature fails the test, never hangs it."""
    start = time.monotonic()
    while time.monotonic() - start < 10:
        if await status_of(client, path, headers) in statuses:
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    return float("inf")
