"""Logging: plain text or JSON lines, one access line per request, security events on their own.

No log line ever carries a token, cookie, password or Authorization header (SECURITY item 142):
the access line is built from an allow-list of fields, never from headers wholesale.

The access line is the one log line every request writes, so it has a fast path (docs/performance.md:
through `logging` it cost about a sixth of a proxied request). When the record would reach exactly
one handler, the gateway's own (`setup_logging`), with no filter on the way, the line is formatted
by that handler's formatter straight from the fields, with the same text a record would give,
and the lines of one event-loop iteration are written together at its end. Any other logging set-up
(a test's capture handler, a filter, another handler) takes the ordinary `logging` path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any, TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.config import LoggingConfig
from gateway.keys import ADDRESS, DECISION

ACCESS_FORMAT = "%s %s %s %.1fms user=%s session=%s client=%s"
_PID = [os.getpid()]  # what LogRecord.process holds; os.getpid() is a system call on every use
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def _pid() -> int:
    return _PID[0]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # which worker, with server.workers > 1
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)

    def format_info(self, name: str, created: float, message: str, fields: dict[str, Any]) -> str | None:
        """What `format()` gives for an INFO record of logger `name` with `extra={"fields": fields}`."""
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            + f".{int((created - int(created)) * 1000):03d}Z",
            "level": "info",
            "logger": name,
            "pid": _pid(),
            "message": message,
        }
        entry.update(fields)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    """logging.Formatter, with the date part of `asctime` formatted once per second, not per line
    (strftime was a tenth of an access line's cost: docs/performance.md). Same output."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._date = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self._asctime(record.created, record.msecs)

    def _asctime(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:
            self._date = time.strftime(self.default_time_format, self.converter(created))
            self._second = second
        if self.default_msec_format:
            return self.default_msec_format % (self._date, msecs)
        return self._date

    def format_info(self, name: str, created: float, message: str, fields: dict[str, Any]) -> str | None:
        """What `format()` gives for an INFO record of logger `name`, or None when the format string
        uses a record attribute other than asctime, levelname, name, process and message."""
        values = {
            "asctime": self._asctime(created, int((created - int(created)) * 1000) + 0.0),
            "levelname": "INFO",
            "name": name,
            "process": _pid(),
            "message": message,
        }
        try:
            return self._fmt % values if self._fmt is not None else None
        except (KeyError, TypeError, ValueError):
            return None


class GatewayHandler(logging.StreamHandler[TextIO]):
    """The handler `setup_logging` installs: a StreamHandler that can also take pre-formatted
    access lines, written together once per event-loop iteration."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self._pending: list[str] = []

    def write_soon(self, line: str) -> None:
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.write_pending)
            except RuntimeError:  # no event loop: write it now
                self._pending.append(line)
                self.write_pending()
                return
        self._pending.append(line)

    def write_pending(self) -> None:
        lines, self._pending = self._pending, []
        if not lines:
            return
        text = self.terminator.join(lines) + self.terminator
        self.acquire()
        try:
            # As StreamHandler.emit: a log that cannot be written must not fail a request.
            with contextlib.suppress(Exception):
                self.stream.write(text)
                self.flush()
        finally:
            self.release()

    def close(self) -> None:
        self.write_pending()
        super().close()


def setup_logging(config: LoggingConfig) -> None:
    handler = GatewayHandler()
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    # aiohttp logs parser errors with the offending bytes at ERROR; keep them out of the log
    # unless debugging (SECURITY item 144: nothing echoes the request's bytes).
    logging.getLogger("aiohttp.server").setLevel(
        logging.CRITICAL if config.level != "debug" else logging.DEBUG
    )


def _sole_handler(logger: logging.Logger) -> GatewayHandler | None:
    """The gateway's handler when an INFO record of `logger` would reach it and nothing else."""
    found: GatewayHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if found is not None or type(handler) is not GatewayHandler or handler.filters:
                return None
            if handler.level > logging.INFO:
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found


class AccessLogger(AbstractAccessLogger):
    """One line per request: route, status, duration, user id, session id, client address."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        decision = request.get(DECISION)
        route = getattr(getattr(decision, "route", None), "path", None)
        claims = getattr(getattr(decision, "auth", None), "claims", None)
        address = request.get(ADDRESS)
        fields = {
            "method": request.method,
            "path": request.path[:512],  # the path only: a query may carry secrets
            "route": route,
            "status": response.status,
            "duration_ms": round(time * 1000, 2),
            "user_id": getattr(claims, "sub", None),
            "session_id": getattr(claims, "sid", None),
            "client": address[0] if address else request.remote,
        }
        args = (
            fields["method"],
            fields["path"],
            fields["status"],
            fields["duration_ms"],
            fields["user_id"] or "-",
            fields["session_id"] or "-",
            fields["client"],
        )
        handler = _sole_handler(logger)
        formatter = handler.formatter if handler is not None else None
        if handler is not None and isinstance(formatter, TextFormatter | JsonFormatter):
            line = formatter.format_info(logger.name, _now(), ACCESS_FORMAT % args, fields)
            if line is not None:
                handler.write_soon(line)
                return
        # makeRecord + handle is what logger.info() does, minus its walk up the stack for the
        # caller's file and line, which no format shows.
        record = logger.makeRecord(
            logger.name, logging.INFO, "", 0, ACCESS_FORMAT, args, None, extra={"fields": fields}
        )
        logger.handle(record)


_now = time.time
