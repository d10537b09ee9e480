"""The upstream leg's errors and the one table that maps transport exceptions onto them.

Kept apart from `gateway.upstream` (which re-exports them) so that `gateway.upstream_conn` can
import them without an import cycle.
"""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
import httptools


class UpstreamError(Exception):
    """Base of every failure to talk to an upstream; `__cause__` holds the transport error.

    The message names the upstream's address and may quote its bytes: log it, never show it.
    """


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached or answered with something that is not HTTP."""


class UpstreamRefusedUpgrade(UpstreamUnavailable):
    """The upstream answered a websocket upgrade with a status other than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"upstream refused the websocket upgrade with {status}")
        self.status = status


class UpstreamTimeout(UpstreamError):
    """The upstream did not accept the connection, or went silent, within its timeout."""


# First match wins. aiohttp's timeouts (websocket leg) are ClientErrors too, so they come first;
# asyncio.TimeoutError is TimeoutError, an OSError, so it precedes the OSError row as well.
ERROR_TABLE: Final[tuple[tuple[type[Exception], type[UpstreamError]], ...]] = (
    (asyncio.TimeoutError, UpstreamTimeout),  # connect, idle read; aiohttp's Server/Socket timeouts
    (aiohttp.ClientError, UpstreamUnavailable),  # websocket leg: refused, DNS, TLS, handshake
    (httptools.HttpParserError, UpstreamUnavailable),  # not HTTP, or smuggling-shaped framing
    (OSError, UpstreamUnavailable),  # refused, reset, DNS (gaierror), TLS (SSLError)
)


def upstream_error_class(exc_type: type[BaseException]) -> type[UpstreamError] | None:
    """The `UpstreamError` subclass a transport exception maps to; None lets it propagate as is."""
    for source, target in ERROR_TABLE:
        if issubclass(exc_type, source):
            return target
    return None


__all__ = [
    "ERROR_TABLE",
    "UpstreamError",
    "UpstreamRefusedUpgrade",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "upstream_error_class",
]
