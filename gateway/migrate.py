"""`gateway store migrate`: copy a SQLite store into PostgreSQL so that sessions stay valid.

What is copied: every user (password hashes, roles, disabled flags and token versions as they are),
the live sessions with all their refresh-token rows (digests, rotation links: reuse detection and
the grace path keep working), the live revocation feed (with its seqs) and the throttle counters.
Dead sessions and expired feed entries are left behind. Signed access tokens and refresh cookies
keep working after the switch because they depend only on these rows and on the signing key file,
which the new instances must share (the rotation secret is derived from it).

The target is written in one transaction, and only when it is empty, or with `force` (then its
rows are deleted first, in that same transaction): a second run never duplicates or mixes data.
This is a storage tool, so unlike the domain code it reads and writes both schemas directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.errors import GatewayError, StoreError

if TYPE_CHECKING:
    from gateway.cli import Subparsers

# Target tables in insertion order (parents first) and the columns copied, identical in both schemas.
COLUMNS: dict[str, tuple[str, ...]] = {
    "users": (
        "id",
        "email",
        "password_hash",
        "roles",
        "disabled",
        "token_version",
        "created_at",
        "updated_at",
    ),
    "sessions": (
        "id",
        "user_id",
        "created_at",
        "last_used_at",
        "expires_at",
        "idle_ttl",
        "client",
        "revoked_at",
        "revoke_reason",
    ),
    "refresh_tokens": (
        "token_hash",
        "session_id",
        "generation",
        "issued_at",
        "expires_at",
        "rotated_at",
        "successor_hash",
    ),
    "revocations": ("seq", "kind", "subject", "min_version", "created_at", "until"),
    "throttle": ("key", "failures", "first_at", "last_at"),
}

_LIVE_SESSION = "revoked_at IS NULL AND expires_at > :now AND last_used_at + idle_ttl > :now"
# Which source rows are copied; :now is the moment of the copy.
_SOURCE_WHERE = {
    "users": "",
    "sessions": f"WHERE {_LIVE_SESSION}",
    "refresh_tokens": "WHERE session_id IN (SELECT id FROM sessions WHERE revoked_at IS NULL"
    " AND expires_at > :now AND last_used_at + idle_ttl > :now)",
    "revocations": "WHERE until > :now",
    "throttle": "",
}


class MigrateError(GatewayError):
    """The copy was refused or failed; nothing was written to the target."""


@dataclass(frozen=True)
class Copied:
    users: int = 0
    sessions: int = 0
    refresh_tokens: int = 0
    revocations: int = 0
    throttle: int = 0

    def __str__(self) -> str:
        return ", ".join(f"{getattr(self, f.name)} {f.name.replace('_', ' ')}" for f in fields(self))


def describe_url(url: str) -> str:
    """A storage URL for messages: never the user or password a URL may carry."""
    if url.startswith("sqlite:///") or "@" not in url:
        return url
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ":(malformed port)"
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:///") and url != "sqlite:///"


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def read_sqlite(path: Path, now: float) -> dict[str, list[tuple[Any, ...]]]:
    """Every row to copy, from one consistent snapshot of the SQLite file (one read transaction)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        db.execute("BEGIN")  # a running gateway may write meanwhile: read one snapshot
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for table, columns in COLUMNS.items():
            sql = f"SELECT {', '.join(columns)} FROM {table} {_SOURCE_WHERE[table]}"  # noqa: S608 (constants)
            rows[table] = [tuple(row) for row in db.execute(sql, {"now": now})]
        db.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot read SQLite database {str(path)!r}: {exc}") from exc
    finally:
        db.close()
    # SQLite keeps roles as a JSON array and booleans as 0/1; PostgreSQL has text[] and boolean.
    rows["users"] = [
        (uid, email, pw, list(json.loads(roles)), bool(disabled), *rest)
        for uid, email, pw, roles, disabled, *rest in rows["users"]
    ]
    return rows


async def _prepare_source(path: Path) -> None:
    """Bring the source's schema up to date (what `gateway serve` would do on start)."""
    if not await asyncio.to_thread(path.is_file):  # SQLiteStore.open would create an empty one
        raise MigrateError(f"no SQLite database at {str(path)!r}")
    from gateway.store.sqlite import SQLiteStore

    store = await SQLiteStore.open(str(path))
    await store.close()


