"""`gateway serve`: run the application, in one process or as N workers on one port.

With `server.workers > 1` this process becomes a supervisor: it prepares what must exist once
(the key file, the migrated store), starts N workers that each bind the port with SO_REUSEPORT
(the kernel spreads connections), restarts a worker that dies, and on SIGTERM/SIGINT asks every
worker to drain its in-flight requests before exiting (AIOHTTP.md §4.3, §4.7).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import tempfile
import time
from typing import Any

from aiohttp import web
from prometheus_client.multiprocess import mark_process_dead

from gateway.config import Config
from gateway.metrics import MULTIPROC_ENV

log = logging.getLogger("gateway.server")
RESTART_BACKOFF = 1.0
CRASH_LOOP_WINDOW = 5.0  # a worker that dies sooner than this after starting counts as a crash
CRASH_LOOP_LIMIT = 5  # consecutive quick deaths before the supervisor gives up (exit 1)
DRAIN_POLL = 0.05  # seconds between checks for requests still in progress during shutdown
SHUTDOWN_TAIL = 1.0  # aiohttp's own wait for handlers, after the drain


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def check_runtime() -> None:
    """Refuse to run on aiohttp's pure-Python HTTP parser: the C (llhttp) parser is the strict one
    that rejects smuggling vectors (AIOHTTP.md §1.16; SECURITY item 102)."""
    from aiohttp import http_parser

    if http_parser.HttpRequestParser.__module__ != "aiohttp._http_parser":
        raise SystemExit(
            "gateway: aiohttp's C HTTP parser is not active (AIOHTTP_NO_EXTENSIONS set?); refusing"
        )


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # uvloop is a Linux dependency; elsewhere the default loop is fine
        loop = asyncio.new_event_loop()
    return loop


def run_worker(config: Config, *, reuse_port: bool) -> None:
    """One serving process: the app on the configured port until SIGTERM/SIGINT, then drain."""
    from gateway.logs import setup_logging

    setup_logging(config.logging)
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve_until_signalled(config, reuse_port=reuse_port))
    finally:  # as web.run_app does: nothing left running, async generators finalised
        leftover = asyncio.all_tasks(loop)
        for task in leftover:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve_until_signalled(config: Config, *, reuse_port: bool) -> None:
    """web.run_app's sequence, with a drain (`_drain`) between "stop listening" and aiohttp's own
    shutdown, which would otherwise cut off requests whose bodies are still arriving."""
    from gateway.app import create_app
    from gateway.logs import AccessLogger

    host, port = split_listen(config.server.listen)
    runner = _Runner(
        create_app(config),
        access_log=logging.getLogger("gateway.access") if config.logging.access_log else None,
        access_log_class=AccessLogger,
        keepalive_timeout=config.server.keepalive_timeout,
        # _drain already gave requests in flight the configured shutdown_timeout; this is only
        # for a request that slipped in on a keep-alive connection right after it.
        shutdown_timeout=SHUTDOWN_TAIL,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_port=reuse_port)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping: finishing requests in progress (up to %gs)", config.server.shutdown_timeout)
        await site.stop()  # no new connections (other workers or instances keep serving theirs)
        await runner.shutdown()  # on_shutdown first, as aiohttp orders it: websockets closed (1001)
        await _drain(runner.server, config.server.shutdown_timeout)
    finally:
        await runner.cleanup()


class _Runner(web.AppRunner):
    """An AppRunner whose shutdown hooks run once, so that they can run before `_drain` and
    runner.cleanup() does not run them a second time."""

    _shut_down = False

    async def shutdown(self) -> None:
        if not self._shut_down:
            self._shut_down = True
            await super().shutdown()


async def _drain(server: web.Server | None, grace: float) -> None:
    """Let requests in progress finish, still reading their bodies, for up to `grace` seconds.

    aiohttp's shutdown (BaseRunner.cleanup) first marks every connection as closing, and a
    closing connection discards the bytes that still arrive (RequestHandler.data_received), so
    an upload in flight would stall until the timeout and end as an error (aio-libs/aiohttp#2298;
    seen with aiohttp 3.14). Here idle keep-alive connections are closed at once, busy ones
    are left to finish first. aiohttp has no public "request in progress" flag, hence the
    getattr: should it be renamed, this degrades to aiohttp's own behaviour, and
    tests/test_operations.py's drain test fails.
    """
    if server is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while True:
        busy = False
        for conn in list(server.connections):
            if getattr(conn, "_request_in_progress", False):
                busy = True
            else:
                conn.close()
        if not busy:
            return
        if loop.time() >= deadline:
            log.warning("shutdown_timeout reached with requests still in progress; cutting them off")
            return
        await asyncio.sleep(DRAIN_POLL)


async def _prepare(config: Config) -> None:
    """Create the key file and migrate the store once, before any worker starts."""
    from gateway.keyring import ensure_key_file
    from gateway.store import open_store

    ensure_key_file(config.tokens.signing_key_file, config.tokens.algorithm)
    store = await open_store(config.storage.url)
    await store.close()


def serve(config: Config) -> int:
    check_runtime()
    from gateway.logs import setup_logging

    setup_logging(config.logging)
    asyncio.run(_prepare(config))
    host, port = split_listen(config.server.listen)
    log.info(
        "gateway listening on %s:%d (%d worker(s)), public url %s",
        host,
        port,
        config.server.workers,
        config.server.public_url,
    )
    if config.server.workers == 1:
        run_worker(config, reuse_port=False)
        return 0
    return Supervisor(config).run()


class Supervisor:
    """Keeps N workers alive; forwards shutdown to them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: list[Any] = []
        self.stopping = False
        self._exit_code = 0

    def _start(self) -> Any:
        proc = self.ctx.Process(
            target=run_worker, args=(self.config,), kwargs={"reuse_port": True}, daemon=False
        )
        proc.start()
        log.info("worker %d started", proc.pid)
        return proc

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        # Workers share metrics through files in one folder (prometheus_client multiprocess mode);
        # spawned workers inherit the variable and read it when they import prometheus_client.
        with tempfile.TemporaryDirectory(prefix="gateway-metrics-") as metrics_dir:
            os.environ.setdefault(MULTIPROC_ENV, metrics_dir)
            return self._supervise()

    def _supervise(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.workers = [self._start() for _ in range(self.config.server.workers)]
        started = [time.monotonic()] * len(self.workers)
        quick_deaths = 0
        while not self.stopping:
            time.sleep(0.2)
            for i, proc in enumerate(self.workers):
                if proc.is_alive() or self.stopping:
                    continue
                log.warning("worker %d exited with %s; restarting", proc.pid, proc.exitcode)
                if proc.pid is not None:
                    mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]  # its live gauges
                # A worker that dies right after starting (port taken, bad file) would die again.
                quick_deaths = quick_deaths + 1 if time.monotonic() - started[i] < CRASH_LOOP_WINDOW else 0
                if quick_deaths >= CRASH_LOOP_LIMIT:
                    log.error("workers keep dying at start; giving up (see the errors above)")
                    self.stopping = True
                    self._exit_code = 1
                    break
                time.sleep(RESTART_BACKOFF)
                if self.stopping:  # SIGTERM arrived during the back-off
                    break
                self.workers[i] = self._start()
                started[i] = time.monotonic()
        log.info("shutting down: draining %d worker(s)", len(self.workers))
        for proc in self.workers:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.shutdown_timeout + 5
        for proc in self.workers:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
        return self._exit_code
