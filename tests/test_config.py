"""Configuration: parsing, validation by key, environment overrides, the shipped file and the CLI."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest

from gateway import cli
from gateway.config import (
    Config,
    ConfigError,
    HeadersConfig,
    TokensConfig,
    parse_duration,
    parse_size,
)
from gateway.config_load import config_from_dict, describe, load_config
from gateway.errors import NotFound

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config.toml"
UPSTREAM = "http://127.0.0.1:9000"
ROUTE = {"path": "/", "upstream": UPSTREAM}


@pytest.fixture(autouse=True)
def _no_gateway_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's GATEWAY_* variables."""
    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)


def routes(**keys: Any) -> dict[str, Any]:
    """A config dict with one route: ROUTE updated with `keys`."""
    return {"routes": [{**ROUTE, **keys}]}


def problems_of(data: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data, environ=environ)
    return caught.value.problems


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- the shipped config.toml -------------------------------------------------------------------


def test_shipped_config_loads() -> None:
    """The repository's config.toml is valid and describes the demo: two routes to one upstream."""
    config = load_config(SHIPPED, environ={})
    assert [(r.path, r.upstream, r.auth) for r in config.routes] == [
        ("/", UPSTREAM, "required"),
        ("/public", UPSTREAM, "public"),
    ]
    assert config.storage.url == f"sqlite:///{REPO / 'gateway.db'}"
    assert config.tokens.signing_key_file == REPO / "keys" / "signing.key"


def test_shipped_config_shows_the_defaults() -> None:
    """Every value config.toml sets or shows in a comment is the dataclasses' default."""
    config = load_config(SHIPPED, environ={})
    defaults = Config()
    for f in dataclasses.fields(Config):
        loaded: Any
        if f.name == "tokens":
            loaded = dataclasses.replace(config.tokens, signing_key_file=TokensConfig.signing_key_file)
        elif f.name == "storage":
            loaded = dataclasses.replace(config.storage, url="sqlite:///gateway.db")
        elif f.name not in ("routes", "source"):
            loaded = getattr(config, f.name)
        else:
            continue
        assert loaded == getattr(defaults, f.name), f.name
    shown = [line.lstrip("# ") for line in SHIPPED.read_text().splitlines()]
    optional = {"strip_prefix", "websocket", "max_body_size", "allow_encoded_slash"}
    for line in shown:
        if line.split(" ", 1)[0] in optional:
            key, value = next(iter(tomllib.loads(line).items()))
            assert config_from_dict(routes(**{key: value})).routes[0] == config.routes[0], line


def _toml_sections(text: str) -> dict[str, str]:
    """The lines of each table of a TOML file, commented-out table headers included."""
    sections: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        header = re.match(r"#?\s*\[\[?([a-z_.]+)\]\]?", line)
        if header:
            current = header[1]
        else:
            sections[current] = sections.get(current, "") + line + "\n"
    return sections


def _dataclass_keys(cls: type[Any], table: str) -> list[tuple[str, str]]:
    """(table, key) for every key of `cls`, descending into tables (routes, routes.headers)."""
    keys: list[tuple[str, str]] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":  # where the file was, not a key
            continue
        nested: list[Any] = [
            t for t in (hints[f.name], *get_args(hints[f.name])) if dataclasses.is_dataclass(t)
        ]
        name = f"{table}.{f.name}" if table else f.name
        if nested:
            keys += _dataclass_keys(nested[0], name)
        else:
            keys.append((table, f.name))
    return keys


@pytest.mark.parametrize(("table", "key"), _dataclass_keys(Config, ""), ids=lambda v: v)
def test_shipped_config_documents_every_key(table: str, key: str) -> None:
    """config.toml mentions every key the dataclasses define, in its table (maybe commented out)."""
    section = _toml_sections(SHIPPED.read_text()).get(table, "")
    assert re.search(rf"^#?\s*{key}\s*=", section, re.MULTILINE), f"[{table}] {key} is not in config.toml"


