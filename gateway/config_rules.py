"""Per-value rules: each turns one TOML value into its dataclass field's value or raises Invalid.

Kept apart from gateway.config so the dataclasses read as a schema. Fields without an entry in
RULES get a rule from their type (rule_for_type).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import fields
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from gateway.config import (
    DURATION,
    CookiesConfig,
    HeadersConfig,
    IPNetwork,
    MetricsConfig,
    PagesConfig,
    PasswordsConfig,
    RegistrationConfig,
    RouteConfig,
    ServerConfig,
    StorageConfig,
    TokensConfig,
    parse_duration,
    parse_size,
)


class Invalid(Exception):
    """A value broke its rule; the message is the text after "[table].key: "."""


def show(value: object) -> str:
    """A value as it would appear in TOML, shortened; JSON quoting escapes control characters."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list):
        text = "[" + ", ".join(show(item) for item in value) + "]"
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _expected(what: str, value: object) -> Invalid:
    return Invalid(f"expected {what} (got {show(value)})")


def _is_clean(text: str) -> bool:
    """No spaces or control characters: they have no place in names, paths and URLs here."""
    return text.isprintable() and " " not in text


Rule = Callable[[Any], Any]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token = RFC 6265 cookie-name token
# Identity header names are stripped from every request, so none may be a header that requests
# need (framing, Host, credentials, forwarding) or that hop-by-hop rules already remove.
_RESERVED_HEADERS = frozenset(
    {
        *("connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"),
        *("trailer", "proxy-authorization", "proxy-authenticate"),
        *("host", "content-length", "content-type", "cookie", "authorization"),
        *("forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"),
    }
)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _expected("true or false", value)
    return value


