"""PostgreSQL-only behaviour: races across one pool and across instances (hosts), the feed's seq
order, migrations at start, outages. The shared behaviour is in test_contract.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import asyncpg
import pytest
from pg_server import PostgresCluster, scratch_database
from store_builders import NOW, login, token, user

from gateway.errors import EmailTaken, StoreError
from gateway.store import open_store
from gateway.store.postgres import MIGRATIONS, PostgresStore

pytestmark = pytest.mark.postgres


@pytest.fixture
async def second_store(postgres_url: str, pg_store: PostgresStore) -> AsyncIterator[PostgresStore]:
    """Another instance on the same (emptied) database, as a second gateway host would have."""
    store = await PostgresStore.open(postgres_url)
    yield store
    await store.close()


# single-use rotation


async def test_fifty_concurrent_rotations_over_the_pool_have_one_winner(pg_store: PostgresStore) -> None:
    """50 tasks rotating one token over the pool's 10 connections: one rotation, one successor row."""
    _, new_session, first = await login(pg_store)
    successors = [token(new_session.id, generation=1) for _ in range(50)]

    results = await asyncio.gather(
        *(
            pg_store.rotate_refresh_token(first.token_hash, succ, now=NOW + 1, client=f"c{i}")
            for i, succ in enumerate(successors)
        )
    )

    assert results.count(True) == 1
    winner = results.index(True)
    stored = await pg_store.get_refresh_token(first.token_hash)
    assert stored is not None
    assert (stored.rotated_at, stored.successor_hash) == (NOW + 1, successors[winner].token_hash)
    assert [await pg_store.get_refresh_token(s.token_hash) is not None for s in successors].count(True) == 1
    touched = await pg_store.get_session(new_session.id)
    assert touched is not None and (touched.last_used_at, touched.client) == (NOW + 1, f"c{winner}")


async def test_two_instances_racing_one_token_have_one_winner(
    pg_store: PostgresStore, second_store: PostgresStore
) -> None:
    """Two hosts, 25 rotations of the same token each: exactly one in total wins."""
    _, new_session, first = await login(pg_store)
    calls = [
        store.rotate_refresh_token(
            first.token_hash, token(new_session.id, generation=1), now=NOW + 1, client="c"
        )
        for store in (pg_store, second_store)
        for _ in range(25)
    ]

    results = await asyncio.gather(*calls)

    assert results.count(True) == 1


async def test_rotation_chain_alternating_instances(
    pg_store: PostgresStore, second_store: PostgresStore
) -> None:
    """A token rotated on one host is rotated next on the other; the spent one stays spent on both."""
    _, new_session, current = await login(pg_store)
    hosts = (pg_store, second_store)
    for generation in range(1, 7):
        here, there = hosts[generation % 2], hosts[(generation + 1) % 2]
        successor = token(new_session.id, generation=generation)
        assert await here.rotate_refresh_token(
            current.token_hash, successor, now=NOW + generation, client="c"
        )
        late = token(new_session.id, generation=generation)
        assert not await there.rotate_refresh_token(
            current.token_hash, late, now=NOW + generation, client="c"
        )
        current = successor


async def test_rotation_refuses_a_successor_of_another_session(pg_store: PostgresStore) -> None:
    """A successor naming another session is a caller bug: ValueError, and the token stays unrotated."""
    _, _, first = await login(pg_store)
    _, elsewhere, _ = await login(pg_store)
    stray = token(elsewhere.id)

    with pytest.raises(ValueError, match="session"):
        await pg_store.rotate_refresh_token(first.token_hash, stray, now=NOW + 1, client="c")

    assert await pg_store.get_refresh_token(first.token_hash) == first
    assert await pg_store.get_refresh_token(stray.token_hash) is None


async def test_cancelled_rotations_are_all_or_nothing(pg_store: PostgresStore) -> None:
    """Rotations cancelled at any point leave no half rotation, and the pool keeps working."""
    for delay in [0.0] * 5 + [i / 4000 for i in range(1, 30)]:
        _, new_session, first = await login(pg_store)
        successor = token(new_session.id, generation=1)
        task = asyncio.create_task(
            pg_store.rotate_refresh_token(first.token_hash, successor, now=NOW + 1, client="c")
        )
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

        old = await pg_store.get_refresh_token(first.token_hash)
        new = await pg_store.get_refresh_token(successor.token_hash)
        assert old is not None and (old.rotated_at is None) == (new is None), f"half rotation after {delay}s"


# shared state across hosts


async def test_email_taken_when_two_instances_register_the_same_email(
    pg_store: PostgresStore, second_store: PostgresStore
) -> None:
    """Concurrent registrations of one email on two hosts: one succeeds, the other gets EmailTaken."""
    results = await asyncio.gather(
        pg_store.create_user(user(email="bob@example.com")),
        second_store.create_user(user(email="bob@example.com")),
        return_exceptions=True,
    )

    assert results.count(None) == 1
    assert sum(isinstance(r, EmailTaken) for r in results) == 1


async def test_roles_must_be_a_sequence_of_names(pg_store: PostgresStore) -> None:
    """A bare string as roles is refused rather than stored as one role per character."""
    alice = user()
    await pg_store.create_user(alice)

    with pytest.raises(TypeError):
        await pg_store.update_user(alice.id, now=NOW, roles="admin")

    assert await pg_store.get_user(alice.id) == alice


