"""`gateway store migrate`: SQLite to PostgreSQL, keeping sessions valid; refusing to mix data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from gateway_processes import (
    PASSWORD,
    REFRESH_COOKIE,
    Children,
    free_port,
    fresh_database,
    gateway_toml,
    run_gateway_command,
    wait_ready,
)
from pg_server import scratch_database

from gateway.cli import main
from gateway.keyring import ensure_key_file
from gateway.migrate import Copied, MigrateError, migrate
from gateway.store import RefreshTokenRecord, SessionRecord, UserRecord
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore

NOW = float(int(time.time()))
HOUR = 3600.0


def user(uid: str, *, roles: tuple[str, ...] = ("user",), disabled: bool = False) -> UserRecord:
    return UserRecord(
        uid, f"{uid}@example.com", f"$argon2id$hash-of-{uid}", roles, disabled, 3, NOW - HOUR, NOW
    )


def session(sid: str, uid: str, *, last_used: float = NOW - 60) -> SessionRecord:
    return SessionRecord(sid, uid, NOW - HOUR, last_used, NOW + 10 * HOUR, 1800.0, "127.0.0.1 test")


def token(digest: str, sid: str, generation: int = 0, issued: float = NOW - 60) -> RefreshTokenRecord:
    return RefreshTokenRecord(digest * 64, sid, generation, issued, issued + 1800.0)


@pytest.fixture
async def source(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = await SQLiteStore.open(str(tmp_path / "gateway.db"))
    yield store
    await store.close()


@pytest.fixture
async def target(postgres_url: str) -> AsyncIterator[str]:
    """The URL of a new, empty database (no schema yet), dropped after the test."""
    async with scratch_database(postgres_url) as url:
        yield url


@pytest.fixture
def source_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


async def fill(store: SQLiteStore) -> None:
    """Two users; a live session rotated once; a revoked one; an idle-dead one; feed; throttle."""
    await store.create_user(user("alice", roles=("user", "admin")))
    await store.create_user(user("bob", disabled=True))
    await store.create_session(session("live", "alice"), token("a", "live"))
    assert await store.rotate_refresh_token("a" * 64, token("b", "live", 1), now=NOW - 30, client="c")
    await store.create_session(session("revoked", "alice"), token("c", "revoked"))
    await store.revoke_sessions(now=NOW - 10, reason="logout", feed_until=NOW + 300, session_ids=["revoked"])
    await store.create_session(session("idle", "alice", last_used=NOW - 2 * HOUR), token("d", "idle"))
    await store.add_user_revocation("bob", 3, now=NOW - 20, until=NOW + 300)
    await store.add_user_revocation("bob", 2, now=NOW - 900, until=NOW - 1)  # expired: not copied
    await store.throttle_hit("email:alice@example.com", now=NOW - 5, window=900)
    await store.throttle_hit("addr:127.0.0.1", now=NOW - 5, window=900)


@pytest.mark.postgres
async def test_copies_users_live_sessions_their_tokens_the_live_feed_and_throttle_rows(
    source: SQLiteStore, source_url: str, target: str
) -> None:
    """Everything a running gateway needs arrives unchanged; dead sessions and old feed entries stay."""
    await fill(source)

    copied = await migrate(source_url, target, now=NOW)

    assert copied == Copied(users=2, sessions=1, refresh_tokens=2, revocations=2, throttle=2)
    pg = await PostgresStore.open(target)
    try:
        for uid in ("alice", "bob"):
            assert await pg.get_user(uid) == await source.get_user(uid)
        assert await pg.get_session("live") == await source.get_session("live")
        assert await pg.get_session("revoked") is None and await pg.get_session("idle") is None
        for digest in ("a", "b"):
            assert await pg.get_refresh_token(digest * 64) == await source.get_refresh_token(digest * 64)
        assert await pg.revocations_since(0, now=NOW) == await source.revocations_since(0, now=NOW)
        for key in ("email:alice@example.com", "addr:127.0.0.1"):
            assert await pg.throttle_get(key, now=NOW, window=900) == await source.throttle_get(
                key, now=NOW, window=900
            )
        # The feed goes on above the copied seqs, so no instance can miss a new entry.
        highest = max(r.seq for r in await pg.revocations_since(0, now=NOW))
        await pg.add_user_revocation("alice", 4, now=NOW, until=NOW + 300)
        assert [r.seq for r in await pg.revocations_since(highest, now=NOW)] == [highest + 1]
        # And the copied token rotates there, once.
        assert await pg.rotate_refresh_token("b" * 64, token("e", "live", 2, NOW), now=NOW, client="pg")
        assert not await pg.rotate_refresh_token("b" * 64, token("f", "live", 2, NOW), now=NOW, client="pg")
    finally:
        await pg.close()


@pytest.mark.postgres
async def test_refuses_a_target_that_is_not_empty_unless_forced(
    source: SQLiteStore, source_url: str, target: str
) -> None:
    """A second run changes nothing and says why; --force replaces the target's rows, never merges."""
    await fill(source)
    await migrate(source_url, target, now=NOW)
    await source.create_user(user("carol"))

    with pytest.raises(MigrateError, match=r"not empty \(2 users, 1 sessions, 2 refresh_tokens.*--force"):
        await migrate(source_url, target, now=NOW)

    pg = await PostgresStore.open(target)
    try:
        assert await pg.get_user("carol") is None
        await pg.create_user(user("only-in-target"))
        assert await migrate(source_url, target, force=True, now=NOW) == Copied(3, 1, 2, 2, 2)
        assert {u.id for u in await pg.list_users()} == {"alice", "bob", "carol"}
    finally:
        await pg.close()


