"""SQLite-only behaviour: PRAGMAs, migrations, several connections on one file, errors, retention."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from store_builders import DAY, HOUR, NOW, digest, login, session, token, user

from gateway.errors import StoreError
from gateway.store import open_store
from gateway.store.sqlite import MIGRATIONS, SQLiteStore


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "gateway.db")


@asynccontextmanager
async def opened(path: str) -> AsyncIterator[SQLiteStore]:
    """An open store, closed on the way out even when the test fails (a leaked one hangs the exit)."""
    store = await SQLiteStore.open(path)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def sqlite_store(db_path: str) -> AsyncIterator[SQLiteStore]:
    async with opened(db_path) as store:
        yield store


def inspect(path: str, sql: str) -> list[tuple[object, ...]]:
    """Run one statement on a separate connection, as another process would see the file."""
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def tables(path: str) -> set[object]:
    return {row[0] for row in inspect(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}


async def own_pragma(store: SQLiteStore, name: str) -> object:
    """A PRAGMA of the store's own connection (most are per connection, not per file)."""
    assert store._db is not None
    [(value,)] = await store._db.execute_fetchall(f"PRAGMA {name}")
    return value


async def open_and_close(path: str) -> None:
    async with opened(path):
        pass


# PRAGMAs


async def test_file_is_in_wal_mode(sqlite_store: SQLiteStore, db_path: str) -> None:
    """open() switches the file to WAL, where it stays for every later connection."""
    assert inspect(db_path, "PRAGMA journal_mode") == [("wal",)]


async def test_connection_enforces_foreign_keys_waits_on_locks_and_syncs_normally(
    sqlite_store: SQLiteStore,
) -> None:
    """The store's connection has foreign_keys=ON, busy_timeout=5000 and synchronous=NORMAL."""
    assert await own_pragma(sqlite_store, "foreign_keys") == 1
    assert await own_pragma(sqlite_store, "busy_timeout") == 5000
    assert await own_pragma(sqlite_store, "synchronous") == 1  # NORMAL


async def test_session_of_an_unknown_user_is_refused(sqlite_store: SQLiteStore) -> None:
    """Foreign keys are enforced: a session of a user that does not exist is not stored, nor its token."""
    orphan = session("no-such-user")
    first = token(orphan.id)

    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        await sqlite_store.create_session(orphan, first)

    assert await sqlite_store.get_session(orphan.id) is None
    assert await sqlite_store.get_refresh_token(first.token_hash) is None


# opening and migrations


async def test_open_store_url_creates_missing_folders(tmp_path: Path) -> None:
    """open_store("sqlite:///…") opens an SQLiteStore, creating the database's folders."""
    path = tmp_path / "var" / "lib" / "gateway" / "gateway.db"

    store = await open_store(f"sqlite:///{path}")
    try:
        assert isinstance(store, SQLiteStore)
        await store.ping()
    finally:
        await store.close()
    assert path.is_file()


