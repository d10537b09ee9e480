"""The SQLite backend of the Store protocol (aiosqlite): schema, versioned migrations, transactions.

aiosqlite runs every call of a connection on one thread, so tasks sharing a connection would
interleave their transactions (one task's ROLLBACK undoing another's INSERT). Each store therefore
holds one connection and lends it to one task at a time behind an asyncio.Lock, reads included, so
no read ever sees another task's uncommitted writes. Processes sharing the file meet in WAL mode,
and every multi-statement write starts with BEGIN IMMEDIATE, where the busy timeout applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import aiosqlite

from gateway.errors import EmailTaken, StoreError
from gateway.store import RefreshTokenRecord, Revocation, SessionRecord, ThrottleState, UserRecord

if TYPE_CHECKING:
    from gateway.store import Store

MIN_SQLITE_VERSION = (3, 35, 0)  # UPDATE … RETURNING and INSERT … ON CONFLICT … RETURNING
KEEP_DEAD_FOR = 86_400.0  # purge keeps dead sessions and idle throttle rows for a day, for inspection

# Migration N is MIGRATIONS[N - 1]; PRAGMA user_version holds the last one applied. Append new
# migrations, never edit a released one. One statement per string: executescript() would COMMIT
# the migration transaction half-way.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE users (
            id TEXT PRIMARY KEY,
            email TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            roles TEXT NOT NULL,  -- JSON array of strings
            disabled INTEGER NOT NULL CHECK (disabled IN (0, 1)),
            token_version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            created_at REAL NOT NULL,
            last_used_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            idle_ttl REAL NOT NULL,
            client TEXT NOT NULL,
            revoked_at REAL,
            revoke_reason TEXT
        )""",
        "CREATE INDEX sessions_user_id ON sessions (user_id)",
        """CREATE TABLE refresh_tokens (
            token_hash TEXT PRIMARY KEY,  -- hex SHA-256 of the token; the raw token is never stored
            session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            generation INTEGER NOT NULL,
            issued_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            rotated_at REAL,
            successor_hash TEXT
        )""",
        "CREATE INDEX refresh_tokens_session_id ON refresh_tokens (session_id)",
        # AUTOINCREMENT: a seq is never reused, even after purge empties the table, so a poller
        # that has seen seq N can never miss a later entry.
        """CREATE TABLE revocations (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('session', 'user')),
            subject TEXT NOT NULL,
            min_version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            until REAL NOT NULL
        )""",
        "CREATE INDEX revocations_until ON revocations (until)",
        """CREATE TABLE throttle (
            key TEXT PRIMARY KEY,
            failures INTEGER NOT NULL,
            first_at REAL NOT NULL,
            last_at REAL NOT NULL
        )""",
    ),
)

_INSERT_REFRESH = (
    "INSERT INTO refresh_tokens (token_hash, session_id, generation, issued_at, expires_at,"
    " rotated_at, successor_hash) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_FEED = (
    "INSERT INTO revocations (kind, subject, min_version, created_at, until) VALUES (?, ?, ?, ?, ?)"
)
_SELECT_USER = (
    "SELECT id, email, password_hash, roles, disabled, token_version, created_at, updated_at FROM users"
)
_SELECT_SESSION = (
    "SELECT id, user_id, created_at, last_used_at, expires_at, idle_ttl, client, revoked_at, revoke_reason"
    " FROM sessions"
)
_LIVE_SESSION = "revoked_at IS NULL AND expires_at > :now AND last_used_at + idle_ttl > :now"