# ---- durations and sizes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("14d", 1209600.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("0s", 0.0),
    ],
    ids=lambda v: str(v),
)
def test_parse_duration(text: str, seconds: float) -> None:
    """parse_duration turns a number and a unit into seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "-5s", "5x", "5 m", "m", "1.5.5s", "5M", " 5s", "1h30m", ".5s"])
def test_parse_duration_rejects(text: str) -> None:
    """parse_duration refuses empty text, bare numbers, negatives and unknown units."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("512B", 512),
        ("1KiB", 1024),
        ("10MiB", 10 * 1024 * 1024),
        ("1GiB", 1024**3),
        ("1KB", 1000),
        ("5MB", 5_000_000),
        ("2GB", 2_000_000_000),
        ("1.5KiB", 1536),
        ("1.1MB", 1_100_000),
    ],
    ids=lambda v: str(v),
)
def test_parse_size(text: str, size: int) -> None:
    """parse_size turns a number and a binary or decimal unit into bytes."""
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "10MiBs", "1.5", "10 MiB", "1TiB", "0.5B", "mib", "10mib"])
def test_parse_size_rejects(text: str) -> None:
    """parse_size refuses negatives, fractions of a byte and unknown units."""
    with pytest.raises(ValueError, match=r"size|bytes"):
        parse_size(text)


# ---- validation: each rule names its key -------------------------------------------------------

INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, config, the key the problem must name, a fragment of its message)
    ("listen-no-port", {"server": {"listen": "localhost"}}, "[server].listen", "host:port"),
    ("listen-bare-ipv6", {"server": {"listen": "::1:8080"}}, "[server].listen", '"[::1]:8080"'),
    ("listen-port-range", {"server": {"listen": "127.0.0.1:70000"}}, "[server].listen", "host:port"),
    (
        "public-url-path",
        {"server": {"public_url": "http://localhost:8080/app"}},
        "[server].public_url",
        "no path",
    ),
    ("public-url-scheme", {"server": {"public_url": "ftp://example.com"}}, "[server].public_url", "http(s)"),
    ("public-url-relative", {"server": {"public_url": "localhost:8080"}}, "[server].public_url", "http(s)"),
    ("auth-prefix-relative", {"server": {"auth_prefix": "auth"}}, "[server].auth_prefix", 'start with "/"'),
    ("auth-prefix-trailing", {"server": {"auth_prefix": "/auth/"}}, "[server].auth_prefix", 'end with "/"'),
    ("auth-prefix-root", {"server": {"auth_prefix": "/"}}, "[server].auth_prefix", 'must not be "/"'),
    ("workers-zero", {"server": {"workers": 0}}, "[server].workers", "from 1 to 64 (got 0)"),
    ("workers-65", {"server": {"workers": 65}}, "[server].workers", "from 1 to 64"),
    ("workers-text", {"server": {"workers": "four"}}, "[server].workers", 'expected an integer (got "four")'),
    ("workers-bool", {"server": {"workers": True}}, "[server].workers", "expected an integer (got true)"),
    (
        "proxies-bad-cidr",
        {"server": {"trusted_proxies": ["10.0.0.0/33"]}},
        "[server].trusted_proxies",
        "CIDR",
    ),
    ("proxies-not-list", {"server": {"trusted_proxies": "10.0.0.0/8"}}, "[server].trusted_proxies", "list"),
    ("timeout-zero", {"server": {"upstream_timeout": "0s"}}, "[server].upstream_timeout", "greater than 0"),
    (
        "timeout-number",
        {"server": {"upstream_timeout": 30}},
        "[server].upstream_timeout",
        'like "5m" (got 30)',
    ),
    ("storage-scheme", {"storage": {"url": "mysql://u@h/db"}}, "[storage].url", "sqlite:///"),
    ("storage-empty-path", {"storage": {"url": "sqlite:///"}}, "[storage].url", "sqlite:///"),
    ("storage-two-slashes", {"storage": {"url": "sqlite://gateway.db"}}, "[storage].url", "sqlite:///"),
    ("algorithm", {"tokens": {"algorithm": "HS512"}}, "[tokens].algorithm", '"EdDSA"'),
    ("algorithm-none", {"tokens": {"algorithm": "none"}}, "[tokens].algorithm", "one of"),
    ("key-file-empty", {"tokens": {"signing_key_file": ""}}, "[tokens].signing_key_file", "non-empty"),
    ("issuer-type", {"tokens": {"issuer": 5}}, "[tokens].issuer", "string (got 5)"),
    ("access-ttl-text", {"tokens": {"access_ttl": "five"}}, "[tokens].access_ttl", 'like "5m" (got "five")'),
    (
        "expose-text",
        {"tokens": {"expose_refresh_token": "yes"}},
        "[tokens].expose_refresh_token",
        "true or false",
    ),
    ("reuse-grace-max", {"tokens": {"reuse_grace": "61s"}}, "[tokens].reuse_grace", "at most 1m"),
    ("leeway-max", {"tokens": {"leeway": "6m"}}, "[tokens].leeway", "at most 5m"),
    ("refresh-ttl-zero", {"tokens": {"refresh_ttl": "0s"}}, "[tokens].refresh_ttl", "greater than 0"),
    ("secure-text", {"cookies": {"secure": "yes"}}, "[cookies].secure", '"auto", true or false'),
    ("same-site-case", {"cookies": {"same_site": "none"}}, "[cookies].same_site", '"Strict", "Lax", "None"'),
    (
        "same-site-none-insecure",
        {"cookies": {"same_site": "None", "secure": False}},
        "[cookies].same_site",
        "requires secure",
    ),
    ("cookie-name-space", {"cookies": {"access_name": "gw access"}}, "[cookies].access_name", "cookie name"),
    ("cookie-name-semicolon", {"cookies": {"refresh_name": "a;b"}}, "[cookies].refresh_name", "cookie name"),
    (
        "cookie-name-prefix",
        {"cookies": {"access_name": "__Host-gw"}},
        "[cookies].access_name",
        "added automatically",
    ),
    (
        "cookie-names-equal",
        {"cookies": {"access_name": "gw", "refresh_name": "gw"}},
        "[cookies].refresh_name",
        "must differ",
    ),
    ("min-length-7", {"passwords": {"min_length": 7}}, "[passwords].min_length", "from 8 to 1024"),
    ("max-length-1025", {"passwords": {"max_length": 1025}}, "[passwords].max_length", "from 8 to 1024"),
    (
        "min-over-max",
        {"passwords": {"min_length": 20, "max_length": 16}},
        "[passwords].min_length",
        "must not exceed [passwords].max_length",
    ),
    ("time-cost-0", {"passwords": {"argon2_time_cost": 0}}, "[passwords].argon2_time_cost", "at least 1"),
    (
        "parallelism-0",
        {"passwords": {"argon2_parallelism": 0}},
        "[passwords].argon2_parallelism",
        "at least 1",
    ),
    (
        "memory-per-lane",
        {"passwords": {"argon2_memory_kib": 16, "argon2_parallelism": 4}},
        "[passwords].argon2_memory_kib",
        "8 KiB per lane",
    ),
    ("hash-workers-0", {"passwords": {"hash_workers": 0}}, "[passwords].hash_workers", "at least 1"),
    ("hash-queue-0", {"passwords": {"hash_queue": 0}}, "[passwords].hash_queue", "at least 1"),
    (
        "domain-with-at",
        {"registration": {"allowed_email_domains": ["@example.com"]}},
        "[registration].allowed_email_domains",
        "domains",
    ),
    (
        "role-with-comma",
        {"registration": {"default_roles": ["a,b"]}},
        "[registration].default_roles",
        "role names",
    ),
    ("login-max-failures-0", {"login": {"max_failures": 0}}, "[login].max_failures", "at least 1"),
    (
        "login-per-address-0",
        {"login": {"max_failures_per_address": 0}},
        "[login].max_failures_per_address",
        "at least 1",
    ),
    ("login-window-0", {"login": {"window": "0s"}}, "[login].window", "greater than 0"),
    ("header-space", {"headers": {"user_id": "X Auth"}}, "[headers].user_id", "header name"),
    ("header-hop-by-hop", {"headers": {"email": "Connection"}}, "[headers].email", "hop-by-hop"),
    ("header-underscore-hop", {"headers": {"roles": "Transfer_Encoding"}}, "[headers].roles", "hop-by-hop"),
    ("header-cookie", {"headers": {"roles": "Cookie"}}, "[headers].roles", "gateway-managed"),
    (
        "header-duplicate",
        {"headers": {"email": "x-auth-user_id"}},
        "[headers].email",
        "same header as [headers].user_id",
    ),
    ("log-level", {"logging": {"level": "verbose"}}, "[logging].level", '"debug"'),
    ("log-format", {"logging": {"format": "xml"}}, "[logging].format", '"json"'),
    ("metrics-relative", {"metrics": {"path": "metrics"}}, "[metrics].path", 'start with "/"'),
    ("metrics-under-auth", {"metrics": {"path": "/auth/metrics"}}, "[metrics].path", "auth_prefix"),
    ("metrics-is-auth", {"metrics": {"path": "/auth"}}, "[metrics].path", "auth_prefix"),
    ("metrics-allow", {"metrics": {"allow": ["nope"]}}, "[metrics].allow", '"nope" at [0]'),
    ("product-name-blank", {"pages": {"product_name": "  "}}, "[pages].product_name", "non-empty"),
    ("logo-javascript", {"pages": {"logo_url": "javascript:alert(1)"}}, "[pages].logo_url", "http(s) URL"),
    ("route-relative", routes(path="app"), "[[routes]][0].path", 'start with "/"'),
    ("route-trailing", routes(path="/app/"), "[[routes]][0].path", 'end with "/"'),
    ("route-double-slash", routes(path="/a//b"), "[[routes]][0].path", '"//"'),
    ("route-dotdot", routes(path="/a/../b"), "[[routes]][0].path", '".."'),
    ("route-dot", routes(path="/a/./b"), "[[routes]][0].path", '"."'),
    ("route-percent", routes(path="/a%2Fb"), "[[routes]][0].path", '"%"'),
    ("route-query", routes(path="/a?b"), "[[routes]][0].path", '"?"'),
    ("route-in-auth", routes(path="/auth/app"), "[[routes]][0].path", "auth_prefix"),
    (
        "route-duplicate",
        {"routes": [ROUTE, {"path": "/", "upstream": "http://10.0.0.1"}]},
        "[[routes]][1].path",
        "duplicates [[routes]][0].path",
    ),
    ("route-no-upstream", {"routes": [{"path": "/"}]}, "[[routes]][0].upstream", "missing"),
    ("route-no-path", {"routes": [{"upstream": UPSTREAM}]}, "[[routes]][0].path", "missing"),
    ("upstream-path", routes(upstream="http://127.0.0.1:9000/app"), "[[routes]][0].upstream", "no path"),
    ("upstream-query", routes(upstream="http://127.0.0.1:9000/?a=1"), "[[routes]][0].upstream", "no path"),
    ("upstream-scheme", routes(upstream="ftp://127.0.0.1"), "[[routes]][0].upstream", "upstream like"),
    ("upstream-port", routes(upstream="http://127.0.0.1:99999"), "[[routes]][0].upstream", "upstream like"),
    ("route-auth", routes(auth="maybe"), "[[routes]][0].auth", '"required", "optional", "public"'),
    ("route-on-unauth", routes(on_unauthenticated="never"), "[[routes]][0].on_unauthenticated", '"redirect"'),
    ("route-roles-empty", routes(roles=[""]), "[[routes]][0].roles", "role names"),
    ("route-roles-text", routes(roles="admin"), "[[routes]][0].roles", "list"),
    ("route-body-size", routes(max_body_size="10 potatoes"), "[[routes]][0].max_body_size", '"10MiB"'),
    ("route-body-negative", routes(max_body_size=-1), "[[routes]][0].max_body_size", "size"),
    ("route-websocket", routes(websocket="no"), "[[routes]][0].websocket", "true or false"),
    ("route-headers-key", routes(headers={"bogus": "X-B"}), "[[routes]][0].headers.bogus", "unknown key"),
    (
        "route-headers-host",
        routes(headers={"email": "Host"}),
        "[[routes]][0].headers.email",
        "gateway-managed",
    ),
    (
        "route-headers-clash",
        routes(headers={"email": "X-Auth-User-Id"}),
        "[[routes]][0].headers.email",
        "same header as [[routes]][0].headers.user_id",
    ),
    ("route-headers-not-table", routes(headers="X-User"), "[[routes]][0].headers", "a table"),
    ("routes-not-list", {"routes": ROUTE}, "[[routes]]", "array of tables"),
    ("route-not-table", {"routes": ["/"]}, "[[routes]][0]", "a table"),
    ("route-unknown-key", routes(upstreams=UPSTREAM), "[[routes]][0].upstreams", 'did you mean "upstream"'),
    ("unknown-key", {"tokens": {"refersh_ttl": "5m"}}, "[tokens].refersh_ttl", "unknown key"),
    ("unknown-table", {"token": {"issuer": "x"}}, "[token]", "unknown table"),
    ("table-not-table", {"server": "localhost"}, "[server]", "expected a table"),
]


