"""`create_app(config)`: the one place where everything is wired (STYLE.md "one composition root").

`gateway serve` and the tests build the application the same way. Nothing happens at import
time; resources (store, key ring, hashing pool, upstream client, background tasks) are opened
in `cleanup_ctx` and closed in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway import handlers, pages
from gateway.accounts import Accounts
from gateway.config import Config
from gateway.keyring import KeyRing, ensure_key_file
from gateway.keys import (
    ACCOUNTS,
    BACKGROUND,
    CONFIG,
    METRICS,
    PASSWORDS,
    REVOCATIONS,
    ROUTER,
    STORE,
    TOKENS,
    UPSTREAM,
    WEBSOCKETS,
)
from gateway.metrics import Metrics
from gateway.middleware import (
    error_middleware,
    framing_guard,
    on_prepare,
    request_metrics,
    use_gateway_requests,
)
from gateway.passwords import Passwords
from gateway.proxy import add_proxy_routes, close_websockets_of
from gateway.revocation import RevocationList, poll_forever
from gateway.routing import Router
from gateway.store import open_store
from gateway.tokens import AccessTokens
from gateway.upstream import UpstreamClient

HOUSEKEEPING_INTERVAL = 60.0


def handler_args(config: Config) -> dict[str, object]:
    """Server-side protocol settings (AIOHTTP.md §1.17, §4.4; SECURITY B.11 item 134)."""
    return {
        "auto_decompress": False,  # bodies pass through as sent; size caps count wire bytes
        "max_line_size": 16384,
        "max_field_size": 16384,  # legacy SSO cookies exceed aiohttp's 8190 default
        "keepalive_timeout": config.server.keepalive_timeout,
    }


async def _housekeeping(app: web.Application, clock: Callable[[], float]) -> None:
    """Prune caches, pick up a rotated key file, purge dead rows; never on the request path."""
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL)
        with contextlib.suppress(Exception):
            now = clock()
            app[TOKENS].prune(now)
            app[REVOCATIONS].prune(now)
            app[TOKENS].ring.reload()
            await app[STORE].purge(now=now)


def create_app(config: Config, *, clock: Callable[[], float] = time.time) -> web.Application:
    app = web.Application(
        middlewares=[request_metrics, error_middleware, framing_guard],
        client_max_size=handlers.AUTH_BODY_LIMIT,
        handler_args=handler_args(config),
    )
    use_gateway_requests(app)  # parser errors answered without echo or versions (SECURITY 144-145)
    app[CONFIG] = config
    metrics = app[METRICS] = Metrics()
    app.on_response_prepare.append(on_prepare)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        t = config.tokens
        ensure_key_file(t.signing_key_file, t.algorithm)
        ring = KeyRing(t.signing_key_file, t.algorithm)
        store = await open_store(config.storage.url)
        passwords = Passwords(config.passwords)
        upstream = UpstreamClient(
            connect_timeout=config.server.upstream_connect_timeout,
            read_timeout=config.server.upstream_timeout,
        )
        try:
            await passwords.start()
            await upstream.start()
            tokens = AccessTokens(t, ring)
            revocations = RevocationList()
            await revocations.poll(store, clock())
            accounts = Accounts(
                config, store, passwords, tokens, revocations, clock=clock, events=metrics.event
            )
            app[STORE], app[PASSWORDS], app[TOKENS] = store, passwords, tokens
            app[REVOCATIONS], app[ACCOUNTS], app[UPSTREAM] = revocations, accounts, upstream
            app[ROUTER] = Router(config.routes)
            app[WEBSOCKETS] = weakref.WeakSet()
            revocations.on_revocation(lambda entry: close_websockets_of(app, entry))
            app[BACKGROUND] = [
                asyncio.create_task(poll_forever(revocations, store, clock)),
                asyncio.create_task(_housekeeping(app, clock)),
            ]
            yield
        finally:
            for task in app.get(BACKGROUND, []):
                task.cancel()
            await asyncio.gather(*app.get(BACKGROUND, []), return_exceptions=True)
            await upstream.close()
            passwords.close()
            await store.close()

    app.cleanup_ctx.append(resources)
    app.on_shutdown.append(_close_all_websockets)
    pages.setup_pages(app)
    handlers.add_routes(app, config.server.auth_prefix)
    if config.metrics.enabled:
        app.router.add_get(config.metrics.path, handlers.metrics, allow_head=False)
    add_proxy_routes(app)
    return app


async def _close_all_websockets(app: web.Application) -> None:
    for ws in list(app.get(WEBSOCKETS, ())):
        await ws.close(code=1001, message=b"server shutdown")
