"""Three `gateway serve` processes on one PostgreSQL database, in front of a real upstream_example.

What several hosts behind a load balancer must get right (DESIGN §6): a browser bouncing between
instances while its access token expires every few seconds is never signed out; a logout or a
detected token theft on one instance is honoured by the others within 2 s.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from gateway_processes import (
    ACCESS_COOKIE,
    PASSWORD,
    REFRESH_COOKIE,
    Child,
    Children,
    fresh_database,
    gateway_toml,
    wait_ready,
)

from gateway.keyring import ensure_key_file

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

INSTANCES = 3
ACCESS_TTL = 3.0  # seconds: the browser refreshes about 20 times a minute
REUSE_GRACE = 3.0
PROPAGATION = 2.0  # DESIGN §6: revocation is effective on every other process within 2 s
BROWSING = 60.0  # seconds of round-robin browsing
TABS = 6  # requests in flight at once
PAUSE = 0.05  # seconds between one tab's requests: bounds the load on a shared 2-core machine
MAX_REQUESTS_PER_TAB = 2000


@dataclass
class Fleet:
    urls: list[str]
    gateways: list[Child]
    children: Children

    def logs(self) -> str:
        return "\n".join(f"--- {g.name}\n{g.tail(15)}" for g in self.gateways)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Fleet]:
    """Upstream + three gateways sharing one fresh database, one key file and one config file."""
    folder = tmp_path_factory.mktemp("fleet")
    children = Children(folder)
    try:
        with fresh_database(postgres_url) as database:
            upstream = children.upstream()
            tokens = {"access_ttl": f"{ACCESS_TTL:g}s", "leeway": "0s", "reuse_grace": f"{REUSE_GRACE:g}s"}
            config = folder / "gateway.toml"
            config.write_text(gateway_toml(storage_url=database, upstream_url=upstream.url, tokens=tokens))
            # Written once, before any instance starts: every instance must read the same key.
            ensure_key_file(folder / "keys" / "signing.key", "HS256")
            gateways = [children.gateway(config, f"gateway-{i}") for i in range(INSTANCES)]
            for gateway in gateways:
                wait_ready(gateway, gateway.url + "/auth/health")
            yield Fleet([g.url for g in gateways], gateways, children)
            children.stop_all()  # before the database is dropped under them
    finally:
        children.stop_all()


@asynccontextmanager
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    """A browser-like client: a cookie jar shared by all instances (cookies ignore ports)."""
    jar = aiohttp.CookieJar(unsafe=True)  # unsafe: keep cookies for an IP address host
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=15)) as http:
        yield http


@asynccontextmanager
async def raw_client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that sends exactly the cookies and headers it is given (an attacker, a probe)."""
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=15)
    ) as http:
        yield http


async def sign_in(http: aiohttp.ClientSession, base: str, email: str) -> dict[str, Any]:
    """Register and log in through `base`; returns the login body (access_token, user)."""
    async with http.post(base + "/auth/register", json={"email": email, "password": PASSWORD}) as resp:
        assert resp.status == 201, await resp.text()
    async with http.post(base + "/auth/login", json={"email": email, "password": PASSWORD}) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
    return body


def jar_cookie(http: aiohttp.ClientSession, name: str) -> str:
    values = [c.value for c in http.cookie_jar if c.key == name]
    assert values, f"no {name} cookie in the jar"
    return values[0]


