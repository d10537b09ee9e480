"""`python -m bench.profile`: where the CPU time of one proxied request goes.

Starts the bench upstream and the gateway exactly as `python -m bench` does (same generated
configuration, access log on unless `--no-access-log`, the gateway pinned to the first CPU and the
load to the others), signs in, then for each selected route:

1. runs wrk for `--duration` seconds without any profiler and reports the gateway's CPU µs/req;
2. runs it again while `py-spy record` samples the gateway, and attributes each sample
   to one stage of the request (the table in docs/performance.md) by the frames on its stack.

The µs per stage are the measured CPU µs/req of step 1 times each stage's share of the samples of
step 2. py-spy must be installed in the environment (`.venv/bin/pip install py-spy`); without it
only step 1 runs. `--raw DIR` keeps py-spy's folded stacks (load them in speedscope, or feed them
to flamegraph.pl) for a closer look.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from bench import loadgen, procs, tools, wrk
from bench.procs import Procs
from bench.runner import raise_fd_limit, say
from bench.servers import ACCESS_COOKIE, Servers
from bench.upstream import loop_factory

EMAIL = "profile@example.com"
ROUTES = {"public": "/pub/hello", "cookie": "/", "bearer": "/"}

# Stages, first match wins: a sample belongs to the first stage any frame of its stack matches.
# A pattern is matched against "function (file)" of every frame; file paths are cut to the part
# after site-packages/ or the repository root, so the rules hold on any machine.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("metrics (prometheus_client)", ("prometheus_client/", "gateway/metrics.py")),
    ("access log (and any other logging)", ("gateway/logs.py", "aiohttp/web_log.py", "logging/")),
    (
        "upstream client (request out, response in)",
        (
            "gateway/upstream.py",
            "gateway/upstream_conn.py",
            "gateway/upstream_errors.py",
            "aiohttp/client",
            "aiohttp/connector.py",
            "aiohttp/tracing.py",
            "aiohttp/cookiejar.py",
            "yarl/",
            "httptools/",
        ),
    ),
    (
        "auth (cookie/Bearer → claims, revocation)",
        ("gateway/auth.py", "gateway/tokens.py", "gateway/revocation.py", "gateway/clientip.py", "jwt/"),
    ),
    (
        "header building (both directions)",
        ("gateway/headers.py", "gateway/cookies.py", "_upstream_request_headers"),
    ),
    (
        "routing, path and ambiguity checks, CSRF",
        (
            "gateway/routing.py",
            "gateway/paths.py",
            "gateway/csrf.py",
            "gateway/classify.py",
            "urllib/parse.py",
        ),
    ),
    (
        "response to the client (prepare, write, write_eof)",
        (
            "aiohttp/web_response.py",
            "aiohttp/http_writer.py",
            "restore_upstream_headers",
            "on_prepare",
            "aiohttp/abc.py",
        ),
    ),
    (
        "request parsing and aiohttp server dispatch",
        (
            "aiohttp/web_protocol.py",
            "aiohttp/web_request.py",
            "aiohttp/web_app.py",
            "aiohttp/web_urldispatcher.py",
            "aiohttp/http_parser.py",
            "aiohttp/_http_parser",
            "aiohttp/web_middlewares.py",
            "aiohttp/base_protocol.py",
            "http/cookies.py",
            "multidict/",
            "gateway/middleware.py",
        ),
    ),
    ("proxy pipeline (gateway/proxy.py itself)", ("gateway/proxy.py",)),
)
OTHER = "event loop and the rest"


def _frame_text(frame: str) -> str:
    """`func (path:line)` → `path:func`, with the path cut after site-packages/ or the repo root."""
    name, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib/"):
                path = path.split("/", 1)[1] if "/" in path else path
            break
    else:
        for top in ("gateway/", "bench/", "upstream_example/"):
            index = path.rfind("/" + top)
            if index >= 0:
                path = path[index + 1 :]
                break
    return f"{path}:{name}"


def classify(frames: list[str]) -> str:
    texts = [_frame_text(f) for f in frames]
    for stage, patterns in STAGES:
        if any(p in t for t in texts for p in patterns):
            return stage
    return OTHER


def aggregate(raw: Iterable[str]) -> tuple[dict[str, int], collections.Counter[str], int]:
    """py-spy's folded stacks → samples per stage, samples per leaf function (self time), total;
    only the main thread (the event loop) counts."""
    stages: dict[str, int] = collections.defaultdict(int)
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if " (" in f and not f.startswith(("process ", "thread "))]
        if not frames or frames[0].startswith("Thread._bootstrap"):
            continue  # helper threads (SQLite, argon2): mostly idle, and not the request path
        stages[classify(frames)] += count
        leaves[_frame_text(frames[-1])] += count
        total += count
    return stages, leaves, total


async def _measure(
    wrk_path: str, url: str, headers: dict[str, str], pid: int, seconds: float, cpus: set[int]
) -> tuple[float, float]:
    before = procs.cpu_seconds(pid)
    result = await wrk.run(wrk_path, url, duration=seconds, connections=32, headers=headers, cpus=cpus)
    used = procs.cpu_seconds(pid) - before
    if result.requests == 0 or result.errors:
        raise SystemExit(f"wrk: {result.requests} requests, {result.errors} errors on {url}")
    return used * 1e6 / result.requests, result.rps


async def run(args: argparse.Namespace) -> int:
    raise_fd_limit()
    paths = tools.ensure(["wrk"])
    wrk_path = paths.get("wrk")
    if wrk_path is None:
        return 1
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(spy, os.X_OK):
        say("py-spy is not installed (.venv/bin/pip install py-spy): measuring CPU µs/req only")
        spy = ""
    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpus, load_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (set(cpus), set(cpus))
    os.sched_setaffinity(0, load_cpus)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-profile-"))
    runner = Procs()
    try:
        async with loadgen.client(8, timeout=60) as http:
            servers = Servers(runner, http, tmp, not args.no_access_log)
            await servers.upstream()
            gateway = await servers.gateway(100 * 1024 * 1024)
            procs.pin(gateway.pid, proxy_cpus)
            base = servers.url("gateway", "")
            password = "profile-password-" + os.urandom(8).hex()
            await loadgen.register(http, base, EMAIL, password)
            tokens = await loadgen.login(http, base, EMAIL, password, ACCESS_COOKIE, "gw_refresh")
            for route in args.routes:
                headers = {}
                if route == "cookie":
                    headers = {"Cookie": f"{ACCESS_COOKIE}={tokens.access_cookie}"}
                elif route == "bearer":
                    headers = {"Authorization": f"Bearer {tokens.access_token}"}
                url = servers.url("gateway", ROUTES[route])
                await _measure(wrk_path, url, headers, gateway.pid, 2, load_cpus)  # warm up
                cpu_us, rps = await _measure(wrk_path, url, headers, gateway.pid, args.duration, load_cpus)
                print(f"\n### {route} ({ROUTES[route]}): {cpu_us:.1f} CPU µs/req at {rps:,.0f} req/s\n")
                if not spy:
                    continue
                out = tmp / f"{route}.folded"
                record = await asyncio.create_subprocess_exec(
                    spy,
                    "record",
                    "--pid",
                    str(gateway.pid),
                    "--rate",
                    str(args.rate),
                    "--duration",
                    str(int(args.duration)),
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.PIPE,
                )
                await asyncio.sleep(0.5)
                await _measure(wrk_path, url, headers, gateway.pid, args.duration, load_cpus)
                _, err = await record.communicate()
                if record.returncode != 0 or not out.exists():
                    say(f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}")
                    continue
                stages, leaves, total = aggregate(out.read_text().splitlines())
                print("| stage | share of samples | CPU µs/req |")
                print("|---|--:|--:|")
                for stage in [s for s, _ in STAGES] + [OTHER]:
                    share = stages.get(stage, 0) / total if total else 0.0
                    print(f"| {stage} | {share:.0%} | {share * cpu_us:.0f} |")
                print(f"| total ({total} samples) | 100% | {cpu_us:.0f} |\n")
                print("Top functions by self time:\n")
                for name, count in leaves.most_common(args.top):
                    print(f"- {count / total:5.1%}  {name}")
                if args.raw:
                    Path(args.raw).mkdir(parents=True, exist_ok=True)
                    shutil.copy(out, Path(args.raw) / out.name)
    finally:
        await runner.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("routes", nargs="*", help="cookie (default), bearer, public")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load (default 10)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second (default 250)")
    parser.add_argument("--top", type=int, default=25, help="functions listed by self time (default 25)")
    parser.add_argument("--raw", help="folder to keep py-spy's folded stacks in")
    parser.add_argument("--no-access-log", action="store_true", help="turn the gateway's access log off")
    args = parser.parse_args()
    args.routes = args.routes or ["cookie"]
    if unknown := sorted(set(args.routes) - set(ROUTES)):
        parser.error(f"unknown route(s) {', '.join(unknown)}; choose from {', '.join(ROUTES)}")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
