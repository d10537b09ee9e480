"""`python -m upstream_example --port 9000 [--host 127.0.0.1]`: run the example legacy app."""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web
from aiohttp.log import access_logger

from upstream_example.app import create_app


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # the faster loop when installed, so benchmarks measure the gateway, not this app
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m upstream_example",
        description="Run Legacy Intranet, the example app that trusts the gateway's identity headers.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port to listen on (default: 9000)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    web.run_app(
        create_app(),
        host=args.host,
        port=args.port,
        access_log=None if args.no_access_log else access_logger,
        loop=_event_loop(),
    )


if __name__ == "__main__":
    main()
