"""The PostgreSQL store (asyncpg): one database shared by every gateway process and host.

Same tables and semantics as the SQLite store. Atomic steps are single conditional statements
under READ COMMITTED (a blocked `UPDATE` re-checks its `WHERE` on the committed row), never a read
followed by a write. Times are double precision Unix seconds, exactly as the protocol passes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from gateway.errors import EmailTaken, StoreError
from gateway.store import RefreshTokenRecord, Revocation, SessionRecord, ThrottleState, UserRecord
from gateway.store.sqlite import KEEP_DEAD_FOR

COMMAND_TIMEOUT = 10.0  # seconds per statement
ACQUIRE_TIMEOUT = 10.0  # seconds to get a pooled connection (a dead server must not hang a request)
CLOSE_TIMEOUT = 10.0
# pg_advisory_xact_lock key: instances starting together migrate one at a time.
MIGRATION_LOCK = int.from_bytes(b"gw-migr8", "big")

# Errors that mean "the server cannot answer", as opposed to a bug in a statement.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,  # admin shutdown, "the database system is starting up"
    asyncpg.InsufficientResourcesError,  # too many connections, disk full
)

# Migration N brings the schema from version N-1 to N; applied in order, each in the open transaction.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        id text PRIMARY KEY,
        email text NOT NULL CONSTRAINT users_email_key UNIQUE,
        password_hash text NOT NULL,
        roles text[] NOT NULL DEFAULT '{}',
        disabled boolean NOT NULL DEFAULT false,
        token_version bigint NOT NULL DEFAULT 0,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL
    );
    CREATE TABLE sessions (
        id text PRIMARY KEY,
        user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at double precision NOT NULL,
        last_used_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        idle_ttl double precision NOT NULL,
        client text NOT NULL DEFAULT '',
        revoked_at double precision,
        revoke_reason text
    );
    CREATE INDEX sessions_user_id ON sessions (user_id);
    CREATE TABLE refresh_tokens (
        token_hash text PRIMARY KEY,
        session_id text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        generation integer NOT NULL,
        issued_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        rotated_at double precision,
        successor_hash text
    );
    CREATE INDEX refresh_tokens_session_id ON refresh_tokens (session_id);
    CREATE INDEX refresh_tokens_expires_at ON refresh_tokens (expires_at);
    CREATE TABLE revocations (
        seq bigserial PRIMARY KEY,
        kind text NOT NULL CHECK (kind IN ('session', 'user')),
        subject text NOT NULL,
        min_version bigint NOT NULL DEFAULT 0,
        created_at double precision NOT NULL,
        until double precision NOT NULL
    );
    CREATE INDEX revocations_until ON revocations (until);
    CREATE TABLE throttle (
        key text PRIMARY KEY,
        failures integer NOT NULL,
        first_at double precision NOT NULL,
        last_at double precision NOT NULL
    );
    """,
)

# Feed writers take this lock before drawing a seq and hold it to commit, so seqs become visible
# in order: a poller that has seen seq N can never later miss a smaller one. Readers are not blocked.
_LOCK_FEED = "LOCK TABLE revocations IN SHARE ROW EXCLUSIVE MODE"


def _roles(roles: Sequence[str]) -> list[str]:
    if isinstance(roles, str):  # a bare string is a Sequence[str] too; never store "admin" as a-d-m-i-n
        raise TypeError("roles must be a sequence of role names, not a string")
    return list(roles)


