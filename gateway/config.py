"""The configuration: one frozen dataclass per TOML table, loaded and validated once at start.

Every problem in a file is collected and reported at once, each naming its TOML key
(`[tokens].access_ttl: expected a duration like "5m" (got "five")`), so an operator fixes a file
in one pass. Durations are stored as float seconds, sizes as int bytes.

This module holds the dataclasses, ConfigError and the duration and size parsers. The rule each
value must pass is in gateway.config_rules; load_config, config_from_dict and describe() (what
`gateway check-config` prints) are in gateway.config_load.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Literal

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
DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
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
    match = DURATION.fullmatch(text)
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
