"""The storage protocol, its records, and `open_store(url)`: the only place a backend is chosen.

The domain code never writes SQL; it calls these methods. Every method that must be atomic says
so, and every backend must pass `tests/store/test_contract.py`. Times are float Unix seconds.
Refresh tokens are stored only as hex SHA-256 digests (`token_hash`), never raw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class UserRecord:
    id: str
    email: str  # normalised (NFKC, trimmed, lower-case); unique
    password_hash: str
    roles: tuple[str, ...]
    disabled: bool
    token_version: int  # bumped when existing access tokens must stop working (roles, disable, password)
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class SessionRecord:
    """A login: one refresh-token family."""

    id: str
    user_id: str
    created_at: float
    last_used_at: float
    expires_at: float  # absolute end: no refresh extends the session past it
    idle_ttl: float  # a session unused this long is dead
    client: str  # short description of the client (address, user agent), for the sessions list
    revoked_at: float | None = None
    revoke_reason: str | None = None


@dataclass(frozen=True)
class RefreshTokenRecord:
    token_hash: str
    session_id: str
    generation: int
    issued_at: float
    expires_at: float  # min(issued_at + idle_ttl, session.expires_at)
    rotated_at: float | None = None
    successor_hash: str | None = None


@dataclass(frozen=True)
class Revocation:
    """One entry of the revocation feed every process polls.

    kind "session": access tokens whose `sid` == subject are dead.
    kind "user": access tokens of user `subject` whose `ver` < min_version are dead.
    Entries are kept until `until` (the last moment a token they kill could still be unexpired).
    """

    seq: int
    kind: Literal["session", "user"]
    subject: str
    min_version: int
    created_at: float
    until: float


@dataclass(frozen=True)
class ThrottleState:
    failures: int  # failures inside the current window
    first_at: float  # first failure of the window
    last_at: float  # latest failure


class Store(Protocol):
    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreError when the store cannot answer."""

    # users
    async def create_user(self, user: UserRecord) -> None:
        """Insert; raise errors.EmailTaken if the (normalised) email exists. Atomic."""

    async def get_user(self, user_id: str) -> UserRecord | None: ...

    async def get_user_by_email(self, email: str) -> UserRecord | None: ...

    async def list_users(self) -> list[UserRecord]: ...

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
        """Change the given fields in one statement; return the new record, None if no such user.

        With `expected_password_hash`, the update happens only if the stored hash still equals
        it (used for rehash-on-login, so a concurrent password change is never overwritten).
        """

    # sessions and refresh tokens
    async def create_session(self, session: SessionRecord, token: RefreshTokenRecord) -> None:
        """Insert a session and its first refresh token in one transaction."""

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def list_sessions(self, *, now: float, user_id: str | None = None) -> list[SessionRecord]:
        """Live sessions (not revoked, not past expires_at, used within idle_ttl), newest first."""

    async def get_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None: ...

    async def rotate_refresh_token(
        self, token_hash: str, successor: RefreshTokenRecord, *, now: float, client: str
    ) -> bool:
        """Single-use rotation, atomic.

        In one transaction: mark `token_hash` rotated (rotated_at=now, successor_hash=successor's
        hash) only if it is not rotated yet; if that changed a row, insert `successor` and set the
        session's last_used_at=now and client. Return True if this call rotated the token, False
        if it was already rotated (the caller lost a race) or does not exist.
        """

    async def revoke_sessions(
        self,
        *,
        now: float,
        reason: str,
        feed_until: float,
        session_ids: Sequence[str] = (),
        user_id: str | None = None,
    ) -> list[str]:
        """Revoke the named sessions and/or every live session of `user_id`, in one transaction.

        Sets revoked_at/revoke_reason on sessions not revoked yet, and appends one "session"
        feed entry (until=feed_until) per newly revoked session. Returns the ids newly revoked.
        """

    async def add_user_revocation(self, user_id: str, min_version: int, *, now: float, until: float) -> None:
        """Append a "user" feed entry."""

    async def revocations_since(self, seq: int, *, now: float) -> list[Revocation]:
        """Feed entries with seq > `seq` and until > now, in seq order."""

    # login throttling (shared by every process and host)
    async def throttle_hit(self, key: str, *, now: float, window: float) -> ThrottleState:
        """Count one failure for `key` atomically; a window older than `window` starts over."""

    async def throttle_get(self, key: str, *, now: float, window: float) -> ThrottleState | None:
        """The key's state, or None when it has no failure inside the window."""

    async def throttle_clear(self, key: str) -> None: ...

    async def purge(self, *, now: float) -> None:
        """Delete what can never matter again: expired tokens, old sessions, feed, throttle rows."""


async def open_store(url: str) -> Store:
    """Open (and migrate) the store named by `url`: sqlite:///path or postgresql://…"""
    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SQLiteStore

        return await SQLiteStore.open(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore

        return await PostgresStore.open(url)
    raise ValueError(f"unsupported storage url {url!r}: expected sqlite:///path or postgresql://…")
