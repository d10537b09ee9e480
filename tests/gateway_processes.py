"""Real `gateway serve` and `upstream_example` processes for multi-host tests, and fresh databases.

Every process runs in its own session (process group) with its output in a log file, and is
stopped by its own group id: SIGTERM, then SIGKILL after a grace period. `Children` keeps every
process a test started so a fixture finalizer can stop them all, whatever happened.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

PASSWORD = "correct horse battery staple 42"
ACCESS_COOKIE = "gw_access"
REFRESH_COOKIE = "gw_refresh"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _q(value: str) -> str:
    """A TOML basic string (JSON escaping is a subset of TOML's)."""
    return json.dumps(value)


def gateway_toml(*, storage_url: str, upstream_url: str, tokens: Mapping[str, str] | None = None) -> str:
    """One configuration for every instance (the listen address comes from GATEWAY_SERVER_LISTEN)."""
    token_lines = "".join(f"{key} = {_q(value)}\n" for key, value in (tokens or {}).items())
    return f"""[server]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
shutdown_timeout = "2s"

[storage]
url = {_q(storage_url)}

[tokens]
signing_key_file = "keys/signing.key"
{token_lines}
[cookies]
secure = false

[passwords]
argon2_time_cost = 1
argon2_memory_kib = 8
argon2_parallelism = 1
hash_workers = 1

[logging]
access_log = false

[[routes]]
path = "/"
upstream = {_q(upstream_url)}
on_unauthenticated = "status"
"""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM this child's own process group, SIGKILL it after `grace` seconds."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # anything the leader left behind


def _environment(extra: Mapping[str, str]) -> dict[str, str]:
    # The developer's GATEWAY_* variables would override the generated file.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**env, **extra}


@dataclass
class Children:
    """Every process a test started; `stop_all()` in a finalizer ends them, newest first."""

    folder: Path
    started: list[Child] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> Child:
        log = self.folder / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=_environment(env or {}),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, process, log)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()

    def upstream(self) -> Child:
        """`python -m upstream_example --port P`, ready."""
        port = free_port()
        argv = [sys.executable, "-m", "upstream_example", "--port", str(port), "--no-access-log"]
        child = self.spawn(f"upstream-{port}", argv, cwd=self.folder)
        child.url = f"http://127.0.0.1:{port}"
        wait_ready(child, child.url + "/public")
        return child

    def gateway(self, config: Path, name: str) -> Child:
        """`python -m gateway serve --config FILE` on a free port (GATEWAY_SERVER_LISTEN), not yet ready."""
        port = free_port()
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
        env = {"GATEWAY_SERVER_LISTEN": f"127.0.0.1:{port}"}
        child = self.spawn(name, argv, cwd=config.parent, env=env)
        child.url = f"http://127.0.0.1:{port}"
        return child


def wait_ready(child: Child, url: str, timeout: float = START_TIMEOUT) -> None:
    """Poll `url` until it answers 200; fail with the log's tail if the process exits or is late."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n{child.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (a loopback http URL)
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} not ready on {url} within {timeout:.0f}s ({last}):\n{child.tail()}")


def run_gateway_command(
    args: list[str], *, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS…` to completion, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env=_environment({}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ---- databases ---------------------------------------------------------------------------------


def _run_async(work: Any) -> None:
    """Run a coroutine from sync code (a fixture) that may itself be inside a running event loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, work).result()


async def _admin(url: str, sql: str) -> None:
    con = await asyncpg.connect(url)
    try:
        await con.execute(sql)
    finally:
        await con.close()


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new, empty database on the server of `url`, dropped after (connections and all)."""
    name = f"gateway_hosts_{uuid.uuid4().hex[:12]}"
    _run_async(_admin(url, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(url, name)
    finally:
        _run_async(_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
