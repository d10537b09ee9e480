"""`gateway users | sessions | keys`: the command groups of DESIGN §9, wired to `admin_actions`.

Every command builds the domain objects once (`admin_actions.open_domain`), performs one action,
prints aligned text or `--json`, and closes what it opened. It is safe while `gateway serve` runs
on the same store: revocations go through the store's feed, which every serving process polls
each second, and a new signing key is picked up from the key file.
Exit status: 0 done, 1 the action failed (unknown user, weak password…), 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.admin_actions import (
    ARGV_REFUSED,
    Action,
    Output,
    Runner,
    UsageError,
    keys_generate,
    open_domain,
    sessions_list,
    sessions_revoke,
    users_add,
    users_disable,
    users_enable,
    users_list,
    users_set_password,
    users_set_roles,
)
from gateway.config import Config
from gateway.config_load import load_config
from gateway.errors import GatewayError, InvalidInput
from gateway.keyring import KeyFileError

if TYPE_CHECKING:
    from gateway.cli import Subparsers


def check_password_source(args: argparse.Namespace) -> None:
    """Refuse, before anything else happens, a password that could not be read safely."""
    if args.argv_password is not None or args.password_option is not None:
        raise UsageError(ARGV_REFUSED)
    if not args.password_stdin and not sys.stdin.isatty():
        raise UsageError("standard input is not a terminal: pipe the password in with --password-stdin")


def _describe(error: InvalidInput) -> str:
    return "; ".join(f"{name} {reason}" for name, reason in error.fields.items()) or error.message


def in_domain(action: Action) -> Runner:
    """A runner that performs `action` with the domain objects built from the config."""

    async def run(args: argparse.Namespace, config: Config) -> Output:
        async with open_domain(config) as accounts:
            return await action(args, accounts)

    return lambda args, config: asyncio.run(run(args, config))


def command(runner: Runner) -> Callable[[argparse.Namespace], int]:
    """A cli handler: usage checks, config, the runner, output, exit status.

    GatewayError (exit 1) and ConfigError (exit 2) are left to cli.main, which prints them.
    """

    def handler(args: argparse.Namespace) -> int:
        try:
            if args.reads_password:
                check_password_source(args)
            output = runner(args, load_config(args.config))
        except UsageError as error:
            print(f"{args.prog}: error: {error}", file=sys.stderr)
            return 2
        except KeyFileError as error:  # the key file does not fit [tokens]: a configuration problem
            print(f"gateway: {error}", file=sys.stderr)
            return 2
        except InvalidInput as error:
            raise GatewayError(_describe(error)) from None
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            raise GatewayError(f"{where}{error.strerror or error}") from None
        except (KeyboardInterrupt, EOFError):
            print("\ngateway: interrupted; nothing changed", file=sys.stderr)
            return 1
        data, text = output
        print(json.dumps(data, indent=2) if args.json else text)
        return 0

    return handler


def _argv_safe(base: type[argparse.ArgumentParser]) -> type[argparse.ArgumentParser]:
    """`base` (cli's one-line-error parser), except that on a command that reads a password any
    leftover argument is refused as a possible password instead of echoed as "unrecognized"."""

    class Parser(base):  # type: ignore[valid-type,misc]
        def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[Any, list[str]]:
            parsed, extras = super().parse_known_args(args, namespace)
            if extras and getattr(parsed, "reads_password", False):
                parsed.argv_password, extras = "", []  # refused by check_password_source
            return parsed, extras

    return Parser


@dataclass(frozen=True)
class _Groups:
    subparsers: Subparsers
    common: argparse.ArgumentParser
    output: argparse.ArgumentParser

    def group(self, name: str, help_text: str) -> Subparsers:
        parser = self.subparsers.add_parser(name, parents=[self.common], help=help_text, allow_abbrev=False)
        group: Subparsers = parser.add_subparsers(
            metavar="COMMAND", required=True, parser_class=_argv_safe(type(parser))
        )
        return group

    def command(
        self, group: Subparsers, name: str, help_text: str, runner: Runner, *, password: bool = False
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(
            name, parents=[self.common, self.output], help=help_text, allow_abbrev=False
        )
        parser.set_defaults(handler=command(runner), prog=parser.prog, reads_password=password)
        return parser


def _password_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from one line of standard input"
    )
    # Caught so that they are refused with a clear reason instead of "unrecognized arguments".
    parser.add_argument("argv_password", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--password", dest="password_option", nargs="?", const="", help=argparse.SUPPRESS)


def register(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    """The `users`, `sessions` and `keys` command groups (DESIGN §9)."""
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON instead of aligned text")
    g = _Groups(subparsers, common, output)

    users = g.group("users", "add, list, disable, enable users; set their roles or password")
    add = g.command(
        users, "add", "create a user (any registration settings aside)", in_domain(users_add), password=True
    )
    add.add_argument("email", metavar="EMAIL")
    add.add_argument(
        "--role",
        action="append",
        metavar="R",
        help="a role (repeatable; default [registration].default_roles)",
    )
    _password_arguments(add)
    g.command(users, "list", "list every user", in_domain(users_list))
    for name, action, text in (
        ("disable", users_disable, "refuse the user's sign-ins and revoke every session"),
        ("enable", users_enable, "allow a disabled user to sign in again"),
    ):
        g.command(users, name, text, in_domain(action)).add_argument("email", metavar="EMAIL")
    roles = g.command(
        users, "set-roles", "replace the user's roles (next token carries them)", in_domain(users_set_roles)
    )
    roles.add_argument("email", metavar="EMAIL")
    roles.add_argument("roles", nargs="+", metavar="R", help='roles; a single "" clears them')
    password = g.command(
        users,
        "set-password",
        "change the password and revoke every session",
        in_domain(users_set_password),
        password=True,
    )
    password.add_argument("email", metavar="EMAIL")
    _password_arguments(password)

    sessions = g.group("sessions", "list or revoke live sessions")
    listing = g.command(sessions, "list", "list live sessions, newest first", in_domain(sessions_list))
    listing.add_argument("--user", metavar="EMAIL", help="only this user's sessions")
    revoke = g.command(
        sessions, "revoke", "revoke one session, or every session of a user", in_domain(sessions_revoke)
    )
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("session_id", nargs="?", metavar="SESSION_ID")
    which.add_argument("--user", metavar="EMAIL", help="revoke every session of this user")

    keys = g.group("keys", "manage the token signing keys")
    generate = g.command(keys, "generate", "add a signing key; older keys keep verifying", keys_generate)
    generate.add_argument(
        "--prune",
        action="store_true",
        help="also drop keys retired longer ago than access_ttl + leeway (their tokens have all expired)",
    )