async def test_reopening_applies_no_migration_twice(db_path: str) -> None:
    """Opening an up-to-date file again changes neither schema nor data."""
    alice = user()
    async with opened(db_path) as store:
        await store.create_user(alice)
    schema = inspect(db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")

    for _ in range(2):
        async with opened(db_path):
            pass

    assert inspect(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert inspect(db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema
    async with opened(db_path) as store:
        assert await store.get_user(alice.id) == alice


async def test_a_new_migration_is_applied_on_reopen(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration appended to MIGRATIONS runs once on the next open, keeping the data of the earlier ones."""
    alice = user()
    async with opened(db_path) as store:
        await store.create_user(alice)
    monkeypatch.setattr("gateway.store.sqlite.MIGRATIONS", (*MIGRATIONS, ("CREATE TABLE extra (x INTEGER)",)))

    async with opened(db_path) as store:
        assert await store.get_user(alice.id) == alice

    assert inspect(db_path, "PRAGMA user_version") == [(len(MIGRATIONS) + 1,)]
    assert "extra" in tables(db_path)


async def test_a_failing_migration_changes_nothing(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails half-way is rolled back whole: no new table, version unchanged."""
    async with opened(db_path):
        pass
    broken = ("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL")
    monkeypatch.setattr("gateway.store.sqlite.MIGRATIONS", (*MIGRATIONS, broken))

    with pytest.raises(StoreError):
        await open_and_close(db_path)

    assert inspect(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert "extra" not in tables(db_path)


async def test_open_refuses_a_schema_newer_than_the_code(db_path: str) -> None:
    """A file migrated by a newer gateway is refused with a message saying so."""
    async with opened(db_path):
        pass
    inspect(db_path, f"PRAGMA user_version = {len(MIGRATIONS) + 1}")

    with pytest.raises(StoreError, match="newer"):
        await open_and_close(db_path)


async def test_concurrent_opens_of_a_new_file_migrate_once(db_path: str) -> None:
    """Eight stores opening one new file at once, as pre-forked workers do, all succeed on one schema."""
    results = await asyncio.gather(*(SQLiteStore.open(db_path) for _ in range(8)), return_exceptions=True)
    stores = [r for r in results if isinstance(r, SQLiteStore)]
    try:
        assert stores == results
        alice = user()
        await stores[0].create_user(alice)
        assert [await s.get_user(alice.id) for s in stores] == [alice] * 8
    finally:
        await asyncio.gather(*(s.close() for s in stores))

    assert inspect(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


async def test_open_rejects_a_file_that_is_not_a_database(db_path: str) -> None:
    """A file that is not an SQLite database is a StoreError naming the file, caused by SQLite's error."""
    Path(db_path).write_bytes(b"certainly not an sqlite database\n" * 200)

    with pytest.raises(StoreError, match=r"gateway\.db") as raised:
        await open_and_close(db_path)

    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)


async def test_open_requires_sqlite_3_35(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An SQLite library without RETURNING is refused at open with the required version in the message."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))

    with pytest.raises(StoreError, match=r"3\.35"):
        await open_and_close(db_path)


# several connections, errors


async def test_two_stores_on_one_file_rotate_a_token_once(db_path: str) -> None:
    """Two stores on one file (two connections, like two worker processes) racing one token: one winner."""
    async with opened(db_path) as first_store, opened(db_path) as second_store:
        _, new_session, first = await login(first_store)
        successors = [token(new_session.id, generation=1) for _ in range(40)]
        stores = [first_store, second_store] * 20

        results = await asyncio.gather(
            *(
                s.rotate_refresh_token(first.token_hash, t, now=NOW + 1, client="c")
                for s, t in zip(stores, successors, strict=True)
            )
        )

        assert results.count(True) == 1
        stored = [await second_store.get_refresh_token(t.token_hash) for t in successors]
        assert [t is not None for t in stored].count(True) == 1


async def test_locked_database_raises_store_error_and_recovers(
    sqlite_store: SQLiteStore, db_path: str
) -> None:
    """While another process holds the write lock past busy_timeout, writes raise StoreError; reads go on."""
    assert sqlite_store._db is not None
    await sqlite_store._db.execute_fetchall("PRAGMA busy_timeout = 50")  # fail fast instead of after 5 s
    _, new_session, first = await login(sqlite_store)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="locked") as raised:
            await sqlite_store.rotate_refresh_token(
                first.token_hash, token(new_session.id), now=NOW, client="c"
            )
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(StoreError, match="locked"):
            await sqlite_store.create_user(user())
        assert await sqlite_store.get_refresh_token(first.token_hash) == first
    finally:
        other.execute("ROLLBACK")
        other.close()

    assert await sqlite_store.rotate_refresh_token(
        first.token_hash, token(new_session.id), now=NOW, client="c"
    )


@pytest.mark.parametrize(
    ("statement", "rotated"),
    [(1, False), (2, False), (3, False), (4, False), (5, True)],
    ids=["BEGIN", "claim", "insert-successor", "touch-session", "COMMIT"],
)
async def test_rotation_cancelled_at_any_statement_is_all_or_nothing(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, statement: int, rotated: bool
) -> None:
    """A rotation cancelled while its Nth statement is queued applies wholly (COMMIT queued) or not at
    all, re-raises CancelledError, and leaves no transaction open for the next BEGIN."""
    _, new_session, first = await login(sqlite_store)
    successor = token(new_session.id, generation=1)
    db = sqlite_store._db
    assert db is not None
    real = db.execute_fetchall
    calls = 0

    async def cancelled_at_nth(sql: str, parameters: Any = None) -> Any:
        nonlocal calls
        calls += 1

        async def run() -> Any:
            return await real(sql, parameters)

        pending = asyncio.ensure_future(run())
        if calls != statement:
            return await pending
        await asyncio.sleep(0)  # the statement is queued on the connection's thread: it will run
        raise asyncio.CancelledError  # what task.cancel() raises at this await

    monkeypatch.setattr(db, "execute_fetchall", cancelled_at_nth)
    with pytest.raises(asyncio.CancelledError):
        await sqlite_store.rotate_refresh_token(first.token_hash, successor, now=NOW + 1, client="c")
    monkeypatch.undo()

    old = await sqlite_store.get_refresh_token(first.token_hash)
    assert old is not None and (old.rotated_at is not None) is rotated
    assert (await sqlite_store.get_refresh_token(successor.token_hash) is not None) is rotated
    await login(sqlite_store)  # another BEGIN IMMEDIATE: fails if the cancelled one was left open


async def test_rotation_refuses_a_successor_of_another_session(sqlite_store: SQLiteStore) -> None:
    """A successor naming another session is a caller bug: ValueError, and the token stays unrotated."""
    _, _, first = await login(sqlite_store)
    _, elsewhere, _ = await login(sqlite_store)

    with pytest.raises(ValueError, match="session"):
        await sqlite_store.rotate_refresh_token(
            first.token_hash, token(elsewhere.id), now=NOW + 1, client="c"
        )

    assert await sqlite_store.get_refresh_token(first.token_hash) == first


async def test_roles_must_be_a_sequence_of_names(sqlite_store: SQLiteStore) -> None:
    """A bare string as roles is refused rather than stored as one role per character."""
    alice = user()
    await sqlite_store.create_user(alice)

    with pytest.raises(TypeError):
        await sqlite_store.update_user(alice.id, now=NOW, roles="admin")

    assert await sqlite_store.get_user(alice.id) == alice


# what reaches the file


async def test_token_hashes_are_stored_as_given_and_raw_tokens_never(db_path: str) -> None:
    """The file holds exactly the hex digests the domain passed, and none of the raw tokens they came from."""
    raw_first, raw_next = "rt-first-7d0c8a1f5b2e4c9a", "rt-next-0b6e3f2a9c1d4e8b"
    async with opened(db_path) as store:  # closing the last connection checkpoints the WAL into the file
        owner, _, first = await login(store)
        mine = session(owner.id)
        await store.create_session(mine, token(mine.id, token_hash=digest(raw_first)))
        await store.rotate_refresh_token(
            digest(raw_first), token(mine.id, token_hash=digest(raw_next)), now=NOW + 1, client="c"
        )

    data = b"".join(p.read_bytes() for p in Path(db_path).parent.glob("gateway.db*"))
    assert digest(raw_first).encode() in data and digest(raw_next).encode() in data
    assert raw_first.encode() not in data and raw_next.encode() not in data
    assert first.token_hash.encode() in data


# retention


async def test_purge_keeps_dead_sessions_a_day_and_tokens_of_live_ones(sqlite_store: SQLiteStore) -> None:
    """SQLite purge keeps a dead session for a day after its death, and expired tokens of live sessions."""
    now = NOW + 10 * DAY
    owner = user()
    await sqlite_store.create_user(owner)
    recent = dict(last_used_at=now - HOUR, expires_at=now + DAY)
    revoked_long_ago = session(owner.id, revoked_at=now - 2 * DAY, revoke_reason="logout", **recent)
    unexpired = token(revoked_long_ago.id, issued_at=now - HOUR, expires_at=now + DAY)
    await sqlite_store.create_session(revoked_long_ago, unexpired)
    _, expired_lately, _ = await login(
        sqlite_store, owner, last_used_at=now - 2 * HOUR, expires_at=now - HOUR
    )
    _, idle_long_ago, _ = await login(sqlite_store, owner, last_used_at=now - 3 * DAY, expires_at=now + DAY)
    _, live, spent = await login(sqlite_store, owner, **recent)  # `spent` expired long ago: issued at NOW
    await sqlite_store.rotate_refresh_token(
        spent.token_hash,
        token(live.id, issued_at=now - HOUR, expires_at=now + DAY),
        now=now - HOUR,
        client="c",
    )
    await sqlite_store.throttle_hit("lately", now=now - 2 * HOUR, window=HOUR)

    await sqlite_store.purge(now=now)

    assert await sqlite_store.get_session(revoked_long_ago.id) is None
    assert await sqlite_store.get_refresh_token(unexpired.token_hash) is None  # went with its session
    assert await sqlite_store.get_session(idle_long_ago.id) is None
    assert await sqlite_store.get_session(expired_lately.id) == expired_lately
    assert await sqlite_store.get_refresh_token(spent.token_hash) is not None  # reuse still recognisable
    assert await sqlite_store.throttle_get("lately", now=now, window=3 * HOUR) is not None
