"""The `gateway` command: one argparse tree, and the one place that turns errors into exit codes.

Exit 0 on success, 1 on a failed action (a GatewayError), 2 on bad configuration or usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from gateway import __version__
from gateway.admin import register as register_admin_commands
from gateway.config import ConfigError
from gateway.config_load import describe, load_config
from gateway.errors import GatewayError
from gateway.migrate import register_store_commands

if TYPE_CHECKING:
    # What add_subparsers() returns; argparse gives it no public name.
    Subparsers = argparse._SubParsersAction[Any]

# A command group adds its subcommands to `subparsers`, each with parents=[common] so that
# `--config` works after the subcommand too, and sets `handler` (args -> exit code) on each.
# Handlers find the config file's path in `args.config` and may raise ConfigError or GatewayError.
CommandGroup = Callable[["Subparsers", argparse.ArgumentParser], None]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def config_path(given: Path | None, environ: Mapping[str, str]) -> Path:
    """--config PATH, else $GATEWAY_CONFIG, else ./config.toml."""
    if given is not None:
        return given
    return Path(environ.get("GATEWAY_CONFIG") or "config.toml")


def _check_config(args: argparse.Namespace) -> int:
    print(describe(load_config(args.config)), end="")
    return 0


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    # Imported here: the server stack is heavy, and no other command needs it.
    from gateway.server import serve

    return serve(config)


def _register_core(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    serve = subparsers.add_parser(
        "serve", parents=[common], help="run the gateway until SIGTERM or SIGINT, then drain"
    )
    serve.set_defaults(handler=_serve)
    check = subparsers.add_parser(
        "check-config", parents=[common], help="validate the configuration and print the effective settings"
    )
    check.set_defaults(handler=_check_config)


# Other modules' groups (users, sessions, keys, store) join this tuple.
COMMAND_GROUPS: tuple[CommandGroup, ...] = (_register_core, register_admin_commands, register_store_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gateway", description="An authenticating reverse proxy for legacy web apps.")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    config_help = "the configuration file (default: $GATEWAY_CONFIG, else ./config.toml)"
    parser.add_argument("--config", type=Path, metavar="PATH", help=config_help)
    # SUPPRESS: a subcommand without --config must not reset one given before the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, metavar="PATH", default=argparse.SUPPRESS, help=config_help)
    subparsers = parser.add_subparsers(metavar="COMMAND", required=True)
    for register in COMMAND_GROUPS:
        register(subparsers, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command in `argv` (default: sys.argv[1:]) and return its exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors end parsing this way
        return exit_.code if isinstance(exit_.code, int) else 0
    args.config = config_path(args.config, os.environ)
    try:
        status: int = args.handler(args)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    except GatewayError as error:
        print(f"gateway: {error.message}", file=sys.stderr)
        return 1
    return status
