"""Logging: plain text or JSON lines, one access line per request, security events on their own.

No log line ever carries a token, cookie, password or Authorization header (SECURITY item 142):
the access line is built from an allow-list of fields, never from headers wholesale.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.config import LoggingConfig
from gateway.keys import ADDRESS, DECISION


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


def setup_logging(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    # aiohttp logs parser errors with the offending bytes at ERROR; keep them out of the log
    # unless debugging (SECURITY item 144: nothing echoes the request's bytes).
    logging.getLogger("aiohttp.server").setLevel(
        logging.CRITICAL if config.level != "debug" else logging.DEBUG
    )


class AccessLogger(AbstractAccessLogger):
    """One line per request: route, status, duration, user id, session id, client address."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
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
        self.logger.info(
            "%s %s %s %.1fms user=%s session=%s client=%s",
            fields["method"],
            fields["path"],
            fields["status"],
            fields["duration_ms"],
            fields["user_id"] or "-",
            fields["session_id"] or "-",
            fields["client"],
            extra={"fields": fields},
        )