async def _write_postgres(url: str, rows: dict[str, list[tuple[Any, ...]]], *, force: bool) -> None:
    """Create the schema if needed, then fill the target in one transaction."""
    try:
        import asyncpg
    except ImportError:
        raise MigrateError("PostgreSQL support is not installed: pip install 'gateway[postgres]'") from None

    from gateway.store.postgres import PostgresStore

    failed = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
    try:
        store = await PostgresStore.open(url)  # creates or upgrades the schema, as `gateway serve` would
        await store.close()
        con = await asyncpg.connect(url, timeout=30)
    except failed as exc:
        raise StoreError(f"cannot prepare the PostgreSQL store at {describe_url(url)}: {exc}") from exc
    try:
        async with con.transaction():
            await con.execute("SET LOCAL lock_timeout = '30s'")  # never wait forever on a busy table
            # Gateways on the target may read meanwhile but not write until the copy is committed.
            await con.execute(f"LOCK TABLE {', '.join(COLUMNS)} IN EXCLUSIVE MODE")
            counts = {t: await con.fetchval(f"SELECT count(*) FROM {t}") for t in COLUMNS}  # noqa: S608
            held = {table: n for table, n in counts.items() if n}
            if held and not force:
                found = ", ".join(f"{n} {table}" for table, n in held.items())
                raise MigrateError(
                    f"the target {describe_url(url)} is not empty ({found}); nothing was copied. "
                    "Use --force to replace its contents with the source's"
                )
            if held:  # --force: replace, never merge
                for table in reversed(COLUMNS):  # children first
                    await con.execute(f"DELETE FROM {table}")  # noqa: S608 (constants)
            for table, columns in COLUMNS.items():
                if rows[table]:
                    await con.copy_records_to_table(table, records=rows[table], columns=list(columns))
            # New feed entries must get seqs above every copied one (and above any the target had
            # handed out: a poller that saw seq N must never miss a later entry).
            await con.execute(
                "SELECT setval(s, greatest((SELECT max(seq) FROM revocations), pg_sequence_last_value(s), 1))"
                " FROM (SELECT pg_get_serial_sequence('revocations', 'seq')::regclass AS s) AS feed"
            )
    except failed as exc:
        raise StoreError(f"the copy into {describe_url(url)} failed; nothing was written: {exc}") from exc
    finally:
        await con.close()


async def migrate(source: str, target: str, *, force: bool = False, now: float | None = None) -> Copied:
    """Copy the SQLite store at `source` into the PostgreSQL database at `target` (see module doc)."""
    if not _is_sqlite(source):
        raise MigrateError(f"the source must be a sqlite:///path URL (got {describe_url(source)!r})")
    if not _is_postgres(target):
        raise MigrateError(f"the target must be a postgresql://… URL (got {describe_url(target)!r})")
    path = Path(source.removeprefix("sqlite:///"))
    await _prepare_source(path)
    rows = await asyncio.to_thread(read_sqlite, path, time.time() if now is None else now)
    await _write_postgres(target, rows, force=force)
    return Copied(**{table: len(found) for table, found in rows.items()})


def _url_argument(accepted: Callable[[str], bool], form: str) -> Callable[[str], str]:
    """An argparse `type`: a URL of the wrong kind is a usage error (exit 2)."""

    def parse(url: str) -> str:
        if not accepted(url):
            raise argparse.ArgumentTypeError(f"expected {form} (got {describe_url(url)!r})")
        return url

    return parse


def _migrate_command(args: argparse.Namespace) -> int:
    copied = asyncio.run(migrate(args.source, args.target, force=args.force))
    print(f"copied {copied} from {describe_url(args.source)} to {describe_url(args.target)}")
    return 0


def register_store_commands(subparsers: Subparsers, common: argparse.ArgumentParser) -> None:
    """The `store` command group (gateway/cli.py COMMAND_GROUPS)."""
    store = subparsers.add_parser("store", help="storage maintenance: migrate from SQLite to PostgreSQL")
    commands = store.add_subparsers(metavar="COMMAND", required=True)
    migrate_parser = commands.add_parser(
        "migrate",
        parents=[common],
        help="copy users, live sessions, revocations and throttle counters into an empty PostgreSQL database",
        description="Copy a SQLite store into PostgreSQL, keeping signed-in sessions valid. Stop the "
        "gateways first; start them on the new URL with the same signing key file. A relative SQLite "
        "path is relative to the current folder.",
    )
    migrate_parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="sqlite:///PATH",
        type=_url_argument(_is_sqlite, "sqlite:///PATH"),
    )
    migrate_parser.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="postgresql://…",
        type=_url_argument(_is_postgres, "postgresql://…"),
    )
    migrate_parser.add_argument(
        "--force", action="store_true", help="replace the contents of a target that is not empty"
    )
    migrate_parser.set_defaults(handler=_migrate_command)
