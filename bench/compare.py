"""`python -m bench.compare OLD NEW`: two versions of the gateway side by side, in one run.

Each argument is a source tree (a checkout holding `gateway/`, e.g. one made with
`git worktree add ../old <commit>`). Both gateways start from the bench's generated configuration
in front of one bench upstream, both are pinned to the first CPU, and wrk loads alternate between
them, round by round, so machine noise hits both alike. It prints the median CPU µs per request of
each and their ratio, per route, plus each tree's signed-in / public ratio: the before/after
figures of docs/performance.md come from here, not from two separate `make bench` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench import loadgen, procs, tools, wrk
from bench.procs import Procs
from bench.runner import raise_fd_limit, say
from bench.servers import ACCESS_COOKIE, REFRESH_COOKIE, Servers
from bench.upstream import loop_factory

EMAIL = "compare@example.com"
ROUTES = {"public": "/pub/hello", "cookie": "/", "bearer": "/"}


async def run(args: argparse.Namespace) -> int:
    raise_fd_limit()
    wrk_path = tools.ensure(["wrk"]).get("wrk")
    if wrk_path is None:
        return 1
    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpus, load_cpus = ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else (set(cpus), set(cpus))
    os.sched_setaffinity(0, load_cpus)
    trees = {"old": str(Path(args.old).resolve()), "new": str(Path(args.new).resolve())}
    runner = Procs()
    folders: list[Path] = []
    password = "compare-password-" + os.urandom(8).hex()
    try:
        async with loadgen.client(8, timeout=60) as http:
            gateways: dict[str, tuple[Servers, int, loadgen.Tokens]] = {}
            upstream_port = 0
            for name, tree in trees.items():
                folder = Path(tempfile.mkdtemp(prefix=f"gateway-compare-{name}-"))
                folders.append(folder)
                servers = Servers(runner, http, folder, not args.no_access_log)
                if upstream_port:
                    servers.ports["upstream"] = upstream_port
                else:
                    await servers.upstream()
                    upstream_port = servers.ports["upstream"]
                os.environ["PYTHONPATH"] = tree  # the gateway process imports `gateway` from here
                gateway = await servers.gateway(100 * 1024 * 1024)
                procs.pin(gateway.pid, proxy_cpus)
                base = servers.url("gateway", "")
                await loadgen.register(http, base, EMAIL, password)
                tokens = await loadgen.login(http, base, EMAIL, password, ACCESS_COOKIE, REFRESH_COOKIE)
                gateways[name] = (servers, gateway.pid, tokens)
            samples: dict[tuple[str, str], list[float]] = {(n, r): [] for n in trees for r in args.routes}
            for number in range(args.rounds):
                order = list(trees) if number % 2 == 0 else list(reversed(trees))
                for route in args.routes:
                    for name in order:
                        servers, pid, tokens = gateways[name]
                        headers = {}
                        if route == "cookie":
                            headers = {"Cookie": f"{ACCESS_COOKIE}={tokens.access_cookie}"}
                        elif route == "bearer":
                            headers = {"Authorization": f"Bearer {tokens.access_token}"}
                        url = servers.url("gateway", ROUTES[route])
                        if number == 0:  # warm up
                            await wrk.run(
                                wrk_path, url, duration=1, connections=32, headers=headers, cpus=load_cpus
                            )
                        before = procs.cpu_seconds(pid)
                        result = await wrk.run(
                            wrk_path,
                            url,
                            duration=args.duration,
                            connections=32,
                            headers=headers,
                            cpus=load_cpus,
                        )
                        used = procs.cpu_seconds(pid) - before
                        if result.errors or not result.requests:
                            say(f"{name} {route}: {result.requests} requests, {result.errors} errors")
                            continue
                        samples[(name, route)].append(used * 1e6 / result.requests)
                say(f"round {number + 1}/{args.rounds} done")
    finally:
        await runner.stop_all()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    median = {key: statistics.median(values) for key, values in samples.items() if values}
    print("| route | old CPU µs/req | new CPU µs/req | new / old | old rounds | new rounds |")
    print("|---|--:|--:|--:|---|---|")
    for route in args.routes:
        old, new = median.get(("old", route)), median.get(("new", route))
        if old is None or new is None:
            continue
        rounds = [", ".join(f"{v:.0f}" for v in samples[(n, route)]) for n in trees]
        print(f"| {route} | {old:.1f} | {new:.1f} | {new / old:.2f} | {rounds[0]} | {rounds[1]} |")
    if "public" in args.routes:
        for route in (r for r in args.routes if r != "public"):
            for name in trees:
                if (name, route) in median and (name, "public") in median:
                    ratio = median[(name, route)] / median[(name, "public")]
                    print(f"\n{name}: {route} / public = {ratio:.2f}", end="")
        print()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="source tree of the version to compare against")
    parser.add_argument("new", help="source tree of the version under test (e.g. .)")
    parser.add_argument("--routes", default="public,cookie", help="comma-separated: public, cookie, bearer")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load (default 5)")
    parser.add_argument("--no-access-log", action="store_true", help="turn the gateways' access log off")
    args = parser.parse_args()
    args.routes = [r for r in args.routes.split(",") if r]
    if unknown := sorted(set(args.routes) - set(ROUTES)):
        parser.error(f"unknown route(s) {', '.join(unknown)}; choose from {', '.join(ROUTES)}")
    for tree in (args.old, args.new):
        if not (Path(tree) / "gateway" / "__init__.py").exists():
            parser.error(f"{tree}: no gateway/ package there")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
