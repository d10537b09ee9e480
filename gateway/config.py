"""The configuration: one frozen dataclass per TOML table, loaded and validated once at start.

Every problem in a file is collected and reported at once, each naming its TOML key
(`[tokens].access_ttl: expected a duration like "5m" (got "five")`), so an operator fixes a file
in one pass. Durations are stored as float seconds, sizes as int bytes.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MiB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:8080"
    public_url: str = "http://localhost:8080"
    auth_prefix: str = "/auth"
    workers: int = 1
    trusted_proxies: tuple[IPNetwork, ...] = ()
    upstream_timeout: float = 30.0
    upstream_connect_timeout: float = 5.0
    keepalive_timeout: float = 15.0
    request_body_timeout: float = 60.0
    shutdown_timeout: float = 30.0


@dataclass(frozen=True)
class StorageConfig:
    # Resolved at load: a relative sqlite path is made absolute against the config file's folder.
    url: str = "sqlite:///gateway.db"


@dataclass(frozen=True)
class TokensConfig:
    algorithm: Literal["HS256", "EdDSA", "ES256", "RS256"] = "HS256"
    signing_key_file: Path = Path("keys/signing.key")  # resolved against the config file's folder
    issuer: str = "gateway"
    audience: str = "gateway"
    expose_refresh_token: bool = False
    access_ttl: float = 300.0
    refresh_ttl: float = 1800.0
    session_ttl: float = 43200.0
    reuse_grace: float = 10.0
    leeway: float = 30.0
    remember_me: bool = False
    remember_refresh_ttl: float = 7 * 86400.0
    remember_session_ttl: float = 30 * 86400.0


@dataclass(frozen=True)
class CookiesConfig:
    access_name: str = "gw_access"
    refresh_name: str = "gw_refresh"
    secure: bool = False  # "auto" is resolved at load against server.public_url
    same_site: Literal["Strict", "Lax", "None"] = "Lax"

    @property
    def access_cookie(self) -> str:
        """The cookie name on the wire: `__Host-` whenever Secure (RFC 6265bis §4.1.3.2)."""
        return ("__Host-" if self.secure else "") + self.access_name

    @property
    def refresh_cookie(self) -> str:
        return ("__Host-" if self.secure else "") + self.refresh_name


@dataclass(frozen=True)
class PasswordsConfig:
    min_length: int = 15
    max_length: int = 128
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    hash_workers: int = 2
    hash_queue: int = 8
    reject_common: bool = True


@dataclass(frozen=True)
class RegistrationConfig:
    enabled: bool = True
    allowed_email_domains: tuple[str, ...] = ()
    default_roles: tuple[str, ...] = ("user",)


@dataclass(frozen=True)
class LoginConfig:
    max_failures: int = 5
    max_failures_per_address: int = 50
    window: float = 900.0
    max_lockout: float = 900.0


@dataclass(frozen=True)
class HeadersConfig:
    user_id: str = "X-Auth-User-Id"
    email: str = "X-Auth-User-Email"
    roles: str = "X-Auth-User-Roles"
    session_id: str = "X-Auth-Session-Id"

    def names(self) -> tuple[str, ...]:
        return (self.user_id, self.email, self.roles, self.session_id)


@dataclass(frozen=True)
class RouteConfig:
    path: str
    upstream: str  # scheme://host:port, no trailing slash (normalised at load)
    auth: Literal["required", "optional", "public"] = "required"
    roles: tuple[str, ...] = ()
    on_unauthenticated: Literal["auto", "redirect", "status"] = "auto"
    strip_prefix: bool = False
    websocket: bool = True
    max_body_size: int = 100 * MiB
    allow_encoded_slash: bool = False
    headers: HeadersConfig | None = None  # [routes.headers]: overrides [headers] for this route


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    access_log: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    path: str = "/metrics"
    allow: tuple[IPNetwork, ...] = field(
        default_factory=lambda: (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    )


@dataclass(frozen=True)
class PagesConfig:
    product_name: str = "Gateway"
    logo_url: str = ""


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    cookies: CookiesConfig = field(default_factory=CookiesConfig)
    passwords: PasswordsConfig = field(default_factory=PasswordsConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    login: LoginConfig = field(default_factory=LoginConfig)
    headers: HeadersConfig = field(default_factory=HeadersConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    pages: PagesConfig = field(default_factory=PagesConfig)
    routes: tuple[RouteConfig, ...] = ()
    source: Path | None = None  # the file it came from; None for configs built in code (tests)


class ConfigError(Exception):
    """A configuration that must not be used: `problems` lists every problem, each naming its key."""

    def __init__(self, problems: list[str], source: Path | None = None) -> None:
        super().__init__(problems)
        self.problems = problems
        self.source = source

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source is not None else ""
        return "\n".join([f"invalid configuration{where}:", *(f"  {p}" for p in self.problems)])


# Decimal keeps "1.1MB" and "100ms" exact before the final conversion.
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(B|KiB|MiB|GiB|KB|MB|GB)?")
_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB, "KB": 1000, "MB": 10**6, "GB": 10**9}


def parse_duration(text: str) -> float:
    """Seconds in a duration like "90s", "5m", "1.5s" or "14d" (units ms, s, m, h, d).

    Raises ValueError for anything else: negatives, a bare number, empty text, unknown units.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (expected a number and one of ms, s, m, h, d)")
    return float(Decimal(match[1]) * _DURATION_UNITS[match[2]])


