"""Operating the gateway as real processes: several instances on one store, workers, shutdown, logs.

Each test runs `python -m gateway serve` (and the example upstream) as child processes on free
ports, with bounded waits, and kills them afterwards whatever happens.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.processes import (
    PASSWORD,
    Gateway,
    bearer,
    child_env,
    free_port,
    http_client,
    jwt_parts,
    login,
    run_cli,
    running_gateway,
    seconds_until,
    status_of,
    upstream_example,
    write_config,
)

pytestmark = pytest.mark.slow
REVOCATION_BOUND = 2.0  # DESIGN §6


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[int]:
    with upstream_example() as port:
        yield port


def add_user(config: Path, email: str) -> None:
    result = run_cli(config, "users", "add", email, "--password-stdin", stdin=PASSWORD)
    assert result.returncode == 0, result.stderr


def access_pids(gateway: Gateway, path: str) -> set[int]:
    """The pids of the processes whose access log lines show requests for `path`."""
    return {
        int(r["pid"])
        for r in gateway.log_records()
        if r.get("logger") == "gateway.access" and r.get("path") == path
    }


async def test_logout_on_one_instance_is_honoured_by_another_within_two_seconds(
    tmp_path: Path, upstream_port: int
) -> None:
    """Two `gateway serve` processes on one SQLite file: a logout on one is honoured by the other in < 2 s."""
    port_a, port_b = free_port(), free_port()
    config_a = write_config(tmp_path, port=port_a, upstream_port=upstream_port, name="a.toml")
    config_b = write_config(tmp_path, port=port_b, upstream_port=upstream_port, name="b.toml")
    add_user(config_a, "roamer@example.com")
    with (
        running_gateway(config_a, port_a, log_name="a.log") as a,
        running_gateway(config_b, port_b, log_name="b.log") as b,
    ):
        async with http_client(a.url) as on_a, http_client(b.url) as on_b:
            token = (await login(on_a, "roamer@example.com"))["access_token"]
            assert await status_of(on_b, "/echo", bearer(token)) == 200  # B verifies A's token
            async with on_a.post("/auth/logout", headers=bearer(token)) as resp:
                assert resp.status == 204
            assert await status_of(on_a, "/echo", bearer(token)) == 401  # at once where it happened
            elapsed = await seconds_until(on_b, "/echo", bearer(token), [401])
            assert elapsed < REVOCATION_BOUND


@dataclass
class Workers:
    gateway: Gateway
    config: Path
    token: str


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, upstream_port: int) -> Iterator[Workers]:
    """A supervisor running `server.workers = 2` on one port, and an access token of a user."""
    folder = tmp_path_factory.mktemp("workers")
    port = free_port()
    config = write_config(folder, port=port, upstream_port=upstream_port, sections={"server": {"workers": 2}})
    add_user(config, "worker@example.com")
    with running_gateway(config, port) as gateway:
        token = asyncio.run(_login_once(gateway.url))
        yield Workers(gateway, config, token)


async def _login_once(url: str) -> str:
    async with http_client(url) as client:
        return str((await login(client, "worker@example.com"))["access_token"])


async def test_both_workers_answer_and_agree_on_tokens_and_revocation(two_workers: Workers) -> None:
    """With workers = 2 both processes serve the port, accept one token and honour its logout in < 2 s."""
    gw = two_workers.gateway
    async with http_client(gw.url, fresh_connections=True) as client:
        # One connection per request: the kernel spreads them over both workers' sockets once both
        # have started (the supervisor does not wait for that), so keep asking for a bounded time.
        deadline = time.monotonic() + 20
        while len(access_pids(gw, "/auth/me")) < 2 and time.monotonic() < deadline:
            for _ in range(10):
                assert await status_of(client, "/auth/me", bearer(two_workers.token)) == 200
            await asyncio.sleep(0.1)
        assert len(access_pids(gw, "/auth/me")) == 2

        # A second session, logged out through whichever worker answers: every worker must refuse it.
        other = (await login(client, "worker@example.com"))["access_token"]
        async with client.post("/auth/logout", headers=bearer(other)) as resp:
            assert resp.status == 204
        start = time.monotonic()
        while time.monotonic() - start < REVOCATION_BOUND:
            statuses = {await status_of(client, "/auth/me", bearer(other)) for _ in range(10)}
            if statuses == {401}:
                break
        assert statuses == {401}
        assert time.monotonic() - start < REVOCATION_BOUND


async def test_a_worker_killed_under_load_is_replaced_and_service_continues(two_workers: Workers) -> None:
    """SIGKILL to a worker mid-load: requests keep succeeding on the other, and a new worker replaces it."""
    gw = two_workers.gateway
    headers = bearer(two_workers.token)
    async with http_client(gw.url, fresh_connections=True) as client:
        for _ in range(20):
            await status_of(client, "/echo/warm", headers)
        before = access_pids(gw, "/echo/warm")
        assert len(before) == 2
        victim = min(before)

        results: list[tuple[float, int]] = []  # (time sent, status or 0 for a connection error)
        killed_at = 0.0

        async def one() -> None:
            sent = time.monotonic()
            try:
                status = await status_of(client, "/echo/load", headers)
            except aiohttp.ClientError:
                status = 0
            results.append((sent, status))

        deadline = time.monotonic() + 25  # bounded: the whole load phase
        while time.monotonic() < deadline:
            await asyncio.gather(*(one() for _ in range(4)))
            if not killed_at and len(results) >= 40:
                os.kill(victim, signal.SIGKILL)
                killed_at = time.monotonic()
            replaced = access_pids(gw, "/echo/load") - before
            if killed_at and replaced and time.monotonic() - killed_at > 1:
                break
        assert killed_at, "the load loop never reached the kill"
        assert replaced, f"no replacement worker served a request within 25 s:\n{gw.log_text()[-2000:]}"
        assert victim not in replaced and gw.proc.poll() is None
        # Requests in flight on the dying worker may fail; every request sent a second later succeeds.
        late = [status for sent, status in results if sent > killed_at + 1]
        assert late and set(late) == {200}
        restarts = [r for r in gw.log_records() if "restarting" in str(r.get("message"))]
        assert len(restarts) == 1 and str(victim) in restarts[0]["message"]


async def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path: Path, upstream_port: int) -> None:
    """SIGTERM to the supervisor lets a slow upload in flight finish with 200, then it exits 0 in time."""
    port = free_port()
    config = write_config(
        tmp_path,
        port=port,
        upstream_port=upstream_port,
        sections={"server": {"workers": 2, "shutdown_timeout": "8s"}},
    )
    add_user(config, "drain@example.com")
    with running_gateway(config, port) as gw:
        async with http_client(gw.url) as client:
            token = (await login(client, "drain@example.com"))["access_token"]
            sent_first = asyncio.Event()
            chunk = b"x" * 65536

            async def slow_body() -> AsyncIterator[bytes]:
                for _ in range(10):  # about 2 s of upload
                    yield chunk
                    sent_first.set()
                    await asyncio.sleep(0.2)

            async def upload() -> tuple[int, Any]:
                async with client.post("/upload", data=slow_body(), headers=bearer(token)) as resp:
                    return resp.status, await resp.json()

            task = asyncio.create_task(upload())
            await asyncio.wait_for(sent_first.wait(), 10)
            await asyncio.sleep(0.3)  # the request is now inside a worker's handler
            signalled = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            status, body = await asyncio.wait_for(task, 15)
            assert status == 200 and body["length"] == 10 * len(chunk)
            exit_status = await asyncio.to_thread(gw.proc.wait, 8 + 5)
            assert exit_status == 0
            assert time.monotonic() - signalled < 8 + 5
        with pytest.raises(aiohttp.ClientConnectionError):  # nobody listens any more
            async with http_client(gw.url) as late:
                await status_of(late, "/auth/health")


async def test_logs_carry_access_lines_and_security_events_but_no_secret(
    tmp_path: Path, upstream_port: int
) -> None:
    """A realistic session's JSON log has access lines and security events, and no token, password,
    cookie or Authorization value."""
    port = free_port()
    # reuse_grace 0s: presenting an already rotated refresh token is reuse at once.
    config = write_config(
        tmp_path, port=port, upstream_port=upstream_port, sections={"tokens": {"reuse_grace": "0s"}}
    )
    email, wrong = "logged@example.com", "not the password, but close 123"
    app_cookie, basic_secret, query_secret = "app-cookie-4f9d2e", "basic-secret-8c1b7a", "query-secret-1e2d3c"
    secrets: set[str] = {PASSWORD, wrong, app_cookie, basic_secret, query_secret}
    with running_gateway(config, port) as gw:
        async with http_client(gw.url) as client:

            def remember_cookies() -> None:
                for cookie in client.cookie_jar:
                    if cookie.key in ("gw_access", "gw_refresh"):
                        secrets.add(cookie.value)

            async with client.post("/auth/register", json={"email": email, "password": PASSWORD}) as resp:
                assert resp.status == 201
            async with client.post("/auth/login", json={"email": email, "password": wrong}) as resp:
                assert resp.status == 401
            issued = await login(client, email)
            secrets.add(issued["access_token"])
            remember_cookies()
            issued_refresh = next(c.value for c in client.cookie_jar if c.key == "gw_refresh")
            client.cookie_jar.update_cookies({"app_session": app_cookie})
            assert await status_of(client, f"/echo/one?api_key={query_secret}") == 200  # cookies
            assert await status_of(client, "/echo/two", bearer(issued["access_token"])) == 200
            async with client.post("/auth/refresh") as resp:
                assert resp.status == 200
                secrets.add((await resp.json())["access_token"])
            remember_cookies()
            # Drop the access cookie: the next proxied request refreshes transparently.
            refresh_only = {c.key: c.value for c in client.cookie_jar if c.key != "gw_access"}
            client.cookie_jar.clear()
            client.cookie_jar.update_cookies(refresh_only)
            assert await status_of(client, "/echo/three") == 200
            remember_cookies()
            cross_site = {"Origin": "http://evil.example"}
            async with client.post("/echo/csrf", data=b"x", headers=cross_site) as resp:
                assert resp.status == 403
            async with http_client(gw.url) as thief:  # a rotated refresh token, presented again
                first_refresh = {"refresh_token": issued_refresh}
                async with thief.post("/auth/refresh", json=first_refresh) as resp:
                    assert resp.status == 401
            issued = await login(client, email)  # reuse revoked that session: a new one
            secrets.add(issued["access_token"])
            remember_cookies()
            basic = "Basic " + base64.b64encode(f"someone:{basic_secret}".encode()).decode()
            assert await status_of(client, "/public/about", {"Authorization": basic}) == 200
            async with client.post("/auth/logout") as resp:
                assert resp.status == 204
            async with client.post(
                "/auth/login", json={"email": "nobody@example.com", "password": wrong}
            ) as resp:
                assert resp.status == 401
        await asyncio.sleep(0.3)  # let the last lines reach the file
        text = gw.log_text()
        records = gw.log_records()

    assert len(secrets) >= 13  # 2 passwords, 4 access and 4 refresh tokens, and the fixed secrets
    signatures = {s.rsplit(".", 1)[1] for s in secrets if s.count(".") == 2}  # a JWT's signature alone
    leaked = [s for s in secrets | signatures if s in text]
    assert not leaked, "secrets found in the log"
    assert "Bearer " not in text and "Basic " not in text and "api_key" not in text

    access = [r for r in records if r.get("logger") == "gateway.access"]
    paths = {(r["path"], r["status"]) for r in access}
    assert {("/echo/one", 200), ("/echo/two", 200), ("/echo/three", 200), ("/auth/logout", 204)} <= paths
    assert all(
        r.get("user_id") and r.get("session_id")
        for r in access
        if r["status"] == 200 and r["path"].startswith("/echo/")
    )
    security = [str(r["message"]) for r in records if r.get("logger") == "gateway.security"]
    assert sum("login failed" in m for m in security) == 2
    assert any("reason=logout" in m for m in security)
    assert any("csrf blocked" in m for m in security)
    assert any("reuse detected" in m for m in security)
    assert jwt_parts(issued["access_token"])[1]["sub"] in text  # user ids are logged; tokens are not


def test_supervisor_gives_up_when_workers_die_at_start(tmp_path: Path, upstream_port: int) -> None:
    """Workers that cannot even start (their port is taken) are not restarted forever: the
    supervisor gives up with exit status 1 and says why."""
    port = free_port()
    config = write_config(
        tmp_path, port=port, upstream_port=upstream_port, sections={"server": {"workers": 2}}
    )
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))  # no SO_REUSEPORT: every worker's bind fails
    blocker.listen()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        blocker.close()
    assert proc.returncode == 1
    assert "giving up" in proc.stderr