@pytest.mark.parametrize(
    ("data", "key", "fragment"), [row[1:] for row in INVALID], ids=[row[0] for row in INVALID]
)
def test_invalid_value_is_reported_by_key(data: dict[str, Any], key: str, fragment: str) -> None:
    """Each validation rule rejects a bad value with a problem naming its key and what is allowed."""
    problems = problems_of(data)
    assert any(p.startswith(f"{key}: ") and fragment in p for p in problems), problems


VALID: list[tuple[str, dict[str, Any], Any, Any]] = [
    # (id, config, a function of the Config, its expected value)
    ("listen-ipv6", {"server": {"listen": "[::1]:8080"}}, lambda c: c.server.listen, "[::1]:8080"),
    (
        "public-url-slash",
        {"server": {"public_url": "https://app.example.com/"}},
        lambda c: c.server.public_url,
        "https://app.example.com",
    ),
    ("workers-64", {"server": {"workers": 64}}, lambda c: c.server.workers, 64),
    (
        "proxies-host-bits",
        {"server": {"trusted_proxies": ["10.1.2.3/8", "::1"]}},
        lambda c: c.server.trusted_proxies,
        (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")),
    ),
    ("reuse-grace-zero", {"tokens": {"reuse_grace": "0s"}}, lambda c: c.tokens.reuse_grace, 0.0),
    ("leeway-zero", {"tokens": {"leeway": "0s"}}, lambda c: c.tokens.leeway, 0.0),
    ("leeway-5m", {"tokens": {"leeway": "5m"}}, lambda c: c.tokens.leeway, 300.0),
    ("access-ttl", {"tokens": {"access_ttl": "90s"}}, lambda c: c.tokens.access_ttl, 90.0),
    ("algorithm", {"tokens": {"algorithm": "EdDSA"}}, lambda c: c.tokens.algorithm, "EdDSA"),
    (
        "same-site-none-secure",
        {"cookies": {"same_site": "None", "secure": True}},
        lambda c: c.cookies.same_site,
        "None",
    ),
    (
        "argon2-cheapest",
        {
            "passwords": {
                "argon2_time_cost": 1,
                "argon2_memory_kib": 8,
                "argon2_parallelism": 1,
                "min_length": 8,
            }
        },
        lambda c: (c.passwords.argon2_memory_kib, c.passwords.min_length),
        (8, 8),
    ),
    (
        "domains-lowercased",
        {"registration": {"allowed_email_domains": ["Example.COM"]}},
        lambda c: c.registration.allowed_email_domains,
        ("example.com",),
    ),
    ("metrics-beside-auth", {"metrics": {"path": "/authors"}}, lambda c: c.metrics.path, "/authors"),
    ("no-routes", {"routes": []}, lambda c: c.routes, ()),
    ("upstream-slash", routes(upstream="http://127.0.0.1:9000/"), lambda c: c.routes[0].upstream, UPSTREAM),
    ("roles-tuple", routes(roles=["admin", "ops"]), lambda c: c.routes[0].roles, ("admin", "ops")),
    ("body-size-text", routes(max_body_size="1MiB"), lambda c: c.routes[0].max_body_size, 1024 * 1024),
    ("body-size-int", routes(max_body_size=1024), lambda c: c.routes[0].max_body_size, 1024),
    ("no-route-headers", routes(), lambda c: c.routes[0].headers, None),
    (
        "route-headers-merge",
        {**routes(headers={"user_id": "X-Remote-User"}), "headers": {"email": "X-Mail"}},
        lambda c: c.routes[0].headers,
        HeadersConfig(user_id="X-Remote-User", email="X-Mail"),
    ),
]


@pytest.mark.parametrize(
    ("data", "get", "expected"), [row[1:] for row in VALID], ids=[row[0] for row in VALID]
)
def test_valid_value_is_accepted(data: dict[str, Any], get: Any, expected: Any) -> None:
    """Edge values inside the rules load, normalised where the contract says so."""
    assert get(config_from_dict(data)) == expected


def test_every_problem_is_reported_at_once() -> None:
    """One ConfigError lists the problems of several tables and routes together."""
    problems = problems_of(
        {
            "server": {"workers": 0},
            "tokens": {"access_ttl": "five", "refersh_ttl": "5m"},
            "routes": [{"path": "app", "upstream": UPSTREAM}],
        }
    )
    assert [p.split(":")[0] for p in problems] == [
        "[server].workers",
        "[tokens].access_ttl",
        "[tokens].refersh_ttl",
        "[[routes]][0].path",
    ]


def test_config_error_format() -> None:
    """ConfigError prints a header naming the file, then one indented line per problem."""
    error = ConfigError(["[a].b: unknown key", "[a].c: bad"], Path("config.toml"))
    assert str(error) == "invalid configuration in config.toml:\n  [a].b: unknown key\n  [a].c: bad"


def test_cross_key_rule_skips_rejected_keys() -> None:
    """A rejected key does not cause a second, misleading problem about its relation to others."""
    problems = problems_of({"passwords": {"min_length": 200, "max_length": 5000}})
    assert [p.split(":")[0] for p in problems] == ["[passwords].max_length"]


# ---- environment overrides ---------------------------------------------------------------------

OVERRIDES: list[tuple[str, dict[str, str], Any, Any]] = [
    ("int", {"GATEWAY_SERVER_WORKERS": "4"}, lambda c: c.server.workers, 4),
    ("duration", {"GATEWAY_TOKENS_ACCESS_TTL": "2m"}, lambda c: c.tokens.access_ttl, 120.0),
    ("string", {"GATEWAY_TOKENS_ISSUER": "x"}, lambda c: c.tokens.issuer, "x"),
    ("number-as-text", {"GATEWAY_TOKENS_ISSUER": "2024"}, lambda c: c.tokens.issuer, "2024"),
    ("quoted-string", {"GATEWAY_TOKENS_AUDIENCE": '"aud"'}, lambda c: c.tokens.audience, "aud"),
    ("bool", {"GATEWAY_TOKENS_EXPOSE_REFRESH_TOKEN": "true"}, lambda c: c.tokens.expose_refresh_token, True),
    (
        "list",
        {"GATEWAY_REGISTRATION_DEFAULT_ROLES": '["a", "b"]'},
        lambda c: c.registration.default_roles,
        ("a", "b"),
    ),
    (
        "secret-url",
        {"GATEWAY_STORAGE_URL": "postgresql://gw:s3cret@db/gw"},
        lambda c: c.storage.url,
        "postgresql://gw:s3cret@db/gw",
    ),
    ("beats-file", {"GATEWAY_SERVER_LISTEN": "0.0.0.0:9999"}, lambda c: c.server.listen, "0.0.0.0:9999"),
    (
        "other-tools-ignored",
        {"GATEWAY_CONFIG": "x.toml", "GATEWAY_TEST_URL": "y"},
        lambda c: c.server.workers,
        1,
    ),
]


@pytest.mark.parametrize(
    ("environ", "get", "expected"), [r[1:] for r in OVERRIDES], ids=[r[0] for r in OVERRIDES]
)
def test_environment_overrides_a_key(environ: dict[str, str], get: Any, expected: Any) -> None:
    """GATEWAY_<TABLE>_<KEY> replaces the file's value, read as TOML when it is TOML."""
    config = config_from_dict({"server": {"listen": "127.0.0.1:1"}}, environ=environ)
    assert get(config) == expected


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        (
            {"GATEWAY_TOKENS_ACESS_TTL": "2m"},
            "[tokens].acess_ttl (from GATEWAY_TOKENS_ACESS_TTL): unknown key",
        ),
        (
            {"GATEWAY_SERVER_WORKERS": "many"},
            '[server].workers (from GATEWAY_SERVER_WORKERS): expected an integer (got "many")',
        ),
        ({"GATEWAY_ROUTES_PATH": "/x"}, "[[routes]] (from GATEWAY_ROUTES_PATH): routes cannot be set"),
    ],
    ids=["unknown-key", "bad-value", "routes"],
)
def test_bad_environment_override_is_reported(environ: dict[str, str], problem: str) -> None:
    """An override naming an unknown key, or carrying a bad value, is a problem naming the variable."""
    assert any(p.startswith(problem) for p in problems_of({}, environ)), problem