async def whoami(http: aiohttp.ClientSession, base: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.get(base + "/api/whoami", allow_redirects=False, **kwargs) as resp:
        body = await resp.json(content_type=None) if resp.status == 200 else await resp.text()
        return resp.status, body


async def refused_after(http: aiohttp.ClientSession, base: str, started: float, **kwargs: Any) -> float:
    """Seconds from `started` until `base` refuses the request (401); fails after 3 × PROPAGATION."""
    while True:
        status, body = await whoami(http, base, **kwargs)
        elapsed = time.monotonic() - started
        if status == 401:
            return elapsed
        assert status == 200, body
        assert elapsed < 3 * PROPAGATION, f"{base} still accepts the token after {elapsed:.1f}s"
        await asyncio.sleep(0.05)


def refresh_outcomes(metrics: str) -> dict[str, float]:
    """`gateway_refreshes_total{outcome="…"} N` lines of a Prometheus exposition."""
    found = re.findall(r'^gateway_refreshes_total\{outcome="(\w+)"\} ([0-9.e+]+)$', metrics, re.MULTILINE)
    return {outcome: float(value) for outcome, value in found}


async def test_browser_bouncing_between_instances_for_a_minute_is_never_signed_out(fleet: Fleet) -> None:
    """Round-robin requests, 6 at a time, for 60 s with a 3 s access token: every one is 200 with
    the same identity, and the refreshes (racing on one refresh token) happen on every instance."""
    async with browser() as http:
        login = await sign_in(http, fleet.urls[0], "roaming@example.com")
        user_id = login["user"]["id"]
        status, first = await whoami(http, fleet.urls[1])
        assert status == 200 and first["user_id"] == user_id, first
        session_id = first["session_id"]

        turn = itertools.count()
        failures: list[str] = []
        refreshes: Counter[int] = Counter()
        served: Counter[int] = Counter()
        deadline = time.monotonic() + BROWSING

        async def tab() -> None:
            for _ in range(MAX_REQUESTS_PER_TAB):
                if failures or time.monotonic() >= deadline:
                    return
                i = next(turn) % INSTANCES
                async with http.get(fleet.urls[i] + "/api/whoami", allow_redirects=False) as resp:
                    status, text = resp.status, await resp.text()
                    cookies = resp.headers.getall("Set-Cookie", [])
                identity = json.loads(text) if status == 200 else {}
                if identity.get("user_id") != user_id or identity.get("session_id") != session_id:
                    at = BROWSING - (deadline - time.monotonic())
                    failures.append(f"instance {i} at {at:.1f}s: HTTP {status} {text[:200]}")
                    return
                served[i] += 1
                refreshes[i] += any(c.startswith(REFRESH_COOKIE + "=") for c in cookies)
                await asyncio.sleep(PAUSE)

        await asyncio.gather(*(tab() for _ in range(TABS)))

    assert not failures, "\n".join(failures) + "\n" + fleet.logs()
    assert sorted(served) == list(range(INSTANCES)) and min(served.values()) > 100, served
    # About one refresh per access-token lifetime, answered by several instances at once each time.
    assert sum(refreshes.values()) >= BROWSING / ACCESS_TTL / 2, refreshes
    assert all(refreshes[i] for i in range(INSTANCES)), refreshes
    # The instances' own counts: rotations, and retries of a token another instance had just
    # rotated, answered through the grace path; never a false theft alarm.
    outcomes: Counter[str] = Counter()
    async with raw_client() as probe:
        for url in fleet.urls:
            async with probe.get(url + "/metrics") as resp:
                assert resp.status == 200
                outcomes.update(refresh_outcomes(await resp.text()))
    assert outcomes["rotated"] >= BROWSING / ACCESS_TTL / 2 and outcomes["grace"] > 0, outcomes
    assert outcomes["reuse_detected"] == 0, outcomes


async def test_logout_on_one_instance_is_honoured_by_the_others_within_2s(fleet: Fleet) -> None:
    """After a logout on instance 1, the session's access token (cookie or Bearer) stops working on
    instances 0 and 2 within 2 s, and its refresh token is dead everywhere at once."""
    async with browser() as http, raw_client() as probe:
        login = await sign_in(http, fleet.urls[0], "leaving@example.com")
        access, refresh = jar_cookie(http, ACCESS_COOKIE), jar_cookie(http, REFRESH_COOKIE)
        bearer = {"Authorization": f"Bearer {login['access_token']}"}
        cookie = {"Cookie": f"{ACCESS_COOKIE}={access}"}
        for url in fleet.urls:  # every instance has verified (and cached) both
            assert (await whoami(probe, url, headers=bearer))[0] == 200
            assert (await whoami(probe, url, headers=cookie))[0] == 200

        async with http.post(fleet.urls[1] + "/auth/logout") as resp:
            assert resp.status == 204, await resp.text()
        logged_out = time.monotonic()

        assert (await whoami(probe, fleet.urls[1], headers=bearer))[0] == 401  # at once where it happened
        waits = await asyncio.gather(
            *(
                refused_after(probe, fleet.urls[i], logged_out, headers=headers)
                for i in (0, 2)
                for headers in (bearer, cookie)
            )
        )
        assert max(waits) <= PROPAGATION, waits
        async with probe.post(
            fleet.urls[2] + "/auth/refresh", headers={"Cookie": f"{REFRESH_COOKIE}={refresh}"}
        ) as resp:
            assert resp.status == 401, await resp.text()


async def test_stolen_refresh_token_replayed_on_another_instance_revokes_the_session(fleet: Fleet) -> None:
    """A refresh token rotated on instance 0 and replayed after reuse_grace on instance 1 is theft:
    the session dies on every instance (its access token within 2 s, its refresh token at once)."""
    async with browser() as http, raw_client() as attacker:
        await sign_in(http, fleet.urls[0], "victim@example.com")
        stolen = jar_cookie(http, REFRESH_COOKIE)
        async with http.post(fleet.urls[0] + "/auth/refresh") as resp:  # the victim's rotation
            assert resp.status == 200, await resp.text()
            current = await resp.json()
        assert jar_cookie(http, REFRESH_COOKIE) != stolen
        bearer = {"Authorization": f"Bearer {current['access_token']}"}
        for url in fleet.urls:
            assert (await whoami(attacker, url, headers=bearer))[0] == 200

        await asyncio.sleep(REUSE_GRACE + 0.5)
        async with attacker.post(
            fleet.urls[1] + "/auth/refresh", headers={"Cookie": f"{REFRESH_COOKIE}={stolen}"}
        ) as resp:
            assert resp.status == 401, await resp.text()
        detected = time.monotonic()

        waits = await asyncio.gather(
            *(refused_after(attacker, fleet.urls[i], detected, headers=bearer) for i in (0, 2))
        )
        assert max(waits) <= PROPAGATION, waits
        async with http.post(fleet.urls[2] + "/auth/refresh") as resp:  # the victim's own token too
            assert resp.status == 401, await resp.text()
