"""The scenarios (a)–(j): one measurement each per round, recorded in `bench.results`.

CPU per request is utime+stime of the process under test (its whole process tree), read from
/proc before and after the load, divided by the requests the load generator completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Iterator

from bench import postgres, procs
from bench.runner import Bench, BenchError, measure_storm
from bench.servers import ACCESS_COOKIE, REFRESH_COOKIE, ROOT


async def _wrk_case(
    bench: Bench, key: str, server: str, path: str, headers: dict[str, str] | None = None
) -> None:
    proc = bench.running[server]
    url = bench.servers.url(server, path)
    await bench.probe(url, headers)
    before = procs.cpu_seconds(proc.pid)
    result = await bench.wrk(url, headers)
    used = procs.cpu_seconds(proc.pid) - before
    if result.requests == 0:
        raise BenchError("wrk completed no request")
    if result.errors:
        bench.note(key, f"{result.bad_status} error statuses, {result.socket_errors} socket errors")
    bench.results.add(
        key,
        {
            "rps": result.rps,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
            "cpu_us": used * 1e6 / result.requests,
            "errors": result.errors,
        },
    )


@contextlib.contextmanager
def _placed(bench: Bench, server: str, cpus: set[int]) -> Iterator[None]:
    """Move a server to `cpus` for the duration of one measurement, then back to where it was."""
    pid = bench.running[server].pid
    home = bench.proxy_cpus if server in ("nginx", "caddy", "gateway") else bench.load_cpus
    procs.pin(pid, cpus)
    try:
        yield
    finally:
        procs.pin(pid, home)


async def upstream_direct(bench: Bench) -> None:
    with _placed(bench, "upstream", bench.proxy_cpus):
        await _wrk_case(bench, "a", "upstream", "/")


async def nginx(bench: Bench) -> None:
    await _wrk_case(bench, "b", "nginx", "/")


async def caddy(bench: Bench) -> None:
    await _wrk_case(bench, "c", "caddy", "/")


async def public(bench: Bench) -> None:
    await _wrk_case(bench, "d", "gateway", "/pub/hello")


async def cookie(bench: Bench) -> None:
    tokens = await bench.signed_in()
    await _wrk_case(bench, "e", "gateway", "/", {"Cookie": f"{ACCESS_COOKIE}={tokens.access_cookie}"})


async def bearer(bench: Bench) -> None:
    tokens = await bench.signed_in()
    await _wrk_case(bench, "f", "gateway", "/", {"Authorization": f"Bearer {tokens.access_token}"})


async def refresh(bench: Bench) -> None:
    """(g) Every request carries only a refresh cookie, so the gateway refreshes inside it."""
    if not bench.sessions_file.exists():
        await bench.make_sessions()
    gateway = bench.running["gateway"]
    before = procs.cpu_seconds(gateway.pid)
    args = ["refresh", "--url", bench.servers.url("gateway", "/"), "--sessions", str(bench.sessions_file)]
    args += ["--cookie", REFRESH_COOKIE, "--duration", str(bench.opt.duration), "--concurrency", "32"]
    data = await bench.python("loadgen", args, timeout=bench.opt.duration + 60)
    used = procs.cpu_seconds(gateway.pid) - before
    if not data["requests"]:
        raise BenchError(f"no request completed: {data['counts']}")
    other = {k: v for k, v in data["counts"].items() if k != "refreshed"}
    if other:
        bench.note("g", f"not refreshed: {other}")
    if data["sessions_left"] < bench.opt.sessions:
        bench.note("g", f"{data['sessions_left']} of {bench.opt.sessions} sessions left")
    bench.results.add(
        "g",
        {
            "rps": data["refreshes"] / data["elapsed"],
            "p50_ms": data["p50_ms"],
            "p99_ms": data["p99_ms"],
            "cpu_us": used * 1e6 / data["requests"],
            "errors": data["requests"] - data["refreshes"],
        },
    )


async def _peak_rss(pid: int, until: asyncio.Event) -> int:
    """Largest RSS sampled every 50 ms (a fallback when VmHWM cannot be reset)."""
    peak = 0
    while not until.is_set():
        peak = max(peak, procs.memory_kib(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), 0.05)
    return peak


async def streams(bench: Bench) -> None:
    """(h) One download and one upload of `stream_bytes`, direct and through the gateway (public route)."""
    size = bench.opt.stream_bytes
    timeout = 60 + size / 20e6
    metrics: dict[str, float] = {}
    gateway = bench.running["gateway"].pid
    for kind, path in (("download", "/pub/stream"), ("upload", "/pub/upload")):
        for via in ("direct", "gateway"):
            server = "upstream" if via == "direct" else "gateway"
            args = [kind, "--port", str(bench.servers.ports[server]), "--path", path, "--bytes", str(size)]
            if via == "direct":
                with _placed(bench, "upstream", bench.proxy_cpus):
                    data = await bench.python("rawload", args, timeout)
            else:
                base = procs.memory_kib(gateway)
                if procs.reset_peak(gateway):
                    data = await bench.python("rawload", args, timeout)
                    peak = procs.memory_kib(gateway, "VmHWM")
                else:
                    done = asyncio.Event()
                    sampler = asyncio.create_task(_peak_rss(gateway, done))
                    try:
                        data = await bench.python("rawload", args, timeout)
                    finally:
                        done.set()
                        peak = await sampler
                metrics[f"{kind}_base_mb"] = base * 1024 / 1e6
                metrics[f"{kind}_peak_mb"] = peak * 1024 / 1e6
            if not data["complete"]:
                bench.note(
                    "h", f"{kind} {via}: incomplete (HTTP {data['status']}, {data['error'] or 'short'})"
                )
                continue
            metrics[f"{kind}_{via}_mb_s"] = data["mb_s"]
    bench.results.add("h", metrics)


async def storm(bench: Bench) -> None:
    """(i) Signed-in p99 idle, then while `storm_rate` logins per second run.

    The gateway's event loop stays on its CPU; its helper threads (argon2, SQLite) may use every
    CPU, as on a real host (`Bench.helpers_anywhere`).
    """
    tokens = await bench.signed_in()
    headers = {"Cookie": f"{ACCESS_COOKIE}={tokens.access_cookie}"}
    url = bench.servers.url("gateway", "/")
    async with bench.helpers_anywhere():
        await measure_storm(bench, "i", url, headers, bench.base)


async def idle_connections(bench: Bench) -> None:
    """(j) RSS of the gateway holding N keep-alive connections that each served one request."""
    gateway = bench.running["gateway"].pid
    base = procs.memory_kib(gateway)
    n = bench.opt.idle_connections
    args = [
        "idle",
        "--port",
        str(bench.servers.ports["gateway"]),
        "--path",
        "/pub/idle",
        "--connections",
        str(n),
    ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.rawload",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        opened = await asyncio.wait_for(proc.stdout.readline(), 120)
        await asyncio.sleep(1.0)
        rss = procs.memory_kib(gateway)
        proc.stdin.write(b"\n")
        await proc.stdin.drain()
        held = await asyncio.wait_for(proc.stdout.readline(), 30)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    first, second = json.loads(opened or b"{}"), json.loads(held or b"{}")
    count = int(first.get("open", 0))
    if count < n:
        bench.note("j", f"only {count} of {n} connections opened: {first.get('counts')}")
    if int(second.get("still_open", 0)) < count:
        bench.note("j", f"{count - int(second.get('still_open', 0))} closed by the gateway while held")
    bench.results.add(
        "j",
        {
            "connections": count,
            "base_mb": base * 1024 / 1e6,
            "rss_mb": rss * 1024 / 1e6,
            "kib_per_conn": (rss - base) / count if count else float("nan"),
        },
    )


RUN: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "a": upstream_direct,
    "b": nginx,
    "c": caddy,
    "d": public,
    "e": cookie,
    "f": bearer,
    "g": refresh,
    "h": streams,
    "i": storm,
    "j": idle_connections,
    "k": postgres.refresh,
    "l": postgres.storm,
}