def _int(low: int, high: int | None = None) -> Rule:
    """Integers in [low, high]; a TOML bool is not an integer here, though Python says it is."""
    what = f"an integer from {low} to {high}" if high is not None else f"an integer of at least {low}"

    def rule(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expected("an integer", value)
        if value < low or (high is not None and value > high):
            raise _expected(what, value)
        return value

    return rule


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _expected("a non-empty string", value)
    return value


def _duration(*, zero_ok: bool = False, most: float | None = None) -> Rule:
    """Durations above 0 (from 0 when zero_ok) and at most `most` seconds."""

    def rule(value: Any) -> float:
        if not (isinstance(value, str) and DURATION.fullmatch(value)):
            raise _expected('a duration like "5m"', value)
        seconds = parse_duration(value)
        if seconds == 0 and not zero_ok:
            raise _expected('a duration greater than 0, like "5m"', value)
        if most is not None and seconds > most:
            raise _expected(f"a duration of at most {format_duration(most)}", value)
        return seconds

    return rule


def _size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    try:
        if isinstance(value, str):
            return parse_size(value)
    except ValueError:
        pass
    raise _expected('a size like "10MiB"', value)


def _choice(options: tuple[str, ...]) -> Rule:
    def rule(value: Any) -> str:
        if value not in options or not isinstance(value, str):
            raise _expected("one of " + ", ".join(show(option) for option in options), value)
        return value

    return rule


def _list(what: str, item: Callable[[Any], Any]) -> Rule:
    """A TOML array whose items all pass `item` (which returns None to reject one), as a tuple."""

    def rule(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _expected(what, value)
        converted = [item(element) for element in value]
        bad = [
            f"{show(element)} at [{i}]"
            for i, (element, c) in enumerate(zip(value, converted, strict=True))
            if c is None
        ]
        if bad:
            raise Invalid(f"expected {what} (got {', '.join(bad)})")
        return tuple(converted)

    return rule


def _cidr(value: Any) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(value, strict=False) if isinstance(value, str) else None
    except ValueError:
        return None


def _role(value: Any) -> str | None:
    # Roles travel comma-separated in one header: a comma or padding would change their meaning.
    ok = isinstance(value, str) and value and value == value.strip() and _is_clean(value) and "," not in value
    return value if ok else None


def _domain(value: Any) -> str | None:
    ok = isinstance(value, str) and value and _is_clean(value) and "@" not in value
    return value.lower() if ok else None


def _path_problem(path: str) -> str | None:
    """Why `path` cannot be a prefix the gateway matches canonical paths against (DESIGN §7)."""
    if not path.startswith("/"):
        return 'must start with "/"'
    if path != "/" and path.endswith("/"):
        return 'must not end with "/"'
    if "//" in path:
        return 'must not contain "//"'
    if "%" in path:
        return 'must not contain "%" (write the path decoded)'
    if {".", ".."} & set(path.split("/")):
        return 'must not contain "." or ".." segments'
    if not _is_clean(path) or any(c in path for c in "?#\\"):
        return 'must not contain spaces, control characters, "?", "#" or "\\"'
    return None


def _route_path(value: Any) -> str:
    problem = _path_problem(_text(value))
    if problem:
        raise Invalid(f"{problem} (got {show(value)})")
    return str(value)


def _prefix(value: Any) -> str:
    """A path the gateway serves itself (auth_prefix, metrics.path): a route path other than "/"."""
    if _route_path(value) == "/":
        raise Invalid(f'must not be "/": that would take over every route (got {show(value)})')
    return str(value)


def _origin(what: str) -> Rule:
    """An absolute http(s) URL with a host and no path, normalised to scheme://host[:port]."""

    def rule(value: Any) -> str:
        try:
            parts = urlsplit(_text(value))
            parts.port  # noqa: B018 - only evaluating it checks the port (ValueError)
        except (ValueError, Invalid):
            raise _expected(what, value) from None
        ok = (
            _is_clean(value)
            and parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and "@" not in parts.netloc
            and parts.path in ("", "/")
            and not (parts.query or parts.fragment or value.endswith(("?", "#")))
        )
        if not ok:
            raise _expected(what, value)
        return f"{parts.scheme}://{parts.netloc}"

    return rule


def _listen(value: Any) -> str:
    host, sep, port = _text(value).rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        try:
            host_ok = isinstance(ipaddress.ip_address(host[1:-1]), ipaddress.IPv6Address)
        except ValueError:
            host_ok = False
    else:
        host_ok = re.fullmatch(r"[A-Za-z0-9.-]+", host) is not None
    if not (sep and host_ok and re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535):
        raise _expected('host:port like "127.0.0.1:8080" or "[::1]:8080"', value)
    return str(value)


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***: safe to print and log, even when malformed."""
    return re.sub(r"(//[^/@:]*:)[^@/]*@", r"\1***@", url, count=1)


def _storage_url(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    sqlite = text.startswith("sqlite:///") and text != "sqlite:///"
    postgres = text.startswith(("postgresql://", "postgres://"))
    if not (_is_clean(text) and (sqlite or postgres)):
        what = '"sqlite:///relative/path.db", "sqlite:////absolute/path.db" or "postgresql://..."'
        raise _expected(what, mask_url(text) if text else value)
    return text


def _file(value: Any) -> Path:
    return Path(_text(value))


def _secure(value: Any) -> bool | str:
    if isinstance(value, bool):
        return value
    if value == "auto":
        return "auto"
    raise _expected('"auto", true or false', value)


def _cookie_name(value: Any) -> str:
    if not (isinstance(value, str) and _TOKEN.fullmatch(value)):
        raise _expected("a cookie name made of letters, digits and !#$%&'*+-.^_`|~", value)
    if value.lower().startswith(("__host-", "__secure-")):
        raise Invalid(f'must not carry a prefix: "__Host-" is added automatically (got {show(value)})')
    return value


def _header_name(value: Any) -> str:
    if not (isinstance(value, str) and _TOKEN.fullmatch(value)):
        raise _expected("a header name made of letters, digits and !#$%&'*+-.^_`|~", value)
    if value.lower().replace("_", "-") in _RESERVED_HEADERS:
        raise _expected("a header name other than hop-by-hop and gateway-managed ones", value)
    return value


def _logo_url(value: Any) -> str:
    """ "" for no logo, a path like "/static/logo.svg", or an absolute http(s) URL."""
    if value == "":
        return ""
    if isinstance(value, str) and _is_clean(value) and re.fullmatch(r"/(?!/).*|https?://[^/]+(/.*)?", value):
        return value
    raise _expected('"", a path like "/static/logo.svg" or an http(s) URL', value)


def _table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _expected("a table", value)
    return value


RULES: dict[tuple[type[Any], str], Rule] = {
    (ServerConfig, "listen"): _listen,
    (ServerConfig, "public_url"): _origin(
        'an absolute http(s) URL with no path, like "https://app.example.com"'
    ),
    (ServerConfig, "auth_prefix"): _prefix,
    (ServerConfig, "workers"): _int(1, 64),
    (StorageConfig, "url"): _storage_url,
    (TokensConfig, "reuse_grace"): _duration(zero_ok=True, most=60),
    (TokensConfig, "leeway"): _duration(zero_ok=True, most=300),
    (CookiesConfig, "access_name"): _cookie_name,
    (CookiesConfig, "refresh_name"): _cookie_name,
    (CookiesConfig, "secure"): _secure,
    (PasswordsConfig, "min_length"): _int(8, 1024),
    (PasswordsConfig, "max_length"): _int(8, 1024),
    (PasswordsConfig, "argon2_memory_kib"): _int(8),
    (RegistrationConfig, "allowed_email_domains"): _list('a list of domains like ["example.com"]', _domain),
    (RegistrationConfig, "default_roles"): _list("a list of role names without commas", _role),
    **{(HeadersConfig, f.name): _header_name for f in fields(HeadersConfig)},
    (MetricsConfig, "path"): _prefix,
    (PagesConfig, "logo_url"): _logo_url,
    (RouteConfig, "path"): _route_path,
    (RouteConfig, "upstream"): _origin('an upstream like "http://127.0.0.1:9000" (no path)'),
    (RouteConfig, "roles"): _list("a list of role names without commas", _role),
    (RouteConfig, "max_body_size"): _size,
}


def rule_for_type(hint: Any) -> Rule:
    """The rule a field gets from its type alone; a field type with no rule is a programming error."""
    if get_origin(hint) is Literal:
        return _choice(get_args(hint))
    by_type: dict[Any, Rule] = {
        bool: _bool,
        int: _int(1),
        float: _duration(),
        str: _text,
        Path: _file,
        tuple[IPNetwork, ...]: _list('a list of CIDRs like "10.0.0.0/8"', _cidr),
        HeadersConfig | None: _table,
    }
    if hint not in by_type:
        raise TypeError(f"config_rules.py has no rule for fields of type {hint!r}")
    return by_type[hint]


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    milliseconds = seconds * 1000
    if milliseconds == round(milliseconds):
        return f"{round(milliseconds)}ms"
    # Exact: repr() is the shortest text that reads back as the same float; "g" would round to 6
    # digits and write 1e-06, which parse_duration refuses (found by tests/security/test_properties).
    return f"{Decimal(repr(seconds)):f}s"