class SQLiteStore:
    """One aiosqlite connection, used by one task at a time."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db: aiosqlite.Connection | None = db
        self._path = path
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<SQLiteStore {self._path!r}{' closed' if self._db is None else ''}>"

    @classmethod
    async def open(cls, path: str) -> SQLiteStore:
        """Open the database file (created with its folders if missing) and bring its schema up to date."""
        _require_sqlite_version(sqlite3.sqlite_version_info)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open SQLite database {path!r}: {exc}") from exc
        try:
            # busy_timeout first: setting WAL on a new file and migrating both wait for other processes.
            await db.execute_fetchall("PRAGMA busy_timeout = 5000")
            await db.execute_fetchall("PRAGMA foreign_keys = ON")
            # NORMAL is safe in WAL mode (the file is never corrupted) and skips an fsync per commit;
            # a power loss may roll back the last rotations, which at worst signs those users out.
            await db.execute_fetchall("PRAGMA synchronous = NORMAL")
            await _enable_wal(db, path)
            await _migrate(db, path)
        except BaseException as exc:
            await db.close()
            if isinstance(exc, sqlite3.DatabaseError) and _unavailable(exc):
                raise StoreError(f"cannot open SQLite database {path!r}: {exc}") from exc
            raise
        return cls(db, path)

    async def close(self) -> None:
        async with self._lock:  # let the transaction in progress finish first
            db, self._db = self._db, None
            if db is not None:
                await db.close()

    async def ping(self) -> None:
        async with self._connection() as db:
            await db.execute_fetchall("SELECT count(*) FROM sqlite_master")

    # users

    async def create_user(self, user: UserRecord) -> None:
        try:
            async with self._connection() as db:
                await db.execute_fetchall(
                    "INSERT INTO users (id, email, password_hash, roles, disabled, token_version,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        user.id,
                        user.email,
                        user.password_hash,
                        _roles_json(user.roles),
                        int(user.disabled),
                        user.token_version,
                        user.created_at,
                        user.updated_at,
                    ),
                )
        except sqlite3.IntegrityError as exc:
            if "users.email" in str(exc):
                raise EmailTaken from exc
            raise

    async def get_user(self, user_id: str) -> UserRecord | None:
        rows = await self._run(_SELECT_USER + " WHERE id = ?", (user_id,))
        return _user(rows[0]) if rows else None

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        rows = await self._run(_SELECT_USER + " WHERE email = ?", (email,))
        return _user(rows[0]) if rows else None

    async def list_users(self) -> list[UserRecord]:
        rows = await self._run(_SELECT_USER + " ORDER BY created_at, id")
        return [_user(row) for row in rows]

    async def update_user(
        self,
        user_id: str,
        *,
        now: float,
        password_hash: str | None = None,
        roles: Sequence[str] | None = None,
        disabled: bool | None = None,
        bump_token_version: bool = False,
        expected_password_hash: str | None = None,
    ) -> UserRecord | None:
        """See Store.update_user; also None when `expected_password_hash` no longer matches."""
        rows = await self._run(
            "UPDATE users SET password_hash = coalesce(:password_hash, password_hash),"
            " roles = coalesce(:roles, roles), disabled = coalesce(:disabled, disabled),"
            " token_version = token_version + :bump, updated_at = :now"
            " WHERE id = :id AND (:expected IS NULL OR password_hash = :expected)"
            " RETURNING id, email, password_hash, roles, disabled, token_version, created_at, updated_at",
            {
                "password_hash": password_hash,
                "roles": None if roles is None else _roles_json(roles),
                "disabled": None if disabled is None else int(disabled),
                "bump": int(bump_token_version),
                "now": now,
                "id": user_id,
                "expected": expected_password_hash,
            },
        )
        return _user(rows[0]) if rows else None

    # sessions and refresh tokens

    async def create_session(self, session: SessionRecord, token: RefreshTokenRecord) -> None:
        async with self._transaction() as db:
            await db.execute_fetchall(
                "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, idle_ttl, client,"
                " revoked_at, revoke_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session.id,
                    session.user_id,
                    session.created_at,
                    session.last_used_at,
                    session.expires_at,
                    session.idle_ttl,
                    session.client,
                    session.revoked_at,
                    session.revoke_reason,
                ),
            )
            await db.execute_fetchall(_INSERT_REFRESH, _token_row(token))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        rows = await self._run(_SELECT_SESSION + " WHERE id = ?", (session_id,))
        return _session(rows[0]) if rows else None

    async def list_sessions(self, *, now: float, user_id: str | None = None) -> list[SessionRecord]:
        mine = "" if user_id is None else " AND user_id = :user_id"
        rows = await self._run(
            f"{_SELECT_SESSION} WHERE {_LIVE_SESSION}{mine} ORDER BY created_at DESC, id DESC",
            {"now": now, "user_id": user_id},
        )
        return [_session(row) for row in rows]

    async def get_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        rows = await self._run(
            "SELECT token_hash, session_id, generation, issued_at, expires_at, rotated_at, successor_hash"
            " FROM refresh_tokens WHERE token_hash = ?",
            (token_hash,),
        )
        return _token(rows[0]) if rows else None

    async def rotate_refresh_token(
        self, token_hash: str, successor: RefreshTokenRecord, *, now: float, client: str
    ) -> bool:
        async with self._transaction() as db:
            # The claim is one conditional UPDATE: of any number of racing callers, in this process
            # or another, exactly one sees its row come back.
            claimed = list(
                await db.execute_fetchall(
                    "UPDATE refresh_tokens SET rotated_at = ?, successor_hash = ?"
                    " WHERE token_hash = ? AND rotated_at IS NULL RETURNING session_id",
                    (now, successor.token_hash, token_hash),
                )
            )
            if len(claimed) != 1:
                return False
            session_id = claimed[0][0]
            if successor.session_id != session_id:
                raise ValueError(f"successor belongs to session {successor.session_id!r}, not {session_id!r}")
            await db.execute_fetchall(_INSERT_REFRESH, _token_row(successor))
            await db.execute_fetchall(
                "UPDATE sessions SET last_used_at = ?, client = ? WHERE id = ?", (now, client, session_id)
            )
        return True

    async def revoke_sessions(
        self,
        *,
        now: float,
        reason: str,
        feed_until: float,
        session_ids: Sequence[str] = (),
        user_id: str | None = None,
    ) -> list[str]:
        revoked: list[str] = []
        async with self._transaction() as db:
            for session_id in dict.fromkeys(session_ids):
                rows = await db.execute_fetchall(
                    "UPDATE sessions SET revoked_at = ?, revoke_reason = ?"
                    " WHERE id = ? AND revoked_at IS NULL RETURNING id",
                    (now, reason, session_id),
                )
                revoked.extend(row[0] for row in rows)
            if user_id is not None:
                rows = await db.execute_fetchall(
                    "UPDATE sessions SET revoked_at = :now, revoke_reason = :reason WHERE user_id = :user_id"
                    " AND revoked_at IS NULL AND expires_at > :now AND last_used_at + idle_ttl > :now"
                    " RETURNING id",
                    {"now": now, "reason": reason, "user_id": user_id},
                )
                revoked.extend(row[0] for row in rows)
            if revoked:
                await db.executemany(
                    _INSERT_FEED, [("session", session_id, 0, now, feed_until) for session_id in revoked]
                )
        return revoked

    async def add_user_revocation(self, user_id: str, min_version: int, *, now: float, until: float) -> None:
        await self._run(_INSERT_FEED, ("user", user_id, min_version, now, until))

    async def revocations_since(self, seq: int, *, now: float) -> list[Revocation]:
        rows = await self._run(
            "SELECT seq, kind, subject, min_version, created_at, until FROM revocations"
            " WHERE seq > ? AND until > ? ORDER BY seq",
            (seq, now),
        )
        return [
            Revocation(row[0], cast(Literal["session", "user"], row[1]), row[2], row[3], row[4], row[5])
            for row in rows
        ]

    # login throttling

    async def throttle_hit(self, key: str, *, now: float, window: float) -> ThrottleState:
        """See Store.throttle_hit; a failure at first_at + window still counts in the window."""
        rows = await self._run(
            "INSERT INTO throttle (key, failures, first_at, last_at) VALUES (:key, 1, :now, :now)"
            " ON CONFLICT (key) DO UPDATE SET"
            " failures = CASE WHEN :now - first_at <= :window THEN failures + 1 ELSE 1 END,"
            " first_at = CASE WHEN :now - first_at <= :window THEN first_at ELSE :now END,"
            " last_at = :now"
            " RETURNING failures, first_at, last_at",
            {"key": key, "now": now, "window": window},
        )
        return ThrottleState(*rows[0])

    async def throttle_get(self, key: str, *, now: float, window: float) -> ThrottleState | None:
        rows = await self._run(
            "SELECT failures, first_at, last_at FROM throttle WHERE key = ? AND ? - first_at <= ?",
            (key, now, window),
        )
        return ThrottleState(*rows[0]) if rows else None

    async def throttle_clear(self, key: str) -> None:
        await self._run("DELETE FROM throttle WHERE key = ?", (key,))

    async def purge(self, *, now: float) -> None:
        """See Store.purge. Expired tokens of a live session stay while it lives: they still name
        their session, so a sign-out with an old refresh cookie still finds what to end."""
        times = {"now": now, "long_ago": now - KEEP_DEAD_FOR}
        async with self._transaction() as db:
            await db.execute_fetchall(
                "DELETE FROM refresh_tokens WHERE expires_at <= :now AND session_id IN (SELECT id"
                " FROM sessions WHERE revoked_at IS NOT NULL OR expires_at <= :now"
                " OR last_used_at + idle_ttl <= :now)",
                times,
            )
            # ON DELETE CASCADE takes the remaining (revoked but unexpired) tokens with the session.
            await db.execute_fetchall(
                "DELETE FROM sessions WHERE revoked_at <= :long_ago OR expires_at <= :long_ago"
                " OR last_used_at + idle_ttl <= :long_ago",
                times,
            )
            await db.execute_fetchall("DELETE FROM revocations WHERE until <= :now", times)
            await db.execute_fetchall("DELETE FROM throttle WHERE last_at <= :long_ago", times)

    # plumbing

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, held exclusively; an unavailable database surfaces as StoreError."""
        try:
            async with self._lock:
                if self._db is None:
                    raise StoreError(f"the store {self._path!r} is closed")
                yield self._db
        except sqlite3.DatabaseError as exc:
            if not _unavailable(exc):
                raise
            raise StoreError(f"SQLite database {self._path!r} failed: {exc}") from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE … COMMIT on the held connection, ROLLBACK on any exception."""
        async with self._connection() as db:
            try:
                await db.execute_fetchall("BEGIN IMMEDIATE")
                yield db
                await db.execute_fetchall("COMMIT")
            except BaseException:
                # Even when this task was cancelled mid-statement, the statement is already queued on
                # the connection's thread, so this ROLLBACK runs after it and before the next BEGIN.
                await _rollback(db)
                raise

    async def _run(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        """Run one statement (a read, or a write that is atomic on its own) and return its rows."""
        async with self._connection() as db:
            return list(await db.execute_fetchall(sql, params))


async def _enable_wal(db: aiosqlite.Connection, path: str) -> None:
    # journal_mode=WAL persists in the file: switch only when needed, since the switch needs an
    # exclusive lock (waited for through busy_timeout when several processes start at once).
    rows = list(await db.execute_fetchall("PRAGMA journal_mode"))
    if rows[0][0] != "wal":
        rows = list(await db.execute_fetchall("PRAGMA journal_mode = WAL"))
    if rows[0][0] != "wal":
        raise StoreError(
            f"SQLite database {path!r} cannot use WAL mode (journal_mode={rows[0][0]}): use a local file"
        )


async def _migrate(db: aiosqlite.Connection, path: str) -> None:
    """Apply the migrations the file lacks, all in one transaction; BEGIN IMMEDIATE makes processes
    starting together take turns, and the later ones find nothing left to do."""
    await db.execute_fetchall("BEGIN IMMEDIATE")
    try:
        ((version,),) = await db.execute_fetchall("PRAGMA user_version")
        if version > len(MIGRATIONS):
            raise StoreError(
                f"SQLite database {path!r} has schema version {version}, newer than this gateway's"
                f" {len(MIGRATIONS)}: upgrade the gateway or use another database file"
            )
        for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements:
                await db.execute_fetchall(statement)
            await db.execute_fetchall(f"PRAGMA user_version = {int(number)}")
        await db.execute_fetchall("COMMIT")
    except BaseException:
        await _rollback(db)
        raise


async def _rollback(db: aiosqlite.Connection) -> None:
    # "no transaction is active" when BEGIN failed or SQLite already rolled back after the error
    with contextlib.suppress(sqlite3.OperationalError):
        await db.execute_fetchall("ROLLBACK")


def _require_sqlite_version(version: tuple[int, int, int]) -> None:
    if version < MIN_SQLITE_VERSION:
        raise StoreError(
            f"SQLite {'.'.join(map(str, MIN_SQLITE_VERSION))} or newer is required (for RETURNING), but this"
            f" Python uses SQLite {'.'.join(map(str, version))}: use a newer Python build, or PostgreSQL"
        )


def _unavailable(exc: sqlite3.DatabaseError) -> bool:
    """Locked, busy, I/O, unreadable, not a database, corrupt: the store cannot answer.

    IntegrityError and ProgrammingError are callers' bugs and stay as they are.
    """
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _roles_json(roles: Sequence[str]) -> str:
    if isinstance(roles, str):  # a bare string is a Sequence[str] too; never store "admin" as a-d-m-i-n
        raise TypeError("roles must be a sequence of role names, not a string")
    return json.dumps(list(roles))


def _user(row: Any) -> UserRecord:
    return UserRecord(
        id=row[0],
        email=row[1],
        password_hash=row[2],
        roles=tuple(json.loads(row[3])),
        disabled=bool(row[4]),
        token_version=row[5],
        created_at=row[6],
        updated_at=row[7],
    )


def _session(row: Any) -> SessionRecord:
    return SessionRecord(*row)


def _token(row: Any) -> RefreshTokenRecord:
    return RefreshTokenRecord(*row)


def _token_row(token: RefreshTokenRecord) -> tuple[Any, ...]:
    return (
        token.token_hash,
        token.session_id,
        token.generation,
        token.issued_at,
        token.expires_at,
        token.rotated_at,
        token.successor_hash,
    )


if TYPE_CHECKING:

    def _conforms(store: SQLiteStore) -> Store:  # mypy checks SQLiteStore against the protocol here
        return store