def test_config_from_dict_ignores_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """config_from_dict applies overrides only from the environ it is given."""
    monkeypatch.setenv("GATEWAY_SERVER_WORKERS", "4")
    assert config_from_dict({}).server.workers == 1


def test_load_config_reads_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_config applies overrides from os.environ when no environ is given."""
    monkeypatch.setenv("GATEWAY_SERVER_WORKERS", "4")
    assert load_config(write(tmp_path / "config.toml", "")).server.workers == 4


# ---- values resolved at load -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("public_url", "secure", "expected"),
    [
        ("http://localhost:8080", "auto", False),
        ("http://127.0.0.1:8080", "auto", False),
        ("http://[::1]:8080", "auto", False),
        ("https://localhost:8443", "auto", True),
        ("http://app.example.com", "auto", True),
        ("https://app.example.com", "auto", True),
        ("https://app.example.com", False, False),
        ("http://localhost:8080", True, True),
    ],
    ids=lambda v: str(v),
)
def test_cookie_secure_resolution(public_url: str, secure: str | bool, expected: bool) -> None:
    """secure = "auto" is true unless public_url is plain HTTP on this machine; explicit values win."""
    config = config_from_dict({"server": {"public_url": public_url}, "cookies": {"secure": secure}})
    assert config.cookies.secure is expected
    assert config.cookies.access_cookie.startswith("__Host-") is expected


def test_cookie_secure_defaults_to_auto() -> None:
    """Without a secure key, an https public_url gives Secure cookies."""
    assert config_from_dict({"server": {"public_url": "https://app.example.com"}}).cookies.secure is True


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    """A relative sqlite path and key file resolve against the file's folder, not the working directory."""
    path = write(tmp_path / "etc" / "config.toml", '[storage]\nurl = "sqlite:///data/gw.db"\n')
    config = load_config(path, environ={})
    assert config.storage.url == f"sqlite:///{tmp_path / 'etc' / 'data' / 'gw.db'}"
    assert config.storage.url.startswith("sqlite:////")
    assert config.tokens.signing_key_file == tmp_path / "etc" / "keys" / "signing.key"
    assert config.source == path


