"""Reading a Config from TOML (load_config, config_from_dict) and writing it back out (describe).

Split from gateway.config so the dataclasses stay a short schema; the per-value rules come from
gateway.config_rules, and the checks that span keys live here.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_origin, get_type_hints
from urllib.parse import urlsplit

from gateway.config import Config, ConfigError, HeadersConfig, MiB, RouteConfig, TokensConfig
from gateway.config_rules import RULES, Invalid, format_duration, mask_url, rule_for_type, show

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
        rule = RULES.get((cls, key)) or rule_for_type(hints[key])
        try:
            values[key] = rule(value)
        except Invalid as invalid:
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
            problems.add(f"[{name}]", f"expected a table (got {show(raw)})")
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


_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


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
            problems.add(f"{prefix}.{f.name}", f"same header as {prefix}.{seen[normal]} (got {show(name)})")
        seen.setdefault(normal, f.name)


def _check(tables: dict[str, Any], problems: _Problems) -> None:
    """Rules that span keys; a rule is skipped when one of its keys was already rejected."""
    cookies, passwords = tables["cookies"], tables["passwords"]
    if cookies.same_site == "None" and not cookies.secure and problems.ok("[cookies].secure"):
        problems.add("[cookies].same_site", '"None" requires secure cookies (browsers drop them otherwise)')
    if cookies.access_name == cookies.refresh_name and problems.ok("[cookies].access_name"):
        problems.add(
            "[cookies].refresh_name",
            f"must differ from [cookies].access_name (both {show(cookies.access_name)})",
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
            f"must not be under [server].auth_prefix {show(auth_prefix)} (got {show(metrics_path)})",
        )
    _check_headers(tables["headers"], "[headers]", problems)


def _routes(
    raw: Any, headers: HeadersConfig, auth_prefix: str | None, problems: _Problems
) -> tuple[RouteConfig, ...]:
    """The [[routes]] tables; [routes.headers] keys fill in from [headers]."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.add("[[routes]]", f"expected an array of tables written [[routes]] (got {show(raw)})")
        return ()
    required = [f.name for f in fields(RouteConfig) if f.default is MISSING and f.default_factory is MISSING]
    routes: list[RouteConfig] = []
    paths: dict[str, str] = {}
    for i, table in enumerate(raw):
        prefix = f"[[routes]][{i}]"
        if not isinstance(table, dict):
            problems.add(prefix, f"expected a table (got {show(table)})")
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
            problems.add(f"{prefix}.path", f"duplicates {paths[path]} (got {show(path)})")
        elif path is not None and auth_prefix is not None and _under(path, auth_prefix):
            problems.add(
                f"{prefix}.path",
                f"is inside [server].auth_prefix {show(auth_prefix)}, which the gateway serves itself",
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
        return json.dumps(format_duration(value))
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
            lines.append(f"url = {_toml(mask_url(value))}")
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
