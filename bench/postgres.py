"""(k) and (l): the transparent-refresh and login scenarios on PostgreSQL, next to SQLite's (g) and (i).

The first of them to run starts a throwaway PostgreSQL cluster (tests/pg_server.py: a temporary
folder, a free loopback port, removed when the harness exits) and a second gateway, generated
exactly like the SQLite one but for `[storage] url`. The gateway under test runs on the proxy CPU
as usual; the PostgreSQL server (postmaster and backends) runs on the load CPUs, as a database on
another host would, and its CPU time is reported apart from the gateway's.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp

from bench import loadgen, procs
from bench.procs import Proc, StartError, free_port, wait_http
from bench.results import Results
from bench.runner import EMAIL, Bench, BenchError, measure_storm, say
from bench.servers import ACCESS_COOKIE, REFRESH_COOKIE, ROOT, gateway_toml

NAME = "gateway-pg"
KEYS = "kl"


def _pg_server() -> ModuleType:
    """tests/pg_server.py, the test suite's throwaway-cluster code (tests/ is not a package)."""
    path = ROOT / "tests" / "pg_server.py"
    spec = importlib.util.spec_from_file_location("gateway_bench_pg_server", path)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _install_postgresql(pg: ModuleType) -> None:
    """apt-get install postgresql when its server programs are missing and we are root."""
    apt = shutil.which("apt-get")
    if pg._find_bindir() is not None or apt is None or os.geteuid() != 0:
        return
    say("installing postgresql (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        [apt, "update", "-qq"],
        [apt, "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
    ):
        subprocess.run(argv, stdout=subprocess.DEVNULL, env=env, check=False, timeout=1200)


@dataclass
class PostgresSide:
    cluster: Any  # pg_server.PostgresCluster
    gateway: Proc
    postmaster: int
    sessions_file: Path


# A run's PostgreSQL side, or None once starting it failed (the scenarios are then skipped).
_SIDES: weakref.WeakKeyDictionary[Bench, PostgresSide | None] = weakref.WeakKeyDictionary()


def _postmaster(cluster: Any) -> int:
    return int((Path(cluster.data) / "postmaster.pid").read_text().split()[0])


def _pg_gateway_toml(bench: Bench, folder: Path, port: int, url: str) -> str:
    """The SQLite gateway's generated configuration with only `[storage] url` changed."""
    max_body = max(2 * bench.opt.stream_bytes, 100 * 1024 * 1024)
    upstream = bench.servers.ports["upstream"]
    text = gateway_toml(folder, port, upstream, max_body, bench.opt.access_log)
    changed, count = re.subn(r'(?m)^url = "sqlite:///[^"\n]*"$', f'url = "{url}"', text)
    if count != 1:
        raise BenchError("could not find the [storage] url line in the generated gateway configuration")
    return changed


async def _side(bench: Bench) -> PostgresSide | None:
    """The cluster and its gateway, started on first use; None (scenarios skipped) when impossible."""
    if bench in _SIDES:
        return _SIDES[bench]
    _SIDES[bench] = None  # until it has started
    pg = _pg_server()
    _install_postgresql(pg)
    reason = pg.postgres_available()
    if reason:
        bench.skip(KEYS, reason)
        return None
    say("starting a throwaway PostgreSQL cluster for (k)/(l)")
    stack = contextlib.ExitStack()
    atexit.register(stack.close)  # after the harness has stopped the gateway using it
    try:
        cluster = await asyncio.to_thread(stack.enter_context, pg.running_cluster())
    except RuntimeError as exc:
        bench.skip(KEYS, f"PostgreSQL did not start ({str(exc).splitlines()[0]})")
        return None
    postmaster = _postmaster(cluster)
    procs.pin(postmaster, bench.load_cpus)  # backends forked later inherit it
    folder = bench.tmp / NAME
    (folder / "keys").mkdir(parents=True, exist_ok=True)
    port = free_port()
    bench.servers.ports[NAME] = port
    conf = folder / "gateway.toml"
    conf.write_text(_pg_gateway_toml(bench, folder, port, cluster.url))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(conf)]
    gateway = await bench.procs.start(NAME, argv, folder / "output.log", cwd=folder, env=env)
    try:
        await wait_http(bench.http, gateway, bench.servers.url(NAME, "/auth/health"), timeout=60)
    except StartError as exc:
        say(f"{NAME} did not start; skipping (k) and (l).\n{exc}")
        bench.skip(KEYS, f"{NAME} did not start ({str(exc).splitlines()[0]})")
        return None
    procs.pin(gateway.pid, bench.proxy_cpus)
    bench.running[NAME] = gateway
    try:
        await loadgen.register(bench.http, _base(bench), EMAIL, bench.password)
    except (loadgen.AuthError, aiohttp.ClientError, TimeoutError) as exc:
        bench.skip(KEYS, f"could not sign in on {NAME} ({exc})")
        return None
    side = PostgresSide(cluster, gateway, postmaster, bench.tmp / "sessions-pg.json")
    _SIDES[bench] = side
    return side