def test_relative_paths_without_source_resolve_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config_from_dict without a source resolves relative paths against the current directory."""
    monkeypatch.chdir(tmp_path)
    config = config_from_dict({"storage": {"url": "sqlite:///gw.db"}})
    assert config.storage.url == f"sqlite:///{tmp_path / 'gw.db'}"
    assert config.tokens.signing_key_file == tmp_path / "keys" / "signing.key"


@pytest.mark.parametrize(
    "url", ["sqlite:////var/lib/gateway/gw.db", "postgresql://gw@db/gw", "postgres://gw@db/gw"], ids=str
)
def test_absolute_and_postgres_urls_are_kept(url: str) -> None:
    """Absolute sqlite paths and PostgreSQL URLs pass through unchanged."""
    assert config_from_dict({"storage": {"url": url}}, source=Path("/etc/gw/config.toml")).storage.url == url


# ---- loading files and describing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [(None, "cannot read the file"), ("[server\n", "not valid TOML"), ("x = \xff", "not valid TOML")],
    ids=["missing", "syntax", "encoding"],
)
def test_unloadable_file_is_a_config_error(tmp_path: Path, text: str | None, fragment: str) -> None:
    """A missing or unparsable file raises ConfigError naming the file, like any other problem."""
    path = tmp_path / "config.toml"
    if text is not None:
        path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(f"invalid configuration in {path}:")
    assert fragment in caught.value.problems[0]


def test_describe_shows_routes_and_settings_without_secrets() -> None:
    """describe() lists routes and effective settings and masks the database password."""
    config = config_from_dict(
        {
            "storage": {"url": "postgresql://gw:s3cret@db/gw"},
            "routes": [ROUTE, {"path": "/admin", "upstream": "http://10.0.0.2:8000", "roles": ["admin"]}],
        }
    )
    text = describe(config)
    assert "s3cret" not in text
    assert "postgresql://gw:***@db/gw" in text
    assert re.search(r"/admin\s+->\s+http://10\.0\.0\.2:8000\s+auth=required roles=admin", text)
    assert text.index("/admin ") < text.index("/  ")  # matching order: longest prefix first
    assert 'access_ttl = "5m"' in text


def test_bad_storage_url_problem_masks_the_password() -> None:
    """A rejected storage URL is shown in the problem with its password masked."""
    problems = problems_of({"storage": {"url": "mysql://gw:s3cret@db/gw"}})
    assert "s3cret" not in "".join(problems)
    assert "mysql://gw:***@db/gw" in problems[0]


# ---- command line --------------------------------------------------------------------------------

GOOD = '[[routes]]\npath = "/from-{name}"\nupstream = "http://127.0.0.1:9000"\n'


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Two valid configs whose route paths tell them apart, and a broken one."""
    return {
        "good": write(tmp_path / "good.toml", GOOD.format(name="good")),
        "other": write(tmp_path / "other.toml", GOOD.format(name="other")),
        "bad": write(tmp_path / "bad.toml", '[server]\nworkers = 0\n[tokens]\naccess_ttl = "five"\n'),
    }