def parse_size(text: str) -> int:
    """Bytes in a size like "10MiB" (B, KiB, MiB, GiB; KB, MB, GB are powers of 1000) or "512".

    Raises ValueError for anything else, including negatives and fractions of a byte.
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (expected a number and one of B, KiB, MiB, GiB, KB, MB, GB)")
    size = Decimal(match[1]) * _SIZE_UNITS[match[2] or "B"]
    if size != size.to_integral_value():
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(size)


# ---------------------------------------------------------------------------------------------
# Rules: each turns a TOML value into the dataclass field's value or raises _Invalid saying what
# was expected. Fields without an entry in _RULES get a rule from their type (_rule_for_type).


class _Invalid(Exception):
    """A value broke its rule; the message is the text after "[table].key: "."""


def _show(value: object) -> str:
    """A value as it would appear in TOML, shortened; JSON quoting escapes control characters."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list):
        text = "[" + ", ".join(_show(item) for item in value) + "]"
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _expected(what: str, value: object) -> _Invalid:
    return _Invalid(f"expected {what} (got {_show(value)})")


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
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


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
        if not (isinstance(value, str) and _DURATION.fullmatch(value)):
            raise _expected('a duration like "5m"', value)
        seconds = parse_duration(value)
        if seconds == 0 and not zero_ok:
            raise _expected('a duration greater than 0, like "5m"', value)
        if most is not None and seconds > most:
            raise _expected(f"a duration of at most {_format_duration(most)}", value)
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
            raise _expected("one of " + ", ".join(_show(option) for option in options), value)
        return value

    return rule


