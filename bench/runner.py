"""One benchmark run: start the contenders, alternate the scenarios round by round, stop everything.

CPU placement (when the machine has at least two CPUs): the process under test (the upstream in
(a), the proxy otherwise) runs on the first CPU the harness may use; wrk, the upstream, the Python
load generators and the harness itself run on the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import loadgen, procs, wrk
from bench.procs import Proc, Procs, StartError
from bench.results import Results
from bench.servers import ACCESS_COOKIE, REFRESH_COOKIE, ROOT, Servers

GATEWAY_KEYS = "defghij"
WRK_KEYS = "abcdefil"
EMAIL = "bench@example.com"


@dataclass(frozen=True)
class Options:
    only: str  # scenario keys, in order
    duration: float
    rounds: int
    connections: int
    stream_bytes: int
    sessions: int
    idle_connections: int
    storm_rate: float
    access_log: bool
    keep: bool
    record: bool


class BenchError(Exception):
    pass


class Bench:
    def __init__(self, options: Options, tools: dict[str, str | None]) -> None:
        self.opt = options
        self.tools = tools
        self.results = Results()
        self.procs = Procs()
        self.tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
        self.password = "bench-" + secrets.token_urlsafe(24)
        self.tokens: loadgen.Tokens | None = None
        self.sessions_file = self.tmp / "sessions.json"
        self.round = 0
        self.running: dict[str, Proc] = {}
        cpus = sorted(os.sched_getaffinity(0))
        self.pinned = len(cpus) >= 2
        self.proxy_cpus = set(cpus[:1]) if self.pinned else set(cpus)
        self.load_cpus = set(cpus[1:]) if self.pinned else set(cpus)

    # --- lifecycle ------------------------------------------------------------------------------
    async def run(self, scenarios: dict[str, Callable[[Bench], Awaitable[None]]]) -> Results:
        raise_fd_limit()
        if self.pinned:  # children inherit this; servers under test are moved afterwards
            os.sched_setaffinity(0, self.load_cpus)
        async with loadgen.client(64, timeout=30) as http:
            self.http = http
            self.servers = Servers(self.procs, http, self.tmp, self.opt.access_log)
            try:
                await self.setup()
                for number in range(1, self.opt.rounds + 1):
                    self.round = number
                    for key in self.opt.only:
                        if self.skipped(key):
                            continue
                        say(f"round {number}/{self.opt.rounds}: ({key})")
                        try:
                            await scenarios[key](self)
                        except Exception as exc:  # one failed measurement must not end the run
                            text = str(exc) or type(exc).__name__
                            self.note(key, text)
                            say(f"  ({key}) failed: {type(exc).__name__}: {text}")
                        await asyncio.sleep(0.5)
            finally:
                await self.procs.stop_all()
                if self.opt.keep:
                    say(f"kept the run's folder: {self.tmp}")
                else:
                    shutil.rmtree(self.tmp, ignore_errors=True)
        return self.results

    def note(self, key: str, text: str) -> None:
        """A remark on this round's measurement (errors, refusals), shown under the tables."""
        self.results.note(key, f"round {self.round}: {text}")

    def skipped(self, key: str) -> bool:
        return any(n.startswith("skipped") for n in self.results.notes.get(key, ()))

    def skip(self, keys: str, why: str) -> None:
        for key in keys:
            if key in self.opt.only:
                self.results.note(key, f"skipped: {why}")

    async def setup(self) -> None:
        keys = self.opt.only
        if any(k in WRK_KEYS for k in keys) and not self.tools.get("wrk"):
            self.skip(WRK_KEYS, "wrk is not installed")
        self.running["upstream"] = await self.servers.upstream()
        for key, name in (("b", "nginx"), ("c", "caddy")):
            if key not in keys:
                continue
            path = self.tools.get(name)
            if path is None:
                self.skip(key, f"{name} is not installed")
                continue
            try:
                started = await (self.servers.nginx(path) if name == "nginx" else self.servers.caddy(path))
            except StartError as exc:
                say(str(exc))
                self.skip(key, f"{name} did not start ({str(exc).splitlines()[0]})")
                continue
            procs.pin(started.pid, self.proxy_cpus)
            self.running[name] = started
        if any(k in GATEWAY_KEYS for k in keys):
            await self.setup_gateway()

    async def setup_gateway(self) -> None:
        max_body = max(2 * self.opt.stream_bytes, 100 * 1024 * 1024)
        try:
            gateway = await self.servers.gateway(max_body)
        except StartError as exc:
            say(f"gateway did not start; skipping its scenarios.\n{exc}")
            self.skip(GATEWAY_KEYS, f"gateway did not start ({str(exc).splitlines()[0]})")
            return
        procs.pin(gateway.pid, self.proxy_cpus)
        self.running["gateway"] = gateway
        if not any(k in "efgi" for k in self.opt.only):
            return
        try:
            await loadgen.register(self.http, self.base, EMAIL, self.password)
            await self.signed_in()
        except (loadgen.AuthError, aiohttp.ClientError, TimeoutError) as exc:
            self.skip("efgi", f"could not sign in ({exc})")

    # --- helpers for the scenarios --------------------------------------------------------------
    @property
    def base(self) -> str:
        return self.servers.url("gateway", "")

    async def signed_in(self) -> loadgen.Tokens:
        """A login's tokens, renewed when older than half the access token's lifetime."""
        tokens = self.tokens
        if tokens is None or time.monotonic() - tokens.obtained > tokens.expires_in / 2:
            tokens = await loadgen.login(
                self.http, self.base, EMAIL, self.password, ACCESS_COOKIE, REFRESH_COOKIE
            )
            self.tokens = tokens
        return tokens

    @contextlib.asynccontextmanager
    async def helpers_anywhere(self, pid: int | None = None) -> AsyncIterator[None]:
        """Let the gateway's helper threads (argon2 hashing, SQLite) use every CPU meanwhile.

        `pid` is the gateway process (default: the SQLite gateway). Each process's main thread
        (the event loop) stays where it is. Threads started later inherit their creator's
        affinity, so they are re-placed every 100 ms.
        """
        if pid is None:
            pid = self.running["gateway"].pid
        everywhere = self.proxy_cpus | self.load_cpus
        stop = asyncio.Event()

        members = procs.tree(pid)  # once: scanning /proc every 100 ms would load the wrk CPU

        async def keep_floating() -> None:
            while not stop.is_set():
                procs.pin_helpers(members, everywhere)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)

        task = asyncio.create_task(keep_floating())
        try:
            yield
        finally:
            stop.set()
            await task
            procs.pin(pid, self.proxy_cpus)

    async def make_sessions(self) -> None:
        """`opt.sessions` logins (4 at a time), their refresh cookies saved for the load generator."""
        say(f"  signing in {self.opt.sessions} sessions for (g)")
        gate = asyncio.Semaphore(4)

        async def one() -> str:
            async with gate:
                login = loadgen.login(
                    self.http, self.base, EMAIL, self.password, ACCESS_COOKIE, REFRESH_COOKIE
                )
                return (await login).refresh_cookie

        async with self.helpers_anywhere():
            cookies = await asyncio.gather(*(one() for _ in range(self.opt.sessions)))
        self.sessions_file.write_text(json.dumps(cookies))

    async def probe(self, url: str, headers: dict[str, str] | None = None) -> None:
        """One request before measuring: the load must hit a 200, not an error page."""
        async with self.http.get(url, headers=headers, allow_redirects=False) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise BenchError(f"probe GET {url} answered {resp.status} {body[:120]!r}; not measured")

    async def wrk(self, url: str, headers: dict[str, str] | None = None) -> wrk.WrkResult:
        path = self.tools.get("wrk")
        if path is None:
            raise BenchError("wrk is not installed")
        return await wrk.run(
            path,
            url,
            duration=self.opt.duration,
            connections=self.opt.connections,
            headers=headers,
            cpus=self.load_cpus,
        )

    async def python(
        self, module: str, args: list[str], timeout: float, env: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Run `python -m bench.<module> …` to completion; its last stdout line is JSON."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"bench.{module}",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise BenchError(f"bench.{module} {args[0]} did not finish within {timeout:.0f}s") from None
        lines = out.decode().strip().splitlines()
        if proc.returncode != 0 or not lines:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            raise BenchError(f"bench.{module} {args[0]} failed ({proc.returncode}): {' | '.join(tail)}")
        data: dict[str, Any] = json.loads(lines[-1])
        return data


def raise_fd_limit() -> None:
    """2,000 client connections plus the proxies' own need more than the usual 1,024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


async def measure_storm(bench: Bench, key: str, url: str, headers: dict[str, str], base: str) -> None:
    """Signed-in p99 at `url` idle, then while `storm_rate` logins per second run against `base`;
    recorded under scenario `key` ((i) on SQLite, (l) on PostgreSQL). The caller decides where
    the gateway's threads may run."""
    await bench.probe(url, headers)
    idle = await bench.wrk(url, headers)
    duration = bench.opt.duration
    args = ["logins", "--url", base, "--email", EMAIL, "--duration", str(duration + 2)]
    args += ["--rate", str(bench.opt.storm_rate)]
    logins = asyncio.create_task(
        bench.python("loadgen", args, timeout=duration + 60, env={"BENCH_PASSWORD": bench.password})
    )
    await asyncio.sleep(1.0)
    try:
        busy = await bench.wrk(url, headers)
    finally:
        data = await logins
    if idle.errors or busy.errors:
        bench.note(key, f"wrk errors: {idle.errors} idle, {busy.errors} during the storm")
    failed = {k: v for k, v in data["counts"].items() if k != "HTTP 200"}
    if failed:
        bench.note(key, f"logins not 200: {failed}")
    bench.results.add(
        key,
        {
            "idle_p99_ms": idle.p99_ms,
            "storm_p99_ms": busy.p99_ms,
            "idle_rps": idle.rps,
            "storm_rps": busy.rps,
            "logins_per_s": data["per_s"],
            "login_p50_ms": data["p50_ms"],
        },
    )