def test_check_config_prints_routes(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway check-config` exits 0 and prints the effective routes and settings."""
    assert cli.main(["check-config", "--config", str(files["good"])]) == 0
    out = capsys.readouterr().out
    assert re.search(r"/from-good\s+->\s+http://127\.0\.0\.1:9000", out)
    assert "[tokens]" in out


def test_check_config_reports_every_problem(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad config exits 2 with every problem, one per line, on stderr and nothing on stdout."""
    assert cli.main(["check-config", "--config", str(files["bad"])]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == f"invalid configuration in {files['bad']}:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["[server].workers", "[tokens].access_ttl"]


@pytest.mark.parametrize(
    ("argv", "env", "chosen"),
    [
        (["--config", "{good}", "check-config"], None, "good"),
        (["check-config", "--config", "{good}"], None, "good"),
        (["--config", "{other}", "check-config", "--config", "{good}"], None, "good"),
        (["check-config"], "{good}", "good"),
        (["check-config", "--config", "{good}"], "{other}", "good"),
        (["check-config"], None, "cwd"),
    ],
    ids=["before", "after", "after-wins", "env", "flag-beats-env", "default-cwd"],
)
def test_config_file_choice(
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: str | None,
    chosen: str,
) -> None:
    """--config before or after the subcommand, else GATEWAY_CONFIG, else ./config.toml."""
    names = {name: str(path) for name, path in files.items()}
    if env is not None:
        monkeypatch.setenv("GATEWAY_CONFIG", env.format(**names))
    write(tmp_path / "cwd" / "config.toml", GOOD.format(name="cwd"))
    monkeypatch.chdir(tmp_path / "cwd")
    assert cli.main([arg.format(**names) for arg in argv]) == 0
    assert f"/from-{chosen} " in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [[], ["frob"], ["check-config", "--bogus"], ["check-config", "--config"]], ids=str
)
def test_usage_error_exits_2_with_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Usage errors exit 2 with a single line on stderr."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gateway") and "error:" in err
    assert err.count("\n") == 1


def test_serve_runs_the_server_with_the_loaded_config(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gateway serve` loads the config and hands it to gateway.server.serve."""
    served: list[Config] = []

    def serve(config: Config) -> int:
        served.append(config)
        return 0

    monkeypatch.setitem(sys.modules, "gateway.server", types.SimpleNamespace(serve=serve))
    assert cli.main(["serve", "--config", str(files["good"])]) == 0
    assert [r.path for r in served[0].routes] == ["/from-good"]


def test_serve_with_bad_config_exits_2_without_serving(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway serve` with a bad config exits 2 and never starts the server."""
    served: list[Config] = []
    monkeypatch.setitem(sys.modules, "gateway.server", types.SimpleNamespace(serve=served.append))
    assert cli.main(["serve", "--config", str(files["bad"])]) == 2
    assert served == []
    assert "[server].workers" in capsys.readouterr().err


def test_command_groups_extend_the_parser(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A registered command group gets --config after its subcommand, and a GatewayError exits 1."""
    seen: list[Path] = []

    def failing(args: Any) -> int:
        seen.append(args.config)
        raise NotFound("no such user: bob@example.com")

    def register(subparsers: Any, common: Any) -> None:
        # "demo", not a real group's name: argparse refuses a second "users".
        demo = subparsers.add_parser("demo", parents=[common]).add_subparsers(required=True)
        demo.add_parser("disable", parents=[common]).set_defaults(handler=failing)

    monkeypatch.setattr(cli, "COMMAND_GROUPS", (*cli.COMMAND_GROUPS, register))
    assert cli.main(["demo", "disable", "--config", str(files["good"])]) == 1
    assert seen == [files["good"]]
    assert capsys.readouterr().err == "gateway: no such user: bob@example.com\n"


@pytest.mark.parametrize(("name", "status"), [("good", 0), ("bad", 2)])
def test_python_dash_m_gateway(files: dict[str, Path], name: str, status: int) -> None:
    """`python -m gateway` is the same program and exits with main's status."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(files[name])],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == status, result.stderr
