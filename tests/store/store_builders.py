"""Record builders for the store tests: valid defaults and fresh ids, so a test names only what it is about.

Times are fixed (NOW), never the wall clock: every store call takes `now` explicitly.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import replace
from typing import Any

from gateway.store import RefreshTokenRecord, SessionRecord, Store, UserRecord

NOW = 1_700_000_000.0
HOUR = 3_600.0
DAY = 86_400.0


def digest(raw: str) -> str:
    """What the domain stores for a refresh token: the hex SHA-256 of it."""
    return hashlib.sha256(raw.encode()).hexdigest()


def new_id() -> str:
    return uuid.uuid4().hex


def user(**changes: Any) -> UserRecord:
    uid = new_id()
    record = UserRecord(
        id=uid,
        email=f"{uid}@example.com",
        password_hash="$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA",
        roles=("user",),
        disabled=False,
        token_version=0,
        created_at=NOW,
        updated_at=NOW,
    )
    return replace(record, **changes)


def session(user_id: str, **changes: Any) -> SessionRecord:
    record = SessionRecord(
        id=new_id(),
        user_id=user_id,
        created_at=NOW,
        last_used_at=NOW,
        expires_at=NOW + 7 * DAY,
        idle_ttl=DAY,
        client="203.0.113.7 test-agent",
    )
    return replace(record, **changes)


def token(session_id: str, **changes: Any) -> RefreshTokenRecord:
    record = RefreshTokenRecord(
        token_hash=digest(new_id()),
        session_id=session_id,
        generation=0,
        issued_at=NOW,
        expires_at=NOW + DAY,
    )
    return replace(record, **changes)


async def login(
    store: Store, owner: UserRecord | None = None, **session_changes: Any
) -> tuple[UserRecord, SessionRecord, RefreshTokenRecord]:
    """Store a user (unless `owner` exists already), a session of it and the session's first token."""
    if owner is None:
        owner = user()
        await store.create_user(owner)
    new_session = session(owner.id, **session_changes)
    first = token(new_session.id)
    await store.create_session(new_session, first)
    return owner, new_session, first
