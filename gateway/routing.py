"""Which route a canonical path belongs to, and the target the upstream receives.

Prefixes match on segment boundaries only (`/public` matches `/public/x`, never `/publicity`:
SECURITY B.7 item 110) and the longest prefix wins (DESIGN §3). Route paths are written decoded
in the configuration while canonical paths keep escapes as sent, so a path is compared in its
decoded form (RFC 3986 §6.2.2: `/a%3Ab` is `/a:b` to the upstream), with `%2F` kept apart.
`Router.route_for` also refuses a path whose route would differ for an upstream that reads it
another common way (servlet `;params`, case-insensitive, decoded `%2F`): the gateway must decide
on the path the upstream resolves (ASVS 4.0.3 V13.1.1, SECURITY R-PX-10). No aiohttp objects.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar
from urllib.parse import unquote

from gateway.config import RouteConfig
from gateway.paths import PathRejected, Target

__all__ = ["Router", "match_route", "upstream_target"]

_K = TypeVar("_K")
_V = TypeVar("_V")
_ENCODED_SLASH = re.compile("%2[fF]")
_SLASH_RUN = re.compile("/{2,}")


def _prefix(route: RouteConfig) -> str:
    """The route's path without trailing "/": "" for the root route, which matches every path."""
    return route.path.rstrip("/")


def _key(path: str) -> str:
    """The path as compared with route prefixes: decoded, except that `%2F` stays `%2F`."""
    if "%" not in path:
        return path  # nothing to decode: the common case
    key = _KEYS.get(path)
    if key is None:
        key = "%2F".join(unquote(part) for part in _ENCODED_SLASH.split(path))
        if len(path) <= CACHED_PATH:
            _remember(_KEYS, path, key)
    return key


# Memos of pure functions of the path, for the hot path. Paths come from clients, so only short
# ones are kept and a full memo starts over: memory stays bounded (CACHE_LIMIT × CACHED_PATH).
CACHE_LIMIT = 4096
CACHED_PATH = 256
_KEYS: dict[str, str] = {}


def _remember(memo: dict[_K, _V], key: _K, value: _V) -> None:
    if len(memo) >= CACHE_LIMIT:
        memo.clear()
    memo[key] = value


def _under(key: str, prefix: str) -> bool:
    return not prefix or key == prefix or key.startswith(prefix + "/")


def match_route(routes: Sequence[RouteConfig], path: str) -> RouteConfig | None:
    """The route with the longest prefix that canonical `path` equals or continues with "/", or None.

    Among routes with the same prefix, the first in `routes` wins.
    """
    key = _key(path)
    best: RouteConfig | None = None
    best_length = -1
    for route in routes:
        prefix = _prefix(route)
        if len(prefix) > best_length and _under(key, prefix):
            best, best_length = route, len(prefix)
    return best


def upstream_target(route: RouteConfig, target: Target) -> str:
    """The path and query sent upstream: `strip_prefix` removes the route prefix, keeping a leading "/".

    The rest of the path stays in its canonical (encoded) form and the query passes byte-for-byte.
    Raises ValueError when `route` does not match `target.path`.
    """
    prefix = _prefix(route)
    if not _under(_key(target.path), prefix):
        raise ValueError("the route does not match this path")
    path = target.path
    if route.strip_prefix and prefix:
        # Drop as many segments as the prefix has: decoding never adds or removes a "/".
        rest = path.split("/")[prefix.count("/") + 1 :]
        path = "/" + "/".join(rest)
    return path if target.query is None else f"{path}?{target.query}"


def _strip_params(key: str) -> str:
    return _SLASH_RUN.sub("/", "/".join(segment.split(";", 1)[0] for segment in key.split("/")))


def _readings(key: str) -> set[str]:
    """The decoded path plus other ways upstreams commonly read it (for the ambiguity check)."""
    if ";" not in key and "%2F" not in key:
        return {key}  # the common case: every reading below is the path itself
    # Many upstreams decode `%2F` before routing (dot-segments next to one are refused earlier).
    decoded_slash = _SLASH_RUN.sub("/", _ENCODED_SLASH.sub("/", key))
    # Servlet containers (Tomcat, Jetty) drop `;params` from every segment before routing.
    return {key, decoded_slash, _strip_params(key), _strip_params(decoded_slash)}


class Router:
    """Routes sorted once by prefix length (longest first); matching is then a first hit."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        # `sorted` is stable, so routes with equal prefixes keep their configuration order.
        self._routes = tuple(sorted(routes, key=lambda r: len(_prefix(r)), reverse=True))
        self._prefixes = tuple(_prefix(r) for r in self._routes)
        self._folded = tuple(p.lower() for p in self._prefixes)
        # (canonical path, encoded slash) -> the route, or the PathRejected reason
        self._decided: dict[tuple[str, bool], RouteConfig | str | None] = {}

    @property
    def routes(self) -> tuple[RouteConfig, ...]:
        """The routes in matching order."""
        return self._routes

    def match(self, path: str) -> RouteConfig | None:
        """Same result as `match_route(routes, path)`."""
        return self._match_key(_key(path))

    def _match_key(self, key: str, *, fold_case: bool = False) -> RouteConfig | None:
        if fold_case:
            key = key.lower()
        for route, prefix in zip(self._routes, self._folded if fold_case else self._prefixes, strict=True):
            if _under(key, prefix):
                return route
        return None

    def route_for(self, target: Target) -> RouteConfig | None:
        """The route for a canonical target, or None when no route matches.

        Raises `PathRejected` (the caller answers 400) when the path holds an encoded slash and the
        route does not set `allow_encoded_slash`, or when another common reading of the path
        (`%2F` decoded, servlet `;params` dropped, case folded) would pick another route.
        The answer for a path is remembered (a pure function of the path and the routes).
        """
        memo = (target.path, target.encoded_slash)
        try:
            decided = self._decided[memo]
        except KeyError:
            try:
                decided = self._route_for(target)
            except PathRejected as rejected:
                decided = rejected.reason
            if len(target.path) <= CACHED_PATH:
                _remember(self._decided, memo, decided)
        if isinstance(decided, str):
            raise PathRejected(decided)
        return decided

    def _route_for(self, target: Target) -> RouteConfig | None:
        key = _key(target.path)
        route = self._match_key(key)
        if target.encoded_slash and (route is None or not route.allow_encoded_slash):
            raise PathRejected("encoded slash in path")
        for reading in _readings(key):
            # Each reading also case-folded, for case-insensitive upstreams (IIS, Windows and
            # macOS file systems): SECURITY item 111.
            if self._match_key(reading) is not route or self._match_key(reading, fold_case=True) is not route:
                raise PathRejected("path is ambiguous between routes")
        return route