def _list(what: str, item: Callable[[Any], Any]) -> Rule:
    """A TOML array whose items all pass `item` (which returns None to reject one), as a tuple."""

    def rule(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise _expected(what, value)
        converted = [item(element) for element in value]
        bad = [
            f"{_show(element)} at [{i}]"
            for i, (element, c) in enumerate(zip(value, converted, strict=True))
            if c is None
        ]
        if bad:
            raise _Invalid(f"expected {what} (got {', '.join(bad)})")
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
        raise _Invalid(f"{problem} (got {_show(value)})")
    return str(value)


def _prefix(value: Any) -> str:
    """A path the gateway serves itself (auth_prefix, metrics.path): a route path other than "/"."""
    if _route_path(value) == "/":
        raise _Invalid(f'must not be "/": that would take over every route (got {_show(value)})')
    return str(value)


def _origin(what: str) -> Rule:
    """An absolute http(s) URL with a host and no path, normalised to scheme://host[:port]."""

    def rule(value: Any) -> str:
        try:
            parts = urlsplit(_text(value))
            parts.port  # noqa: B018 - only evaluating it checks the port (ValueError)
        except (ValueError, _Invalid):
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


def _mask_url(url: str) -> str:
    """The URL with any password replaced by ***: safe to print and log, even when malformed."""
    return re.sub(r"(//[^/@:]*:)[^@/]*@", r"\1***@", url, count=1)


def _storage_url(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    sqlite = text.startswith("sqlite:///") and text != "sqlite:///"
    postgres = text.startswith(("postgresql://", "postgres://"))
    if not (_is_clean(text) and (sqlite or postgres)):
        what = '"sqlite:///relative/path.db", "sqlite:////absolute/path.db" or "postgresql://..."'
        raise _expected(what, _mask_url(text) if text else value)
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
        raise _Invalid(f'must not carry a prefix: "__Host-" is added automatically (got {_show(value)})')
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


_RULES: dict[tuple[type[Any], str], Rule] = {
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


def _rule_for_type(hint: Any) -> Rule:
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
        raise TypeError(f"config.py has no rule for fields of type {hint!r}")
    return by_type[hint]


# ---------------------------------------------------------------------------------------------
# Loading: convert each table by its dataclass, then check what spans keys, then build.


@dataclass
class _Problems:
    """Problems found so far, in order, and the keys they rejected (cross-key checks skip those)."""

    lines: list[str] = field(default_factory=list)
    rejected: set[str] = field(default_factory=set)

    def add(self, key: str, reason: str, origin: str | None = None) -> None:
        self.rejected.add(key)
        self.lines.append(f"{key}{f' (from {origin})' if origin else ''}: {reason}")

    def ok(self, *keys: str) -> bool:
        return self.rejected.isdisjoint(keys)


def _tables() -> dict[str, type[Any]]:
    """TOML table name -> dataclass, straight from Config's fields."""
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config) if f.name not in ("routes", "source")}


def _convert(
    cls: type[Any], raw: Mapping[str, Any], prefix: str, problems: _Problems, origins: Mapping[str, str]
) -> dict[str, Any]:
    """The valid keys of one table converted for `cls`; every unknown or invalid key is a problem."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in hints:
            close = difflib.get_close_matches(key, list(hints), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            problems.add(f"{prefix}.{key}", f"unknown key{hint}", origins.get(key))
            continue
        rule = _RULES.get((cls, key)) or _rule_for_type(hints[key])
        try:
            values[key] = rule(value)
        except _Invalid as invalid:
            problems.add(f"{prefix}.{key}", str(invalid), origins.get(key))
    return values


def _env_value(raw: str, hint: Any) -> Any:
    """An environment value read as one TOML value when it is one, else as text.

    Keys that hold text keep the text unless it is a quoted TOML string, so that
    GATEWAY_TOKENS_ISSUER=2024 means "2024" rather than an integer.
    """
    try:
        parsed = tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
        return raw
    if set(parsed) != {"value"}:  # a newline in the value smuggled in more keys: not one value
        return raw
    value = parsed["value"]
    holds_text = hint in (str, Path) or get_origin(hint) is Literal
    return raw if holds_text and not isinstance(value, str) else value


def _raw_tables(
    data: Mapping[str, Any], tables: Mapping[str, type[Any]], environ: Mapping[str, str], problems: _Problems
) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """Each table's raw keys with environment overrides applied, and which variable set which key.

    Variables whose section names no table are left alone: GATEWAY_CONFIG and other tools share
    the prefix. Routes are a list and cannot be overridden.
    """
    for name in data:
        if name not in tables and name != "routes":
            problems.add(f"[{name}]", "unknown table")
    result: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
    for name in tables:
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            problems.add(f"[{name}]", f"expected a table (got {_show(raw)})")
            raw = {}
        result[name] = (dict(raw), {})
    for variable in sorted(name for name in environ if name.startswith("GATEWAY_")):
        section, _, key = variable.removeprefix("GATEWAY_").lower().partition("_")
        if section == "routes":
            problems.add("[[routes]]", "routes cannot be set from the environment", variable)
        elif section in tables:
            values, origins = result[section]
            values[key] = _env_value(environ[variable], get_type_hints(tables[section]).get(key))
            origins[key] = variable
    return result


def _resolve_storage_url(url: str, base: Path) -> str:
    """sqlite:///relative.db becomes sqlite:////base/relative.db; other URLs are kept."""
    path = url.removeprefix("sqlite:///")
    if path == url or path == ":memory:":
        return url
    return "sqlite:///" + str(base / path)


def _secure_default(public_url: str) -> bool:
    """secure = "auto": Secure cookies unless the gateway is plain HTTP on this machine."""
    parts = urlsplit(public_url)
    return not (parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _check_headers(headers: HeadersConfig, prefix: str, problems: _Problems) -> None:
    """Each identity header must be its own header, also after "_" -> "-" (how CGI apps see them)."""
    seen: dict[str, str] = {}
    for f in fields(HeadersConfig):
        name = getattr(headers, f.name)
        normal = name.lower().replace("_", "-")
        if normal in seen and problems.ok(f"{prefix}.{f.name}", f"{prefix}.{seen[normal]}"):
            problems.add(f"{prefix}.{f.name}", f"same header as {prefix}.{seen[normal]} (got {_show(name)})")
        seen.setdefault(normal, f.name)


def _check(tables: dict[str, Any], problems: _Problems) -> None:
    """Rules that span keys; a rule is skipped when one of its keys was already rejected."""
    cookies, passwords = tables["cookies"], tables["passwords"]
    if cookies.same_site == "None" and not cookies.secure and problems.ok("[cookies].secure"):
        problems.add("[cookies].same_site", '"None" requires secure cookies (browsers drop them otherwise)')
    if cookies.access_name == cookies.refresh_name and problems.ok("[cookies].access_name"):
        problems.add(
            "[cookies].refresh_name",
            f"must differ from [cookies].access_name (both {_show(cookies.access_name)})",
        )
    if passwords.min_length > passwords.max_length and problems.ok("[passwords].max_length"):
        problems.add(
            "[passwords].min_length", f"must not exceed [passwords].max_length ({passwords.max_length})"
        )
    floor = 8 * passwords.argon2_parallelism
    if passwords.argon2_memory_kib < floor and problems.ok("[passwords].argon2_parallelism"):
        problems.add(
            "[passwords].argon2_memory_kib",
            f"argon2 needs at least 8 KiB per lane: {floor} for argon2_parallelism"
            f" = {passwords.argon2_parallelism} (got {passwords.argon2_memory_kib})",
        )
    auth_prefix = tables["server"].auth_prefix
    metrics_path = tables["metrics"].path
    if _under(metrics_path, auth_prefix) and problems.ok("[server].auth_prefix", "[metrics].path"):
        problems.add(
            "[metrics].path",
            f"must not be under [server].auth_prefix {_show(auth_prefix)} (got {_show(metrics_path)})",
        )
    _check_headers(tables["headers"], "[headers]", problems)


def _routes(
    raw: Any, headers: HeadersConfig, auth_prefix: str | None, problems: _Problems
) -> tuple[RouteConfig, ...]:
    """The [[routes]] tables; [routes.headers] keys fill in from [headers]."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.add("[[routes]]", f"expected an array of tables written [[routes]] (got {_show(raw)})")
        return ()
    required = [f.name for f in fields(RouteConfig) if f.default is MISSING and f.default_factory is MISSING]
    routes: list[RouteConfig] = []
    paths: dict[str, str] = {}
    for i, table in enumerate(raw):
        prefix = f"[[routes]][{i}]"
        if not isinstance(table, dict):
            problems.add(prefix, f"expected a table (got {_show(table)})")
            continue
        values = _convert(RouteConfig, table, prefix, problems, {})
        for key in required:
            if key not in table:
                problems.add(f"{prefix}.{key}", "missing: every route needs " + " and ".join(required))
        if "headers" in values:
            own = _convert(HeadersConfig, values["headers"], f"{prefix}.headers", problems, {})
            values["headers"] = replace(headers, **own)
            _check_headers(values["headers"], f"{prefix}.headers", problems)
        path = values.get("path")
        if path in paths:
            problems.add(f"{prefix}.path", f"duplicates {paths[path]} (got {_show(path)})")
        elif path is not None and auth_prefix is not None and _under(path, auth_prefix):
            problems.add(
                f"{prefix}.path",
                f"is inside [server].auth_prefix {_show(auth_prefix)}, which the gateway serves itself",
            )
        if path is not None:
            paths.setdefault(path, f"{prefix}.path")
        if all(key in values for key in required):
            routes.append(RouteConfig(**values))
    return tuple(routes)


def config_from_dict(
    data: Mapping[str, Any], *, source: Path | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """The Config for TOML-shaped `data`, or ConfigError listing every problem at once.

    Relative paths resolve against `source`'s folder, or the current directory when it is None.
    `environ` supplies GATEWAY_<SECTION>_<KEY> overrides; without it the environment is ignored.
    """
    problems = _Problems()
    base = source.absolute().parent if source is not None else Path.cwd()
    classes = _tables()
    tables: dict[str, Any] = {}
    # In Config's field order: [server] comes first, so cookies can resolve "auto" against it.
    for name, (raw, origins) in _raw_tables(data, classes, environ or {}, problems).items():
        cls = classes[name]
        values = _convert(cls, raw, f"[{name}]", problems, origins)
        if name == "storage" and "url" in values:
            values["url"] = _resolve_storage_url(values["url"], base)
        elif name == "tokens":
            values["signing_key_file"] = base / values.get("signing_key_file", TokensConfig.signing_key_file)
        elif name == "cookies" and values.get("secure", "auto") == "auto":
            values["secure"] = _secure_default(tables["server"].public_url)
            if not problems.ok("[server].public_url"):  # "auto" had nothing valid to go by
                problems.rejected.add("[cookies].secure")
        tables[name] = cls(**values)
    _check(tables, problems)
    auth_prefix = tables["server"].auth_prefix if problems.ok("[server].auth_prefix") else None
    routes = _routes(data.get("routes"), tables["headers"], auth_prefix, problems)
    if problems.lines:
        raise ConfigError(problems.lines, source)
    return Config(**tables, routes=routes, source=source.absolute() if source is not None else None)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """The Config in the TOML file at `path`, with overrides from `environ` (default: os.environ).

    A file that is missing, unreadable or not TOML raises ConfigError like any other problem.
    """
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError([f"cannot read the file: {error.strerror or error}"], path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError([f"not valid TOML: {error}"], path) from None
    return config_from_dict(data, source=path, environ=os.environ if environ is None else environ)


# ---------------------------------------------------------------------------------------------
# describe(): what `gateway check-config` prints.


def _format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    milliseconds = seconds * 1000
    if milliseconds == round(milliseconds):
        return f"{round(milliseconds)}ms"
    return f"{seconds:g}s"


def _format_size(size: int) -> str:
    for unit, factor in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def _toml(value: object) -> str:
    """A field value written back as TOML: durations and sizes as their strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return json.dumps(_format_duration(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _table_lines(header: str, table: Any) -> list[str]:
    lines = [header]
    for f in fields(table):
        value = getattr(table, f.name)
        if f.name == "url":
            lines.append(f"url = {_toml(_mask_url(value))}")
        elif f.name == "max_body_size":
            lines.append(f"max_body_size = {_toml(_format_size(value))}")
        elif f.name != "headers":
            lines.append(f"{f.name} = {_toml(value)}")
    return lines


def describe(config: Config) -> str:
    """The effective routes and settings, secrets masked, as text for `gateway check-config`."""
    lines = [f"# effective configuration from {config.source or 'code'}", "", "# routes, in matching order:"]
    width = max((len(route.path) for route in config.routes), default=0)
    for route in sorted(config.routes, key=lambda r: len(r.path), reverse=True):
        roles = f" roles={','.join(route.roles)}" if route.roles else ""
        lines.append(f"#   {route.path:<{width}}  ->  {route.upstream}  auth={route.auth}{roles}")
    if not config.routes:
        lines.append("#   (none: every request outside the gateway's own paths gets 404)")
    wire = f"{config.cookies.access_cookie}, {config.cookies.refresh_cookie}"
    for f in fields(config):
        if f.name not in ("routes", "source"):
            lines += ["", *_table_lines(f"[{f.name}]", getattr(config, f.name))]
        if f.name == "cookies":
            lines.append(f"# cookie names on the wire: {wire}")
    for route in config.routes:
        lines += ["", *_table_lines("[[routes]]", route)]
        if route.headers is not None:
            lines += _table_lines("[routes.headers]", route.headers)
    return "\n".join(lines) + "\n"
