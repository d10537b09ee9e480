"""Every typed application key, in one place (aiohttp AppKey; STYLE.md "typed shared state")."""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.accounts import Accounts
from gateway.config import Config
from gateway.metrics import Metrics
from gateway.passwords import Passwords
from gateway.revocation import RevocationList
from gateway.store import Store
from gateway.tokens import AccessTokens

if TYPE_CHECKING:
    from gateway.routing import Router
    from gateway.upstream import UpstreamClient

CONFIG = web.AppKey("config", Config)
STORE: web.AppKey[Store] = web.AppKey("store")
PASSWORDS = web.AppKey("passwords", Passwords)
TOKENS = web.AppKey("tokens", AccessTokens)
REVOCATIONS = web.AppKey("revocations", RevocationList)
METRICS = web.AppKey("metrics", Metrics)
ACCOUNTS = web.AppKey("accounts", Accounts)
UPSTREAM: web.AppKey[UpstreamClient] = web.AppKey("upstream")
ROUTER: web.AppKey[Router] = web.AppKey("router")
WEBSOCKETS: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey("websockets")
BACKGROUND: web.AppKey[list[asyncio.Task[None]]] = web.AppKey("background")

# Per-request and per-response storage (aiohttp 3.14 wants typed keys there too).
ADDRESS: web.RequestKey[tuple[str, bool]] = web.RequestKey("address")  # (client address, peer trusted)
DECISION: web.RequestKey[object] = web.RequestKey("decision")  # proxy.Decision or the ending response
NO_CONTENT_TYPE: web.RequestKey[bool] = web.RequestKey("no_content_type")
WS_SESSION: web.ResponseKey[tuple[str, str, int]] = web.ResponseKey("ws_session")  # (sid, user id, ver)
