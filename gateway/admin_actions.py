"""What the `gateway users | sessions | keys` commands do, and how they show it (`gateway/admin.py`
wires them to the command line).

Each action gets the parsed arguments and an `Accounts` built by `open_domain`, acts only through
`Accounts` and the store protocol (never SQL), and returns (JSON data, aligned text). Passwords
come from a hidden prompt or one line of standard input, never from argv.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from gateway.config import Config
from gateway.errors import EmailTaken, NotFound

if TYPE_CHECKING:
    from gateway.accounts import Accounts
    from gateway.store import SessionRecord, UserRecord

# A command's result: what --json prints, and the aligned text printed otherwise.
Output = tuple[Any, str]
Action = Callable[[argparse.Namespace, "Accounts"], Awaitable[Output]]
Runner = Callable[[argparse.Namespace, Config], Output]
ARGV_REFUSED = (
    "a password is never taken from the command line (shell history, process list):"
    " type it at the prompt, or pipe it in with --password-stdin"
)


class UsageError(Exception):
    """Bad usage found after parsing: exit 2 with the message."""


@asynccontextmanager
async def open_domain(config: Config) -> AsyncIterator[Accounts]:
    """The store, key ring, hasher, token signer, revocation list and Accounts, closed on exit."""
    # Imported here: `gateway --help` and `gateway serve` need none of this at parse time.
    from gateway.accounts import Accounts
    from gateway.keyring import KeyRing, ensure_key_file
    from gateway.passwords import Passwords
    from gateway.revocation import RevocationList
    from gateway.store import open_store
    from gateway.tokens import AccessTokens

    t = config.tokens
    ensure_key_file(t.signing_key_file, t.algorithm)  # as `serve` does on first start
    ring = KeyRing(t.signing_key_file, t.algorithm)
    store = await open_store(config.storage.url)
    passwords = Passwords(config.passwords)
    try:
        await passwords.start()
        yield Accounts(config, store, passwords, AccessTokens(t, ring), RevocationList())
    finally:
        passwords.close()
        await store.close()


# ---- presentation ------------------------------------------------------------------------------


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last column is left ragged."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def user_json(user: UserRecord) -> dict[str, Any]:
    """Everything about a user but the password hash."""
    return {
        "id": user.id,
        "email": user.email,
        "roles": list(user.roles),
        "disabled": user.disabled,
        "created_at": user.created_at,
        "updated_at": user.updated_at,
    }


def session_json(session: SessionRecord, email: str | None) -> dict[str, Any]:
    return {
        "id": session.id,
        "user_id": session.user_id,
        "email": email,
        "created_at": session.created_at,
        "last_used_at": session.last_used_at,
        "expires_at": session.expires_at,
        "client": session.client,
    }


def _user_line(verb: str, user: UserRecord) -> str:
    state = "disabled" if user.disabled else "active"
    return f"{verb} {user.email} (id {user.id}, roles: {','.join(user.roles) or '-'}, {state})"


# ---- passwords -----------------------------------------------------------------------------------


def read_password(args: argparse.Namespace) -> str:
    """One line of stdin with --password-stdin, else a hidden prompt answered twice."""
    if args.password_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
        if not password:
            raise UsageError("--password-stdin read an empty line: send the password on standard input")
        return password
    first = getpass.getpass("New password: ")
    if getpass.getpass("Repeat the password: ") != first:
        raise UsageError("the two passwords differ; nothing changed")
    return first


def _check_roles(roles: Sequence[str]) -> None:
    # Roles travel comma-separated in one header: a comma or padding would change their meaning
    # upstream (the same rule as [registration].default_roles).
    for role in roles:
        if not role or role != role.strip() or "," in role or not role.isprintable() or " " in role:
            raise UsageError(f"invalid role {json.dumps(role)}: no commas, spaces or control characters")


# ---- actions -------------------------------------------------------------------------------------


async def users_add(args: argparse.Namespace, accounts: Accounts) -> Output:
    roles = args.role if args.role is not None else list(accounts.config.registration.default_roles)
    _check_roles(roles)
    try:  # fail before prompting; create_user still refuses a duplicate atomically
        existing = await accounts.user_by_email(args.email)
    except NotFound:
        pass
    else:
        raise EmailTaken(f"a user {existing.email} already exists")
    user = await accounts.create_user(args.email, read_password(args), roles)
    return user_json(user), _user_line("added", user)


async def users_list(args: argparse.Namespace, accounts: Accounts) -> Output:
    users = sorted(await accounts.store.list_users(), key=lambda u: u.email)
    rows = [
        (u.email, ",".join(u.roles) or "-", "disabled" if u.disabled else "active", _when(u.created_at), u.id)
        for u in users
    ]
    text = table(("EMAIL", "ROLES", "STATUS", "CREATED", "ID"), rows) if users else "no users"
    return [user_json(u) for u in users], text


async def users_disable(args: argparse.Namespace, accounts: Accounts) -> Output:
    user = await accounts.set_disabled(args.email, True)
    return user_json(user), _user_line("disabled", user) + "; every session revoked"


async def users_enable(args: argparse.Namespace, accounts: Accounts) -> Output:
    user = await accounts.set_disabled(args.email, False)
    return user_json(user), _user_line("enabled", user)


async def users_set_roles(args: argparse.Namespace, accounts: Accounts) -> Output:
    roles = [] if args.roles == [""] else args.roles
    _check_roles(roles)
    user = await accounts.set_roles(args.email, roles)
    return user_json(user), _user_line("updated", user) + "; new roles apply from the next access token"


async def users_set_password(args: argparse.Namespace, accounts: Accounts) -> Output:
    await accounts.user_by_email(args.email)  # unknown user: fail before prompting
    user = await accounts.set_password(args.email, read_password(args))
    return user_json(user), f"password of {user.email} changed; every session revoked"


async def sessions_list(args: argparse.Namespace, accounts: Accounts) -> Output:
    user_id = (await accounts.user_by_email(args.user)).id if args.user else None
    sessions = await accounts.sessions_of(user_id)
    emails = {u.id: u.email for u in await accounts.store.list_users()}
    data = [session_json(s, emails.get(s.user_id)) for s in sessions]
    rows = [
        (s.id, emails.get(s.user_id, s.user_id), _when(s.created_at), _when(s.last_used_at), s.client or "-")
        for s in sessions
    ]
    text = table(("SESSION", "USER", "CREATED", "LAST USED", "CLIENT"), rows) if rows else "no live sessions"
    return data, text


async def sessions_revoke(args: argparse.Namespace, accounts: Accounts) -> Output:
    if args.user:
        user = await accounts.user_by_email(args.user)
        revoked = await accounts.logout_all(user.id)
        return {"revoked": revoked}, f"revoked {len(revoked)} session(s) of {user.email}"
    session = await accounts.store.get_session(args.session_id)
    await accounts.revoke_session(args.session_id)  # NotFound for an unknown id
    if session is not None and session.revoked_at is not None:
        return {"revoked": []}, f"session {args.session_id} had already ended"
    return {"revoked": [args.session_id]}, f"revoked session {args.session_id}"


def keys_generate(args: argparse.Namespace, config: Config) -> Output:
    """A Runner, not an Action: it needs no store, so a broken database cannot block a rotation."""
    from gateway.keyring import PICKUP_MARGIN, generate_key

    t = config.tokens
    retired_before = time.time() - (t.access_ttl + t.leeway + PICKUP_MARGIN) if args.prune else None
    made = generate_key(t.signing_key_file, t.algorithm, retired_before=retired_before)
    data = {
        "kid": made.kid,
        "algorithm": t.algorithm,
        "file": str(t.signing_key_file),
        "kept": list(made.kept),
        "pruned": list(made.pruned),
    }
    text = f"new signing key {made.kid} ({t.algorithm}) in {t.signing_key_file}; it signs from now on"
    text += f"\nkept {len(made.kept)} older key(s) for verification: {', '.join(made.kept) or '-'}"
    if args.prune:
        text += f"\npruned {len(made.pruned)} retired key(s): {', '.join(made.pruned) or '-'}"
    return data, text
