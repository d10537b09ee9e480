"""Real-browser fixtures: one headless Chromium for the whole session, a real gateway in front of
a real `upstream_example` per test, and a screenshot of the page whenever a journey fails.

The browser is Debian's Chromium driven by Playwright through `executable_path`: no browser is
ever downloaded, and the launch flags keep it off the network. Servers listen on loopback sockets
bound before the gateway is configured, so `public_url` is exactly the origin the browser sees
(CSRF checks compare against it) and no other process can take the port in between.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

import upstream_example
from gateway.app import create_app
from gateway.config import Config
from gateway.keys import ACCOUNTS, CONFIG
from gateway.store import SessionRecord, UserRecord
from tests.conftest import PASSWORD, make_config

# Debian's package (`make test` installs it when missing); the only browser these tests use.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).parent / "artifacts"  # git-ignored
TIMEOUT_MS = 10_000  # far above what any step takes here; a hung step fails fast and is screenshotted

PHASE_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Keep each phase's report on the item, so the page fixture knows whether the test failed."""
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    return report


# ---- the browser --------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"browser journeys need Debian's chromium at {CHROMIUM} (`make system-deps` installs it)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="session")
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh profile per test: no cookie or cache leaks from one journey into the next."""
    ctx = await browser.new_context()
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    await ctx.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(context: BrowserContext, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A tab; when the test fails, its last view is saved under tests/e2e/artifacts/."""
    tab = await context.new_page()
    yield tab
    report = request.node.stash.get(PHASE_REPORTS, {}).get("call")
    if report is not None and report.failed and not tab.is_closed():
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("/")[-1])
        await tab.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


# ---- the servers --------------------------------------------------------------------------------


def loopback_socket() -> tuple[socket.socket, str]:
    """A listening-ready socket on a free loopback port, and the origin browsers use to reach it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


async def serve(app: web.Application, sock: socket.socket) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


@dataclass
class Servers:
    """A running gateway (`url` is also its public_url) in front of a running upstream_example."""

    url: str
    app: web.Application
    upstream: web.Application
    upstream_requests: list[str] = field(default_factory=list)  # "METHOD /path?query", in order

    @property
    def config(self) -> Config:
        return self.app[CONFIG]

    async def add_user(self, email: str = "alice@example.com", password: str = PASSWORD) -> UserRecord:
        return await self.app[ACCOUNTS].register(email, password)

    async def live_sessions(self, user_id: str) -> list[SessionRecord]:
        return await self.app[ACCOUNTS].sessions_of(user_id)


StartServers = Callable[..., Awaitable[Servers]]


@pytest_asyncio.fixture(loop_scope="session")
async def start_servers(tmp_path: Path) -> AsyncIterator[StartServers]:
    """`await start_servers(tokens={"access_ttl": 2})`: sections as in tests.conftest.make_config."""
    runners: list[web.AppRunner] = []

    async def start(**sections: Any) -> Servers:
        seen: list[str] = []

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path != "/favicon.ico":  # the browser's own fetch, not a page anyone opened
                seen.append(f"{request.method} {request.path_qs}")
            response: web.StreamResponse = await handler(request)
            return response

        upstream = upstream_example.create_app()
        upstream.middlewares.append(record)
        up_sock, up_url = loopback_socket()
        runners.append(await serve(upstream, up_sock))

        gw_sock, gw_url = loopback_socket()
        server = {"public_url": gw_url, **sections.pop("server", {})}
        app = create_app(make_config(tmp_path, up_url, server=server, **sections))
        runners.append(await serve(app, gw_sock))
        return Servers(url=gw_url, app=app, upstream=upstream, upstream_requests=seen)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def servers(start_servers: StartServers) -> Servers:
    """The gateway with the default test settings."""
    return await start_servers()


@pytest_asyncio.fixture(loop_scope="session")
async def other_origin() -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """`await other_origin(html)`: serve one page from another loopback port; returns its URL."""
    runners: list[web.AppRunner] = []

    async def start(html: str) -> str:
        async def page(request: web.Request) -> web.Response:
            return web.Response(text=html, content_type="text/html")

        app = web.Application()
        app.router.add_get("/", page)
        sock, url = loopback_socket()
        runners.append(await serve(app, sock))
        return url + "/"

    yield start
    for runner in runners:
        await runner.cleanup()
