"""Shared fixtures: a controllable clock, a recording upstream, and a real gateway in front of it.

Every gateway test runs the real `create_app(config)` on a real SQLite file with a real upstream
aiohttp server on loopback; only argon2 uses its cheapest profile (argon2.profiles.CHEAPEST) so
the suite stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pg_server
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpClient, AiohttpServer

from gateway.app import create_app
from gateway.config import (
    Config,
    CookiesConfig,
    PasswordsConfig,
    RouteConfig,
    ServerConfig,
    StorageConfig,
    TokensConfig,
)

PASSWORD = "correct horse battery staple 42"
OTHER_PASSWORD = "a different, quite long passphrase 7"


@pytest.fixture(autouse=True)
def _no_gateway_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's GATEWAY_* variables."""
    for name in list(os.environ):
        if name.startswith("GATEWAY_") and name != "GATEWAY_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


class Clock:
    """A clock the test moves by hand; starts at the real time so JWT libraries agree."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Recorder:
    """What reached the upstream: one dict per request (method, raw path, headers, body)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]

    async def record(self, request: web.Request) -> dict[str, Any]:
        """Read the whole request and keep it; return what was kept."""
        entry = {
            "method": request.method,
            "path": request.raw_path,
            "headers": list(request.headers.items()),
            "body": await request.read(),
        }
        self.requests.append(entry)
        return entry


def recording_upstream_app(recorder: Recorder) -> web.Application:
    """An upstream that records every request and echoes it as JSON; a few special paths."""

    async def handler(request: web.Request) -> web.StreamResponse:
        entry = await recorder.record(request)
        if "/set-cookies" in request.path:
            resp = web.Response(text="cookies")
            resp.headers.add("Set-Cookie", "app_a=1; Path=/")
            resp.headers.add("Set-Cookie", "app_b=2; Path=/")
            return resp
        if "/status/" in request.path:
            return web.Response(status=int(request.path.rsplit("/", 1)[1]))
        payload = {k: v for k, v in entry.items() if k != "body"}
        payload["body"] = entry["body"].decode("utf-8", "replace")
        return web.json_response(payload)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def upstream(aiohttp_server: AiohttpServer, recorder: Recorder) -> str:
    server = await aiohttp_server(recording_upstream_app(recorder))
    return str(server.make_url("")).rstrip("/")


def make_config(tmp_path: Path, upstream_url: str = "http://127.0.0.1:9", **sections: Any) -> Config:
    """A test config: SQLite and the key file under tmp_path, argon2 at its cheapest, default routes.

    Keyword arguments replace fields per section: make_config(tmp, url, tokens={"access_ttl": 5}).
    `routes=[...]` takes RouteConfig objects or dicts.
    """
    base = Config(
        server=ServerConfig(public_url="http://localhost:8080"),
        storage=StorageConfig(url=f"sqlite:///{tmp_path / 'gateway.db'}"),
        tokens=TokensConfig(signing_key_file=tmp_path / "keys" / "signing.key"),
        cookies=CookiesConfig(secure=False),
        passwords=PasswordsConfig(argon2_time_cost=1, argon2_memory_kib=8, argon2_parallelism=1),
        routes=(
            RouteConfig(path="/", upstream=upstream_url),
            RouteConfig(path="/public", upstream=upstream_url, auth="public"),
            RouteConfig(path="/optional", upstream=upstream_url, auth="optional"),
            RouteConfig(path="/admin", upstream=upstream_url, roles=("admin",)),
        ),
    )
    changes: dict[str, Any] = {}
    for section, values in sections.items():
        if section == "routes":
            changes["routes"] = tuple(
                r if isinstance(r, RouteConfig) else RouteConfig(**{"upstream": upstream_url, **r})
                for r in values
            )
        else:
            changes[section] = dataclasses.replace(getattr(base, section), **values)
    return dataclasses.replace(base, **changes)


GatewayFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def make_gateway(
    aiohttp_client: AiohttpClient, tmp_path: Path, upstream: str, clock: Clock
) -> AsyncIterator[GatewayFactory]:
    """Build a gateway test client in front of the recording upstream: `await make_gateway(**sections)`."""

    async def factory(**sections: Any) -> Any:
        config = make_config(tmp_path, upstream, **sections)
        app = create_app(config, clock=clock)
        return await aiohttp_client(app)

    yield factory


@pytest.fixture
async def gw(make_gateway: GatewayFactory) -> Any:
    """A gateway with default test settings."""
    return await make_gateway()


async def register(client: Any, email: str = "alice@example.com", password: str = PASSWORD) -> dict[str, Any]:
    resp = await client.post("/auth/register", json={"email": email, "password": password})
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def login(client: Any, email: str = "alice@example.com", password: str = PASSWORD) -> dict[str, Any]:
    resp = await client.post("/auth/login", json={"email": email, "password": password})
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def signed_in(client: Any, email: str = "alice@example.com") -> dict[str, Any]:
    """Register and log in; the client's cookie jar then holds both cookies."""
    await register(client, email)
    return await login(client, email)


def cookie_values(client: Any) -> dict[str, str]:
    return {c.key: c.value for c in client.session.cookie_jar}


def set_cookie_headers(resp: Any) -> list[str]:
    return list(resp.headers.getall("Set-Cookie", []))


# ---- PostgreSQL: one throwaway cluster per test session, for tests/store and the multi-host tests


def _install_postgres_once() -> None:
    """Install the PostgreSQL server packages when they are missing and we may (root with apt-get).

    `make test` does this before pytest starts (tests/install_system_deps.sh); this covers a bare
    `pytest` run on a fresh machine. Without root or apt-get the fixture skips, naming the package.
    """
    apt = shutil.which("apt-get")
    if pg_server.external_url() or pg_server._find_bindir() is not None or apt is None or os.geteuid() != 0:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-qq", "--no-install-recommends", "postgresql"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for argv in ([apt, "update", "-qq"], install):
            subprocess.run(argv, env=env, capture_output=True, timeout=1200, check=False)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[pg_server.PostgresCluster | None]:
    """The session's throwaway PostgreSQL cluster (started once, removed after), or None when the
    server comes from GATEWAY_TEST_POSTGRES_URL. Skips the requesting test, saying why, only when
    PostgreSQL cannot be had at all (not installed and not installable here)."""
    _install_postgres_once()
    reason = pg_server.postgres_available()
    if reason:
        pytest.skip(reason)
    if pg_server.external_url():
        yield None
        return
    with pg_server.running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: pg_server.PostgresCluster | None) -> Iterator[str]:
    """A database for this test session, on the session's cluster or the external server."""
    if postgres_cluster is not None:
        yield postgres_cluster.url
        return
    with pg_server.session_database() as url:
        yield url