async def test_throttle_hits_from_two_instances_are_all_counted(
    pg_store: PostgresStore, second_store: PostgresStore
) -> None:
    """60 concurrent failures on one key from two hosts: every one counted, each count returned once."""
    hits = [
        store.throttle_hit("email:x", now=NOW, window=900)
        for store in (pg_store, second_store)
        for _ in range(30)
    ]

    states = await asyncio.gather(*hits)

    assert sorted(s.failures for s in states) == list(range(1, 61))
    state = await second_store.throttle_get("email:x", now=NOW, window=900)
    assert state is not None and state.failures == 60


async def test_revocation_feed_poller_never_skips_a_seq(
    pg_store: PostgresStore, second_store: PostgresStore
) -> None:
    """Feed writers racing on two hosts while a poller follows `seq` the way RevocationList does
    (remembering the highest seen): it sees every entry, because seqs become visible in order."""
    seen: list[int] = []
    done = asyncio.Event()

    async def poll() -> None:
        last = 0
        while True:
            finished = done.is_set()  # read before polling, so the last poll sees every commit
            for entry in await pg_store.revocations_since(last, now=NOW):
                seen.append(entry.seq)
                last = max(last, entry.seq)
            if finished:
                return

    async def write(store: PostgresStore, n: int) -> None:
        for i in range(n):
            if i % 2:
                await store.add_user_revocation(f"user-{i}", i, now=NOW, until=NOW + 60)
            else:
                owner, _, _ = await login(store)
                await store.revoke_sessions(now=NOW, reason="test", feed_until=NOW + 60, user_id=owner.id)

    poller = asyncio.create_task(poll())
    await asyncio.gather(*(write(store, 16) for store in (pg_store, second_store) for _ in range(4)))
    done.set()
    await poller

    assert len(seen) == 2 * 4 * 16 and len(set(seen)) == len(seen)


# migrations


async def test_concurrent_open_on_an_empty_database_migrates_once(postgres_url: str) -> None:
    """Three instances starting together on a new database: no error, each migration applied once."""
    async with scratch_database(postgres_url) as url:
        stores = await asyncio.gather(*(PostgresStore.open(url) for _ in range(3)))
        try:
            alice = user()
            await stores[0].create_user(alice)
            assert await stores[2].get_user_by_email(alice.email) == alice
        finally:
            await asyncio.gather(*(store.close() for store in stores))
        con = await asyncpg.connect(url)
        try:
            versions = [
                r["version"] for r in await con.fetch("SELECT version FROM schema_version ORDER BY 1")
            ]
        finally:
            await con.close()
    assert versions == list(range(1, len(MIGRATIONS) + 1))


async def test_open_refuses_a_schema_newer_than_the_code(postgres_url: str) -> None:
    """A database migrated by a newer gateway is left alone by an older one, with a message saying so."""
    async with scratch_database(postgres_url) as url:
        store = await open_store(url)  # the URL scheme picks this backend
        assert isinstance(store, PostgresStore)
        await store.close()
        con = await asyncpg.connect(url)
        try:
            await con.execute("INSERT INTO schema_version (version) VALUES ($1)", len(MIGRATIONS) + 1)
        finally:
            await con.close()

        with pytest.raises(StoreError, match="newer"):
            await PostgresStore.open(url)


# outages


async def test_open_raises_store_error_when_nothing_listens() -> None:
    """An unreachable server is a StoreError at start that names where, never the password."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        port = sock.getsockname()[1]
        with pytest.raises(StoreError) as caught:
            await PostgresStore.open(f"postgresql://gw:s3cret-pw@127.0.0.1:{port}/gateway")
    assert "s3cret-pw" not in str(caught.value)


async def test_ping_raises_store_error_while_the_server_is_stopped(
    postgres_cluster: PostgresCluster | None, pg_store: PostgresStore
) -> None:
    """Server down: ping (and any call) raises StoreError; server back: the pool reconnects by itself."""
    if postgres_cluster is None:
        pytest.skip("the server comes from GATEWAY_TEST_POSTGRES_URL and cannot be stopped here")
    await pg_store.ping()
    await asyncio.to_thread(postgres_cluster.stop)
    try:
        with pytest.raises(StoreError):
            await pg_store.ping()
        with pytest.raises(StoreError):
            await pg_store.get_user("nobody")
    finally:
        await asyncio.to_thread(postgres_cluster.start)

    await pg_store.ping()
    assert await pg_store.get_user("nobody") is None


async def test_statement_cache_size_in_the_url_is_honoured(postgres_url: str) -> None:
    """`?statement_cache_size=0` (PgBouncer in transaction mode) is given to asyncpg, not sent to the
    server as a setting, which PostgreSQL would refuse."""
    store = await PostgresStore.open(postgres_url + "?statement_cache_size=0")
    try:
        await store.ping()
        assert await store.get_user("nobody") is None
    finally:
        await store.close()


async def test_bad_statement_cache_size_is_a_store_error(postgres_url: str) -> None:
    """A non-integer statement_cache_size is a clear StoreError, not a traceback from the driver."""
    with pytest.raises(StoreError, match="statement_cache_size"):
        await PostgresStore.open(postgres_url + "?statement_cache_size=lots")