def _base(bench: Bench) -> str:
    return bench.servers.url(NAME, "")


async def _login(bench: Bench) -> loadgen.Tokens:
    return await loadgen.login(bench.http, _base(bench), EMAIL, bench.password, ACCESS_COOKIE, REFRESH_COOKIE)


async def _make_sessions(bench: Bench, side: PostgresSide) -> None:
    say(f"  signing in {bench.opt.sessions} sessions for (k)")
    gate = asyncio.Semaphore(4)

    async def one() -> str:
        async with gate:
            return (await _login(bench)).refresh_cookie

    async with bench.helpers_anywhere(side.gateway.pid):
        cookies = await asyncio.gather(*(one() for _ in range(bench.opt.sessions)))
    side.sessions_file.write_text(json.dumps(cookies))


async def refresh(bench: Bench) -> None:
    """(k) = (g) on PostgreSQL: every request carries only a refresh cookie."""
    side = await _side(bench)
    if side is None:
        return
    if not side.sessions_file.exists():
        await _make_sessions(bench, side)
    gateway_before = procs.cpu_seconds(side.gateway.pid)
    db_before = procs.cpu_seconds(side.postmaster)
    args = ["refresh", "--url", bench.servers.url(NAME, "/"), "--sessions", str(side.sessions_file)]
    args += ["--cookie", REFRESH_COOKIE, "--duration", str(bench.opt.duration), "--concurrency", "32"]
    data = await bench.python("loadgen", args, timeout=bench.opt.duration + 60)
    gateway_used = procs.cpu_seconds(side.gateway.pid) - gateway_before
    db_used = procs.cpu_seconds(side.postmaster) - db_before
    if not data["requests"]:
        raise BenchError(f"no request completed: {data['counts']}")
    other = {k: v for k, v in data["counts"].items() if k != "refreshed"}
    if other:
        bench.note("k", f"not refreshed: {other}")
    if data["sessions_left"] < bench.opt.sessions:
        bench.note("k", f"{data['sessions_left']} of {bench.opt.sessions} sessions left")
    bench.results.add(
        "k",
        {
            "rps": data["refreshes"] / data["elapsed"],
            "p50_ms": data["p50_ms"],
            "p99_ms": data["p99_ms"],
            "cpu_us": gateway_used * 1e6 / data["requests"],
            "db_cpu_us": db_used * 1e6 / data["requests"],
            "errors": data["requests"] - data["refreshes"],
        },
    )


async def storm(bench: Bench) -> None:
    """(l) = (i) on PostgreSQL: signed-in p99 idle, then while `storm_rate` logins per second run."""
    side = await _side(bench)
    if side is None:
        return
    tokens = await _login(bench)
    headers = {"Cookie": f"{ACCESS_COOKIE}={tokens.access_cookie}"}
    url = bench.servers.url(NAME, "/")
    async with bench.helpers_anywhere(side.gateway.pid):
        await measure_storm(bench, "l", url, headers, _base(bench))


# ---- the report's table ------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def backend_table(results: Results) -> list[str]:
    """SQLite (g, i) and PostgreSQL (k, l) side by side: refreshes and logins."""
    m = results.median

    def refresh_row(label: str, metric: str, digits: int = 1) -> str:
        return f"| {label} | {_num(m('g', metric), digits)} | {_num(m('k', metric), digits)} |"

    def arrow(key: str, a: str, b: str, digits: int) -> str:
        return f"{_num(m(key, a), digits)} → {_num(m(key, b), digits)}"

    sqlite_gateway = m("g", "cpu_us")
    pg_total = None if m("k", "cpu_us") is None else (m("k", "cpu_us") or 0.0) + (m("k", "db_cpu_us") or 0.0)
    return [
        "| g/k, i/l: SQLite vs PostgreSQL | SQLite | PostgreSQL |",
        "|---|--:|--:|",
        refresh_row("transparent refreshes per second", "rps", 0),
        refresh_row("refresh p50, ms", "p50_ms", 2),
        refresh_row("refresh p99, ms", "p99_ms", 2),
        refresh_row("gateway CPU µs per refresh", "cpu_us"),
        f"| database server CPU µs per refresh | (in the gateway) | {_num(m('k', 'db_cpu_us'))} |",
        f"| gateway + database CPU µs per refresh | {_num(sqlite_gateway)} | {_num(pg_total)} |",
        f"| signed-in p99 idle → during logins, ms | {arrow('i', 'idle_p99_ms', 'storm_p99_ms', 2)}"
        f" | {arrow('l', 'idle_p99_ms', 'storm_p99_ms', 2)} |",
        f"| signed-in req/s idle → during logins | {arrow('i', 'idle_rps', 'storm_rps', 0)}"
        f" | {arrow('l', 'idle_rps', 'storm_rps', 0)} |",
        f"| logins per second completed | {_num(m('i', 'logins_per_s'))} | {_num(m('l', 'logins_per_s'))} |",
        f"| login p50, ms | {_num(m('i', 'login_p50_ms'), 0)} | {_num(m('l', 'login_p50_ms'), 0)} |",
    ]