def _user(row: Any) -> UserRecord:
    return UserRecord(
        id=row["id"],
        email=row["email"],
        password_hash=row["password_hash"],
        roles=tuple(row["roles"]),
        disabled=row["disabled"],
        token_version=row["token_version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _session(row: Any) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        user_id=row["user_id"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        expires_at=row["expires_at"],
        idle_ttl=row["idle_ttl"],
        client=row["client"],
        revoked_at=row["revoked_at"],
        revoke_reason=row["revoke_reason"],
    )


def _token(row: Any) -> RefreshTokenRecord:
    return RefreshTokenRecord(
        token_hash=row["token_hash"],
        session_id=row["session_id"],
        generation=row["generation"],
        issued_at=row["issued_at"],
        expires_at=row["expires_at"],
        rotated_at=row["rotated_at"],
        successor_hash=row["successor_hash"],
    )


def _where(url: str) -> str:
    """host:port/database of a URL, for messages: never the user or password."""
    parts = urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:  # asyncpg reports the malformed port itself
        return "(malformed url)"
    return f"{parts.hostname or 'localhost'}:{port}{parts.path or '/'}"


async def _migrate(con: Any) -> None:
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await con.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await con.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        if current > len(MIGRATIONS):
            raise StoreError(
                f"the database schema is version {current}, newer than this gateway knows "
                f"({len(MIGRATIONS)}): upgrade the gateway"
            )
        for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
            await con.execute(sql)
            await con.execute("INSERT INTO schema_version (version) VALUES ($1)", version)


def _split_statement_cache_size(url: str) -> tuple[str, int]:
    """Take `statement_cache_size` out of the URL's query (asyncpg would send it to the server as
    a setting, which PostgreSQL refuses). 0 is what PgBouncer in transaction mode needs before
    version 1.21 (asyncpg FAQ); the default is asyncpg's own, 100."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    sizes = [v for k, v in query if k == "statement_cache_size"]
    if not sizes:
        return url, 100
    try:
        size = int(sizes[-1])
    except ValueError:
        raise StoreError("storage.url: statement_cache_size must be an integer") from None
    rest = urlencode([(k, v) for k, v in query if k != "statement_cache_size"])
    return urlunsplit(parts._replace(query=rest)), size


class PostgresStore:
    """A pool of up to 10 connections; every unit of work borrows one."""

    def __init__(self, pool: Any, where: str = "") -> None:
        self._pool = pool
        self._where = where

    def __repr__(self) -> str:
        return f"<PostgresStore {self._where}>"

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        """Connect a pool to `url` and bring the schema up to date."""
        where = _where(url)
        url, cache_size = _split_statement_cache_size(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=10,
                command_timeout=COMMAND_TIMEOUT,
                statement_cache_size=cache_size,
                server_settings={"application_name": "gateway"},
            )
        except (
            *_UNAVAILABLE,
            asyncpg.InvalidAuthorizationSpecificationError,
            asyncpg.InvalidCatalogNameError,
            asyncpg.PostgresError,
        ) as exc:
            # The message names host, port and database, never the URL's user or password.
            raise StoreError(f"cannot connect to the PostgreSQL store at {where}: {exc}") from exc
        store = cls(pool, where)
        try:
            async with store._connection() as con:
                await _migrate(con)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT)
        except TimeoutError:
            self._pool.terminate()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as con:
                yield con
        except _UNAVAILABLE as exc:
            raise StoreError(f"the PostgreSQL store is unavailable: {exc}") from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Any]:
        async with self._connection() as con, con.transaction():
            yield con

    async def ping(self) -> None:
        async with self._connection() as con:
            await con.fetchval("SELECT 1")

    # users

    async def create_user(self, user: UserRecord) -> None:
        try:
            async with self._connection() as con:
                await con.execute(
                    "INSERT INTO users (id, email, password_hash, roles, disabled, token_version,"
                    " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    user.id,
                    user.email,
                    user.password_hash,
                    _roles(user.roles),
                    user.disabled,
                    user.token_version,
                    user.created_at,
                    user.updated_at,
                )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "users_email_key":
                raise EmailTaken() from exc
            raise

    async def get_user(self, user_id: str) -> UserRecord | None:
        async with self._connection() as con:
            row = await con.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
        return _user(row) if row else None

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        async with self._connection() as con:
            row = await con.fetchrow("SELECT * FROM users WHERE email = $1", email)
        return _user(row) if row else None

    async def list_users(self) -> list[UserRecord]:
        async with self._connection() as con:
            rows = await con.fetch("SELECT * FROM users ORDER BY created_at, id")
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
        async with self._connection() as con:
            row = await con.fetchrow(
                "UPDATE users SET"
                " password_hash = coalesce($3, password_hash),"
                " roles = coalesce($4::text[], roles),"
                " disabled = coalesce($5, disabled),"
                " token_version = token_version + $6,"
                " updated_at = $2"
                " WHERE id = $1 AND ($7::text IS NULL OR password_hash = $7)"
                " RETURNING *",
                user_id,
                now,
                password_hash,
                None if roles is None else _roles(roles),
                disabled,
                1 if bump_token_version else 0,
                expected_password_hash,
            )
        return _user(row) if row else None

    # sessions and refresh tokens

    async def create_session(self, session: SessionRecord, token: RefreshTokenRecord) -> None:
        async with self._transaction() as con:
            await con.execute(
                "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, idle_ttl, client,"
                " revoked_at, revoke_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                session.id,
                session.user_id,
                session.created_at,
                session.last_used_at,
                session.expires_at,
                session.idle_ttl,
                session.client,
                session.revoked_at,
                session.revoke_reason,
            )
            await self._insert_token(con, token)

    @staticmethod
    async def _insert_token(con: Any, token: RefreshTokenRecord) -> None:
        await con.execute(
            "INSERT INTO refresh_tokens (token_hash, session_id, generation, issued_at, expires_at,"
            " rotated_at, successor_hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            token.token_hash,
            token.session_id,
            token.generation,
            token.issued_at,
            token.expires_at,
            token.rotated_at,
            token.successor_hash,
        )

    async def get_session(self, session_id: str) -> SessionRecord | None:
        async with self._connection() as con:
            row = await con.fetchrow("SELECT * FROM sessions WHERE id = $1", session_id)
        return _session(row) if row else None

    async def list_sessions(self, *, now: float, user_id: str | None = None) -> list[SessionRecord]:
        async with self._connection() as con:
            rows = await con.fetch(
                "SELECT * FROM sessions"
                " WHERE revoked_at IS NULL AND expires_at > $1 AND last_used_at + idle_ttl > $1"
                " AND ($2::text IS NULL OR user_id = $2) ORDER BY created_at DESC, id DESC",
                now,
                user_id,
            )
        return [_session(row) for row in rows]

    async def get_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        async with self._connection() as con:
            row = await con.fetchrow("SELECT * FROM refresh_tokens WHERE token_hash = $1", token_hash)
        return _token(row) if row else None

    async def rotate_refresh_token(
        self, token_hash: str, successor: RefreshTokenRecord, *, now: float, client: str
    ) -> bool:
        # One statement, so one implicit transaction and one round trip (about twice the rotations
        # per second of BEGIN; UPDATE; INSERT; UPDATE; COMMIT). The claim is the first UPDATE:
        # concurrent callers queue on the row lock and each re-checks `rotated_at IS NULL` on the
        # committed row, so exactly one gets a row back; the INSERT and the session UPDATE run
        # only for that row, and a failure of either undoes the claim. A successor of another
        # session gets session_id NULL, so its NOT NULL constraint aborts the whole statement.
        try:
            async with self._connection() as con:
                claimed = await con.fetchval(
                    "WITH claimed AS ("
                    "  UPDATE refresh_tokens SET rotated_at = $1, successor_hash = $2"
                    "  WHERE token_hash = $3 AND rotated_at IS NULL RETURNING session_id"
                    "), successor AS ("
                    "  INSERT INTO refresh_tokens (token_hash, session_id, generation, issued_at, expires_at,"
                    "   rotated_at, successor_hash)"
                    "  SELECT $2, CASE WHEN claimed.session_id = $4 THEN $4 END, $5, $6, $7, $8, $9"
                    "  FROM claimed"
                    "), used AS ("
                    "  UPDATE sessions SET last_used_at = $1, client = $10"
                    "  FROM claimed WHERE sessions.id = claimed.session_id"
                    ") SELECT count(*) FROM claimed",
                    now,
                    successor.token_hash,
                    token_hash,
                    successor.session_id,
                    successor.generation,
                    successor.issued_at,
                    successor.expires_at,
                    successor.rotated_at,
                    successor.successor_hash,
                    client,
                )
        except asyncpg.NotNullViolationError as exc:
            if exc.table_name != "refresh_tokens" or exc.column_name != "session_id":
                raise
            raise ValueError(
                f"successor belongs to session {successor.session_id!r}, not the token's"
            ) from exc
        return bool(claimed)

    async def revoke_sessions(
        self,
        *,
        now: float,
        reason: str,
        feed_until: float,
        session_ids: Sequence[str] = (),
        user_id: str | None = None,
    ) -> list[str]:
        if not session_ids and user_id is None:
            return []
        async with self._transaction() as con:
            # Taken first, so concurrent revokers never lock session rows in opposite orders.
            await con.execute(_LOCK_FEED)
            rows = await con.fetch(
                "UPDATE sessions SET revoked_at = $1, revoke_reason = $2"
                " WHERE revoked_at IS NULL AND (id = ANY($3::text[]) OR (user_id = $4"
                " AND expires_at > $1 AND last_used_at + idle_ttl > $1))"
                " RETURNING id, created_at",
                now,
                reason,
                list(session_ids),
                user_id,
            )
            # The same order as SQLite: the named sessions as given, then the user's, oldest first.
            newly = {row["id"]: row["created_at"] for row in rows}
            named = [sid for sid in dict.fromkeys(session_ids) if sid in newly]
            revoked = named + sorted(newly.keys() - set(named), key=lambda sid: (newly[sid], sid))
            if revoked:
                await con.executemany(
                    "INSERT INTO revocations (kind, subject, min_version, created_at, until)"
                    " VALUES ('session', $1, 0, $2, $3)",
                    [(sid, now, feed_until) for sid in revoked],
                )
        return revoked

    async def add_user_revocation(self, user_id: str, min_version: int, *, now: float, until: float) -> None:
        async with self._transaction() as con:
            await con.execute(_LOCK_FEED)
            await con.execute(
                "INSERT INTO revocations (kind, subject, min_version, created_at, until)"
                " VALUES ('user', $1, $2, $3, $4)",
                user_id,
                min_version,
                now,
                until,
            )

    async def revocations_since(self, seq: int, *, now: float) -> list[Revocation]:
        async with self._connection() as con:
            rows = await con.fetch(
                "SELECT seq, kind, subject, min_version, created_at, until FROM revocations"
                " WHERE seq > $1 AND until > $2 ORDER BY seq",
                seq,
                now,
            )
        return [Revocation(**dict(row)) for row in rows]

    # login throttling

    async def throttle_hit(self, key: str, *, now: float, window: float) -> ThrottleState:
        # One statement: insert, count, or restart an expired window, under the row lock.
        async with self._connection() as con:
            row = await con.fetchrow(
                "INSERT INTO throttle AS t (key, failures, first_at, last_at) VALUES ($1, 1, $2, $2)"
                " ON CONFLICT (key) DO UPDATE SET"
                " failures = CASE WHEN $2 - t.first_at > $3 THEN 1 ELSE t.failures + 1 END,"
                " first_at = CASE WHEN $2 - t.first_at > $3 THEN $2 ELSE t.first_at END,"
                " last_at = $2"
                " RETURNING failures, first_at, last_at",
                key,
                now,
                window,
            )
        return ThrottleState(failures=row["failures"], first_at=row["first_at"], last_at=row["last_at"])

    async def throttle_get(self, key: str, *, now: float, window: float) -> ThrottleState | None:
        async with self._connection() as con:
            row = await con.fetchrow(
                "SELECT failures, first_at, last_at FROM throttle WHERE key = $1 AND $2 - first_at <= $3",
                key,
                now,
                window,
            )
        if row is None:
            return None
        return ThrottleState(failures=row["failures"], first_at=row["first_at"], last_at=row["last_at"])

    async def throttle_clear(self, key: str) -> None:
        async with self._connection() as con:
            await con.execute("DELETE FROM throttle WHERE key = $1", key)

    async def purge(self, *, now: float) -> None:
        """See Store.purge; keeps what the SQLite store keeps. Tokens of a live session stay even
        when expired: presenting a rotated one must still be recognised as reuse."""
        long_ago = now - KEEP_DEAD_FOR
        # Autocommit statements, each holding its locks briefly; tokens before sessions, the order
        # rotation locks them in.
        async with self._connection() as con:
            await con.execute(
                "DELETE FROM refresh_tokens WHERE expires_at <= $1 AND session_id IN (SELECT id"
                " FROM sessions WHERE revoked_at IS NOT NULL OR expires_at <= $1"
                " OR last_used_at + idle_ttl <= $1)",
                now,
            )
            # ON DELETE CASCADE takes the remaining (revoked but unexpired) tokens with the session.
            await con.execute(
                "DELETE FROM sessions WHERE revoked_at <= $1 OR expires_at <= $1"
                " OR last_used_at + idle_ttl <= $1",
                long_ago,
            )
            await con.execute("DELETE FROM revocations WHERE until <= $1", now)
            await con.execute("DELETE FROM throttle WHERE last_at <= $1", long_ago)
