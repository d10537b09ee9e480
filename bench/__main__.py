"""`make bench` / `python -m bench`: the gateway against nginx and Caddy, side by side in one run.

Prints the tables and the ratios against the targets of issue 7, and appends them to
bench/RESULTS.md with the date, commit and machine. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bench import report, scenarios, tools
from bench.results import SCENARIOS
from bench.runner import WRK_KEYS, Bench, Options, say
from bench.servers import ROOT
from bench.upstream import loop_factory

MiB = 1024 * 1024


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        allow_abbrev=False,
        description="Benchmark the gateway against nginx and Caddy. Scenarios: "
        + "; ".join(f"{k}: {v}" for k, v in SCENARIOS.items()),
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s loads, 1 round, 64 MiB streams")
    parser.add_argument(
        "--only", default="", help="comma-separated scenario letters, e.g. a,b,c (default: all)"
    )
    parser.add_argument("--duration", type=float, help="seconds per load (default 10; quick 3)")
    parser.add_argument("--rounds", type=int, help="rounds of alternating contenders (default 3; quick 1)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--stream-mib", type=int, help="size of each (h) transfer (default 1024; quick 64)")
    parser.add_argument("--sessions", type=int, help="sessions for (g) (default 200; quick 32)")
    parser.add_argument("--idle-connections", type=int, default=2000, help="connections held in (j)")
    parser.add_argument("--no-access-log", action="store_true", help="turn access logs off in every proxy")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the run's temporary folder (configs, logs)")
    args = parser.parse_args(argv)
    only = "".join(args.only.replace(",", " ").split()) or "".join(SCENARIOS)
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        parser.error(f"--only: unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if not 1 <= duration <= 120 or not 1 <= rounds <= 20:
        parser.error("--duration must be within 1..120 seconds and --rounds within 1..20")
    stream = args.stream_mib if args.stream_mib is not None else (64 if args.quick else 1024)
    return Options(
        only="".join(k for k in SCENARIOS if k in only),
        duration=duration,
        rounds=rounds,
        connections=max(1, min(args.connections, 1024)),
        stream_bytes=max(1, min(stream, 8192)) * MiB,
        sessions=max(
            1, min(args.sessions if args.sessions is not None else (32 if args.quick else 200), 2000)
        ),
        idle_connections=max(1, min(args.idle_connections, 20000)),
        storm_rate=10.0,
        access_log=not args.no_access_log,
        keep=args.keep,
        record=not args.no_record,
    )


def main(argv: list[str]) -> int:
    opt = parse_args(argv)
    needed = []
    if any(k in WRK_KEYS for k in opt.only):
        needed.append("wrk")
    if "b" in opt.only:
        needed.append("nginx")
    if "c" in opt.only:
        needed.append("caddy")
    paths = tools.ensure(needed)
    say(f"{opt.rounds} round(s) of {','.join(opt.only)}, {opt.duration:g} s per load")
    bench = Bench(opt, paths)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        results = runner.run(bench.run(scenarios.RUN))
    body = report.render(results, opt.only)
    pinning = (
        f"pinned: process under test on CPU {min(bench.proxy_cpus)}, load and upstream on CPU "
        + ",".join(map(str, sorted(bench.load_cpus)))
        if bench.pinned
        else "not pinned (one CPU)"
    )
    settings = (
        f"{opt.rounds} round(s) × {opt.duration:g} s, wrk 1 thread × {opt.connections} connections, "
        f"access logs {'on' if opt.access_log else 'off'}, {pinning}"
    )
    version_text = ", ".join(f"{name} {v}" for name, v in tools.versions(paths).items())
    text = report.section(
        body,
        commit=tools.git_commit(ROOT),
        command=" ".join(["python -m bench", *argv]),
        settings=settings,
        machine=tools.machine(),
        versions=version_text,
    )
    print(text)
    if opt.record:
        report.append(ROOT / "bench" / "RESULTS.md", text)
        say("appended to bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
