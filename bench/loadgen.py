"""Load wrk cannot make, on aiohttp's client: transparent refreshes (g) and the login storm (i).

    python -m bench.loadgen refresh --url URL --sessions FILE --cookie NAME --duration S
    python -m bench.loadgen logins --url BASE --email E --duration S [--rate 10]

Each run is bounded in time and count and prints one JSON object on stdout. The password comes
from the BENCH_PASSWORD environment variable. Also the helpers the harness uses to register a
user and sign in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.upstream import loop_factory


@dataclass(frozen=True)
class Tokens:
    access_cookie: str  # the access cookie's value
    access_token: str  # from the login JSON body, for `Authorization: Bearer`
    refresh_cookie: str
    expires_in: float
    obtained: float  # time.monotonic() at login


class AuthError(Exception):
    pass


def client(concurrency: int = 32, timeout: float = 30) -> aiohttp.ClientSession:
    """A client that keeps no cookies between requests: every request carries exactly what we set."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


def set_cookies(resp: aiohttp.ClientResponse) -> dict[str, str]:
    """name -> value of every Set-Cookie; "" for a cookie being cleared."""
    found: dict[str, str] = {}
    for header in resp.headers.getall("Set-Cookie", ()):
        name, _, value = header.split(";", 1)[0].partition("=")
        cleared = "max-age=0" in header.lower().replace(" ", "") or not value.strip()
        found[name.strip()] = "" if cleared else value.strip()
    return found


def cookie(found: dict[str, str], name: str) -> str | None:
    """The value of cookie `name` (also under its `__Host-` form), "" when cleared, None when absent."""
    for candidate in (name, "__Host-" + name):
        if candidate in found:
            return found[candidate]
    return None


async def register(http: aiohttp.ClientSession, base: str, email: str, password: str) -> None:
    body = {"email": email, "password": password}
    async with http.post(base + "/auth/register", json=body) as resp:
        text = await resp.text()
        if resp.status not in (200, 201, 409):
            raise AuthError(f"POST /auth/register answered {resp.status}: {text[:300]}")


async def login(
    http: aiohttp.ClientSession, base: str, email: str, password: str, access_name: str, refresh_name: str
) -> Tokens:
    body = {"email": email, "password": password}
    for attempt in range(20):  # 429/503 when the hash queue is full: back off, bounded
        async with http.post(base + "/auth/login", json=body) as resp:
            text = await resp.text()
            if resp.status in (429, 503) and attempt < 19:
                await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))
                continue
            if resp.status != 200:
                raise AuthError(f"POST /auth/login answered {resp.status}: {text[:300]}")
            found = set_cookies(resp)
        break
    try:
        data = json.loads(text)
    except ValueError:
        raise AuthError(f"POST /auth/login answered non-JSON: {text[:300]}") from None
    access, refresh = cookie(found, access_name), cookie(found, refresh_name)
    if not access or not refresh or not isinstance(data, dict) or not data.get("access_token"):
        raise AuthError(
            f"POST /auth/login: expected Set-Cookie {access_name} and {refresh_name} and JSON access_token; "
            f"got cookies {sorted(found)} and keys {sorted(data) if isinstance(data, dict) else type(data)}"
        )
    return Tokens(
        access, str(data["access_token"]), refresh, float(data.get("expires_in", 300)), time.monotonic()
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def refresh_load(
    url: str, sessions: Path, name: str, duration: float, concurrency: int
) -> dict[str, Any]:
    """Requests carrying only a refresh cookie; each session's cookie is kept current from Set-Cookie.

    A session is used by one request at a time (as one browser would); a session whose refresh
    was refused is dropped. The surviving cookies are written back for the next round.
    """
    tokens: deque[str] = deque(json.loads(sessions.read_text()))
    latencies: list[float] = []
    counts: Counter[str] = Counter()
    deadline = time.monotonic() + duration
    workers = max(1, min(concurrency, len(tokens)))

    async def worker(http: aiohttp.ClientSession) -> None:
        while tokens and time.monotonic() < deadline:
            token = tokens.popleft()
            started = time.perf_counter()
            try:
                async with http.get(
                    url, headers={"Cookie": f"{name}={token}"}, allow_redirects=False
                ) as resp:
                    await resp.read()
                    status, fresh = resp.status, cookie(set_cookies(resp), name)
            except (aiohttp.ClientError, TimeoutError) as exc:
                counts[f"error {type(exc).__name__}"] += 1
                tokens.append(token)  # the same token again: reuse grace covers a lost answer
                continue
            latencies.append(time.perf_counter() - started)
            if status == 200 and fresh:
                counts["refreshed"] += 1
                tokens.append(fresh)
            elif status == 200:
                counts["200 without a new refresh cookie"] += 1
                tokens.append(token)
            else:
                counts[f"HTTP {status}"] += 1
                if status < 400 and fresh != "":
                    tokens.append(token)

    async with client(workers, timeout=10) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(workers)))
        elapsed = time.perf_counter() - started
    sessions.write_text(json.dumps(list(tokens)))
    return {
        "requests": len(latencies),
        "refreshes": counts["refreshed"],
        "elapsed": elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "sessions_left": len(tokens),
        "counts": dict(counts),
    }


async def login_storm(base: str, email: str, password: str, rate: float, duration: float) -> dict[str, Any]:
    """Open-loop logins at `rate` per second for `duration`; at most 50 outstanding (extra are skipped)."""
    counts: Counter[str] = Counter()
    latencies: list[float] = []
    pending: set[asyncio.Task[None]] = set()

    async def one(http: aiohttp.ClientSession) -> None:
        started = time.perf_counter()
        try:
            async with http.post(base + "/auth/login", json={"email": email, "password": password}) as resp:
                await resp.read()
                counts[f"HTTP {resp.status}"] += 1
                if resp.status == 200:
                    latencies.append(time.perf_counter() - started)
        except (aiohttp.ClientError, TimeoutError) as exc:
            counts[f"error {type(exc).__name__}"] += 1

    attempts = max(1, int(rate * duration))
    async with client(64, timeout=30) as http:
        start = time.monotonic()
        for i in range(attempts):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            if len(pending) >= 50:
                counts["skipped: 50 outstanding"] += 1
                continue
            task = asyncio.create_task(one(http))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=30)
        elapsed = time.monotonic() - start
    return {
        "attempted": attempts,
        "ok": counts["HTTP 200"],
        "elapsed": elapsed,
        "per_s": counts["HTTP 200"] / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "counts": dict(counts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    sub = parser.add_subparsers(dest="command", required=True)
    refresh = sub.add_parser("refresh", help="requests that each need a transparent refresh")
    refresh.add_argument("--url", required=True)
    refresh.add_argument("--sessions", type=Path, required=True, help="JSON list of refresh cookies; updated")
    refresh.add_argument("--cookie", required=True, help="the refresh cookie's name")
    refresh.add_argument("--duration", type=float, required=True)
    refresh.add_argument("--concurrency", type=int, default=32)
    logins = sub.add_parser("logins", help="a steady stream of logins")
    logins.add_argument("--url", required=True, help="the gateway's base URL")
    logins.add_argument("--email", required=True)
    logins.add_argument("--duration", type=float, required=True)
    logins.add_argument("--rate", type=float, default=10.0)
    args = parser.parse_args()
    duration = min(args.duration, 600.0)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        if args.command == "refresh":
            result = runner.run(
                refresh_load(args.url, args.sessions, args.cookie, duration, args.concurrency)
            )
        else:
            password = os.environ.get("BENCH_PASSWORD", "")
            result = runner.run(login_storm(args.url, args.email, password, args.rate, duration))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