async def test_a_missing_source_is_refused_and_not_created(tmp_path: Path) -> None:
    """A typo in --from must not create an empty SQLite file and copy nothing."""
    with pytest.raises(MigrateError, match="no SQLite database"):
        await migrate(f"sqlite:///{tmp_path / 'typo.db'}", "postgresql://127.0.0.1:1/none")
    assert not (tmp_path / "typo.db").exists()


async def test_an_unreachable_target_fails_without_naming_its_password(
    source: SQLiteStore, source_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1 with the host and port in the message, never the URL's password."""
    port = free_port()  # nothing listens there
    argv = ["store", "migrate", "--from", source_url, "--to", f"postgresql://gw:secret@127.0.0.1:{port}/gw"]
    assert await asyncio.to_thread(main, argv) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "secret" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "gateway.db", "--to", "postgresql://h/db"], "--from: expected sqlite:///PATH"),
        (["--from", "sqlite:///g.db", "--to", "mysql://u:secret@h/db"], "--to: expected postgresql://"),
        (["--from", "sqlite:///g.db"], "required: --to"),
    ],
    ids=["from-not-sqlite", "to-not-postgres", "to-missing"],
)
def test_wrong_urls_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 with one line naming the option; a password in a URL is never echoed."""
    assert main(["store", "migrate", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "secret" not in err and len(err.strip().splitlines()) == 1


# ---- end to end: a browser signed in on SQLite keeps its session on PostgreSQL ------------------


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    started = Children(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.mark.postgres
@pytest.mark.slow
async def test_a_browser_signed_in_on_sqlite_keeps_its_session_after_the_move(
    tmp_path: Path, children: Children, postgres_url: str
) -> None:
    """Sign in on SQLite, stop, migrate, start on PostgreSQL with the same key file: the access
    cookie still passes, the refresh cookie still rotates, a logged-out session stays dead."""
    upstream = children.upstream()
    ensure_key_file(tmp_path / "keys" / "signing.key", "HS256")
    tokens = {"access_ttl": "5m", "reuse_grace": "1s"}
    db = tmp_path / "gateway.db"
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_toml(storage_url=f"sqlite:///{db}", upstream_url=upstream.url, tokens=tokens))
    old = children.gateway(config, "gateway-sqlite")
    wait_ready(old, old.url + "/auth/health")

    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http, aiohttp.ClientSession() as other:
        creds = {"email": "mover@example.com", "password": PASSWORD}
        async with http.post(old.url + "/auth/register", json=creds) as resp:
            assert resp.status == 201, await resp.text()
        async with http.post(old.url + "/auth/login", json=creds) as resp:
            assert resp.status == 200, await resp.text()
        async with http.post(old.url + "/auth/refresh") as resp:  # a rotation: two token rows
            assert resp.status == 200, await resp.text()
        async with http.get(old.url + "/api/whoami") as resp:
            before = await resp.json()
        # A second session, logged out: its access token must stay dead after the move.
        async with other.post(old.url + "/auth/login", json=creds) as resp:
            gone = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
        async with other.post(old.url + "/auth/logout", headers=gone) as resp:
            assert resp.status == 204
        old.stop()

        with fresh_database(postgres_url) as database:
            move = ["store", "migrate", "--from", f"sqlite:///{db}", "--to", database]
            done = run_gateway_command(move, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            assert "copied 1 users, 1 sessions, 2 refresh tokens, 1 revocations" in done.stdout
            again = run_gateway_command(move, cwd=tmp_path)
            assert again.returncode == 1 and "not empty" in again.stderr and "--force" in again.stderr

            pg_config = tmp_path / "gateway-pg.toml"
            pg_config.write_text(gateway_toml(storage_url=database, upstream_url=upstream.url, tokens=tokens))
            new = children.gateway(pg_config, "gateway-postgres")
            wait_ready(new, new.url + "/auth/health")

            async with http.get(new.url + "/api/whoami") as resp:  # the access cookie, as it was
                assert resp.status == 200 and await resp.json() == before
            refresh_before = [c.value for c in jar if c.key == REFRESH_COOKIE]
            async with http.post(new.url + "/auth/refresh") as resp:  # the old refresh cookie rotates
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["user"]["id"] == before["user_id"]
            assert [c.value for c in jar if c.key == REFRESH_COOKIE] != refresh_before
            async with http.get(new.url + "/api/whoami") as resp:
                assert resp.status == 200 and (await resp.json())["session_id"] == before["session_id"]
            async with other.get(new.url + "/api/whoami", headers=gone) as resp:
                assert resp.status == 401
            async with other.post(new.url + "/auth/login", json=creds) as resp:  # the password moved too
                assert resp.status == 200, await resp.text()
            new.stop()  # before the database is dropped
