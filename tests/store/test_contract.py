"""The storage contract: every backend behind `gateway.store.Store` must pass this suite.

Modelled on oauth2-proxy's RunSessionStoreTests: one suite, run against each backend by the
parametrized `store` fixture (tests/store/conftest.py). Only behaviour the protocol promises is
asserted here; a backend's own choices are tested in its own module.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from store_builders import DAY, HOUR, NOW, digest, login, session, token, user

from gateway.errors import EmailTaken, StoreError
from gateway.store import Revocation, Store, ThrottleState

WINDOW = 900.0

# users


async def test_created_user_reads_back_by_id_email_and_list(store: Store) -> None:
    """A created user comes back field for field from get_user, get_user_by_email and list_users."""
    alice = user(roles=("admin", "user"), disabled=True, token_version=3, updated_at=NOW + 1)

    await store.create_user(alice)

    assert await store.get_user(alice.id) == alice
    assert await store.get_user_by_email(alice.email) == alice
    assert await store.list_users() == [alice]


async def test_unknown_user_is_none(store: Store) -> None:
    """Looking up a user that does not exist returns None, by id and by email."""
    await store.create_user(user(email="alice@example.com"))

    assert await store.get_user("no-such-id") is None
    assert await store.get_user_by_email("bob@example.com") is None


async def test_list_users_returns_every_user(store: Store) -> None:
    """list_users returns each created user once."""
    users = [user(created_at=NOW + i) for i in range(3)]
    for u in users:
        await store.create_user(u)

    assert sorted(await store.list_users(), key=lambda u: u.id) == sorted(users, key=lambda u: u.id)


async def test_duplicate_email_raises_email_taken_and_keeps_the_first(store: Store) -> None:
    """A second user with the same (already normalised) email is refused with EmailTaken."""
    first = user(email="alice@example.com")
    await store.create_user(first)

    with pytest.raises(EmailTaken):
        await store.create_user(user(email="alice@example.com"))

    assert await store.get_user_by_email("alice@example.com") == first
    assert await store.list_users() == [first]


async def test_concurrent_registrations_of_one_email_have_one_winner(store: Store) -> None:
    """Ten concurrent creates of one email: one succeeds, nine get EmailTaken."""
    results = await asyncio.gather(
        *(store.create_user(user(email="race@example.com")) for _ in range(10)), return_exceptions=True
    )

    assert results.count(None) == 1
    assert sum(isinstance(r, EmailTaken) for r in results) == 9


@pytest.mark.parametrize(
    ("initial", "update", "expected"),
    [
        ({}, {"password_hash": "$argon2id$new"}, {"password_hash": "$argon2id$new"}),
        ({}, {"roles": ["admin", "user"]}, {"roles": ("admin", "user")}),
        ({"roles": ("admin",)}, {"roles": []}, {"roles": ()}),
        ({}, {"disabled": True}, {"disabled": True}),
        ({"disabled": True}, {"disabled": False}, {"disabled": False}),
        ({"token_version": 4}, {"bump_token_version": True}, {"token_version": 5}),
    ],
    ids=["password", "roles", "roles-emptied", "disable", "enable", "bump-version"],
)
async def test_update_user_changes_only_the_given_fields(
    store: Store, initial: dict[str, Any], update: dict[str, Any], expected: dict[str, Any]
) -> None:
    """update_user applies exactly the given changes, stamps updated_at, and returns the stored record."""
    original = user(**initial)
    await store.create_user(original)

    updated = await store.update_user(original.id, now=NOW + 60, **update)

    want = replace(original, updated_at=NOW + 60, **expected)
    assert updated == want
    assert await store.get_user(original.id) == want


async def test_update_unknown_user_returns_none(store: Store) -> None:
    """Updating a user that does not exist returns None and creates nothing."""
    assert await store.update_user("no-such-id", now=NOW, disabled=True) is None
    assert await store.list_users() == []


async def test_bump_token_version_counts_every_bump(store: Store) -> None:
    """Each bump adds one to token_version, together with other changes in the same call."""
    alice = user()
    await store.create_user(alice)

    await store.update_user(alice.id, now=NOW + 1, bump_token_version=True)
    updated = await store.update_user(alice.id, now=NOW + 2, bump_token_version=True, roles=["admin"])

    assert updated is not None and (updated.token_version, updated.roles) == (2, ("admin",))


async def test_expected_password_hash_guards_the_update(store: Store) -> None:
    """With expected_password_hash, the update happens only while the stored hash still equals it."""
    alice = user(password_hash="$old")
    await store.create_user(alice)

    stale = await store.update_user(
        alice.id, now=NOW + 1, password_hash="$rehash", expected_password_hash="$other"
    )
    assert stale is None
    assert await store.get_user(alice.id) == alice

    fresh = await store.update_user(
        alice.id, now=NOW + 2, password_hash="$rehash", expected_password_hash="$old"
    )
    assert fresh is not None and fresh.password_hash == "$rehash"


# sessions


async def test_created_session_and_first_token_read_back(store: Store) -> None:
    """create_session stores the session and its first refresh token as given."""
    owner, new_session, first = await login(store, client="198.51.100.1 curl")

    assert await store.get_session(new_session.id) == new_session
    assert await store.get_refresh_token(first.token_hash) == first
    assert new_session.user_id == owner.id


async def test_unknown_session_and_token_are_none(store: Store) -> None:
    """Looking up a session or a token hash that does not exist returns None."""
    await login(store)

    assert await store.get_session("no-such-session") is None
    assert await store.get_refresh_token(digest("never issued")) is None


@pytest.mark.parametrize(
    ("changes", "live"),
    [
        ({}, True),
        ({"revoked_at": NOW, "revoke_reason": "logout"}, False),
        ({"expires_at": NOW + HOUR}, False),
        ({"expires_at": NOW + HOUR + 1}, True),
        ({"idle_ttl": HOUR}, False),
        ({"idle_ttl": HOUR, "last_used_at": NOW + 1}, True),
    ],
    ids=["live", "revoked", "expired", "expires-next-second", "idle", "used-within-idle"],
)
async def test_list_sessions_shows_only_live_sessions(
    store: Store, changes: dict[str, Any], live: bool
) -> None:
    """A session is listed only while not revoked, before expires_at and within idle_ttl of its last use."""
    owner, listed, _ = await login(store, **changes)

    now = NOW + HOUR
    assert (await store.list_sessions(now=now) == [listed]) is live
    assert (await store.list_sessions(now=now, user_id=owner.id) == [listed]) is live


async def test_list_sessions_newest_first_and_by_user(store: Store) -> None:
    """list_sessions orders newest first and, given user_id, lists only that user's sessions."""
    alice, oldest, _ = await login(store, created_at=NOW)
    _, middle, _ = await login(store, alice, created_at=NOW + 10)
    _, newest, _ = await login(store, alice, created_at=NOW + 20)
    _, bobs, _ = await login(store, created_at=NOW + 15)

    assert await store.list_sessions(now=NOW + 30, user_id=alice.id) == [newest, middle, oldest]
    assert await store.list_sessions(now=NOW + 30) == [newest, bobs, middle, oldest]


# refresh-token rotation


async def test_rotation_marks_the_token_stores_the_successor_and_touches_the_session(store: Store) -> None:
    """A first rotation returns True, links the old token to its successor and records the session's use."""
    _, new_session, first = await login(store)
    successor = token(new_session.id, generation=1, issued_at=NOW + HOUR, expires_at=NOW + HOUR + DAY)

    assert await store.rotate_refresh_token(first.token_hash, successor, now=NOW + HOUR, client="new client")

    assert await store.get_refresh_token(first.token_hash) == replace(
        first, rotated_at=NOW + HOUR, successor_hash=successor.token_hash
    )
    assert await store.get_refresh_token(successor.token_hash) == successor
    assert await store.get_session(new_session.id) == replace(
        new_session, last_used_at=NOW + HOUR, client="new client"
    )


async def test_second_rotation_of_a_token_fails_and_writes_nothing(store: Store) -> None:
    """Rotating an already rotated token returns False and leaves the first rotation's results alone."""
    _, new_session, first = await login(store)
    winner = token(new_session.id, generation=1)
    loser = token(new_session.id, generation=1)
    await store.rotate_refresh_token(first.token_hash, winner, now=NOW + 1, client="first")

    assert not await store.rotate_refresh_token(first.token_hash, loser, now=NOW + 2, client="second")

    assert await store.get_refresh_token(loser.token_hash) is None
    rotated = await store.get_refresh_token(first.token_hash)
    assert rotated is not None and (rotated.rotated_at, rotated.successor_hash) == (
        NOW + 1,
        winner.token_hash,
    )
    touched = await store.get_session(new_session.id)
    assert touched is not None and (touched.last_used_at, touched.client) == (NOW + 1, "first")


async def test_rotating_an_unknown_token_fails_and_writes_nothing(store: Store) -> None:
    """Rotating a hash that was never stored returns False and does not store the successor."""
    _, new_session, _ = await login(store)
    successor = token(new_session.id, generation=1)

    assert not await store.rotate_refresh_token(digest("never issued"), successor, now=NOW + 1, client="x")

    assert await store.get_refresh_token(successor.token_hash) is None
    assert await store.get_session(new_session.id) == new_session


async def test_successor_can_be_rotated_in_turn(store: Store) -> None:
    """The token a rotation stored is itself unrotated, so the chain continues."""
    _, new_session, current = await login(store)
    for generation in range(1, 5):
        successor = token(new_session.id, generation=generation)
        assert await store.rotate_refresh_token(
            current.token_hash, successor, now=NOW + generation, client="c"
        )
        current = successor

    head = await store.get_refresh_token(current.token_hash)
    assert head is not None and head.rotated_at is None and head.generation == 4


async def test_fifty_concurrent_rotations_of_one_token_have_one_winner(store: Store) -> None:
    """50 concurrent rotations of one token: exactly one returns True and only its successor is stored."""
    _, new_session, first = await login(store)
    successors = [token(new_session.id, generation=1) for _ in range(50)]

    results = await asyncio.gather(
        *(
            store.rotate_refresh_token(first.token_hash, s, now=NOW + 1, client=f"client {i}")
            for i, s in enumerate(successors)
        )
    )

    assert results.count(True) == 1
    winner = results.index(True)
    stored = [await store.get_refresh_token(s.token_hash) for s in successors]
    assert [s is not None for s in stored].count(True) == 1 and stored[winner] is not None
    rotated = await store.get_refresh_token(first.token_hash)
    assert rotated is not None and rotated.successor_hash == successors[winner].token_hash
    touched = await store.get_session(new_session.id)
    assert touched is not None and touched.client == f"client {winner}"


# failed writes leave nothing behind
# The contract names no error class for a duplicate primary key (a colliding 256-bit token hash is
# a bug, not a case to handle); it promises only that such a failure writes nothing at all.


async def test_create_session_whose_token_is_refused_leaves_no_session(store: Store) -> None:
    """create_session whose token insert violates the primary key stores neither session nor token."""
    owner, _, first = await login(store)
    doomed = session(owner.id)

    with pytest.raises(Exception):  # noqa: B017 - see the note above
        await store.create_session(doomed, token(doomed.id, token_hash=first.token_hash))

    assert await store.get_session(doomed.id) is None
    assert [s.id for s in await store.list_sessions(now=NOW)] == [first.session_id]


async def test_create_session_whose_session_is_refused_leaves_no_token(store: Store) -> None:
    """create_session with an existing session id stores no token."""
    _, existing, _ = await login(store)
    orphan = token(existing.id)

    with pytest.raises(Exception):  # noqa: B017 - see the note above
        await store.create_session(existing, orphan)

    assert await store.get_refresh_token(orphan.token_hash) is None


async def test_rotation_whose_successor_is_refused_leaves_the_token_unrotated(store: Store) -> None:
    """A rotation whose successor insert fails undoes the claim: the token stays unrotated and usable."""
    _, new_session, first = await login(store)
    _, _, other = await login(store)
    clash = token(new_session.id, generation=1, token_hash=other.token_hash)

    with pytest.raises(Exception):  # noqa: B017 - see the note above
        await store.rotate_refresh_token(first.token_hash, clash, now=NOW + 1, client="x")

    assert await store.get_refresh_token(first.token_hash) == first
    assert await store.get_refresh_token(other.token_hash) == other
    assert await store.get_session(new_session.id) == new_session
    assert await store.rotate_refresh_token(first.token_hash, token(new_session.id), now=NOW + 2, client="x")


async def test_failing_transactions_do_not_undo_concurrent_writes(store: Store) -> None:
    """Writes running alongside failing transactions all persist (no shared transaction is rolled back)."""
    owner, _, first = await login(store)
    users = [user() for _ in range(20)]

    async def doomed() -> None:
        bad = session(owner.id)
        await store.create_session(bad, token(bad.id, token_hash=first.token_hash))

    results = await asyncio.gather(
        *(doomed() for _ in range(20)), *(store.create_user(u) for u in users), return_exceptions=True
    )

    assert results[20:] == [None] * 20
    assert all(isinstance(r, Exception) for r in results[:20])
    assert all([await store.get_user(u.id) == u for u in users])


# revocation


async def test_revoke_sessions_by_id_returns_only_newly_revoked_and_feeds_them(store: Store) -> None:
    """Revoking by id marks the sessions, appends one feed entry each, and skips already revoked ones."""
    owner, s1, _ = await login(store)
    _, s2, _ = await login(store, owner)
    _, s3, _ = await login(store, owner)

    first = await store.revoke_sessions(
        now=NOW + 1, reason="admin", feed_until=NOW + 301, session_ids=[s1.id, s2.id]
    )
    second = await store.revoke_sessions(
        now=NOW + 2, reason="logout", feed_until=NOW + 302, session_ids=[s1.id, s3.id, "no-such-session"]
    )

    assert sorted(first) == sorted([s1.id, s2.id])
    assert second == [s3.id]
    assert await store.get_session(s1.id) == replace(s1, revoked_at=NOW + 1, revoke_reason="admin")
    assert await store.get_session(s3.id) == replace(s3, revoked_at=NOW + 2, revoke_reason="logout")
    feed = await store.revocations_since(0, now=NOW)
    assert sorted((e.kind, e.subject, e.min_version, e.created_at, e.until) for e in feed) == sorted(
        [
            ("session", s1.id, 0, NOW + 1, NOW + 301),
            ("session", s2.id, 0, NOW + 1, NOW + 301),
            ("session", s3.id, 0, NOW + 2, NOW + 302),
        ]
    )


async def test_revoke_sessions_by_user_takes_only_that_users_live_sessions(store: Store) -> None:
    """Revoking by user revokes that user's live sessions only, and feeds exactly those."""
    alice, a1, _ = await login(store)
    _, a2, _ = await login(store, alice)
    _, already, _ = await login(store, alice, revoked_at=NOW, revoke_reason="logout")
    _, expired, _ = await login(store, alice, expires_at=NOW + 5)
    _, bobs, _ = await login(store)

    revoked = await store.revoke_sessions(
        now=NOW + 10, reason="logout_all", feed_until=NOW + 310, user_id=alice.id
    )

    assert sorted(revoked) == sorted([a1.id, a2.id])
    assert await store.get_session(already.id) == already
    assert await store.get_session(bobs.id) == bobs
    assert await store.list_sessions(now=NOW + 10, user_id=alice.id) == []
    assert sorted(e.subject for e in await store.revocations_since(0, now=NOW + 10)) == sorted([a1.id, a2.id])
    assert await store.get_session(expired.id) == expired


async def test_revoke_sessions_by_ids_and_user_together(store: Store) -> None:
    """Ids and user_id combine in one call, each session revoked (and fed) once."""
    alice, a1, _ = await login(store)
    _, b1, _ = await login(store)

    revoked = await store.revoke_sessions(
        now=NOW + 1, reason="admin", feed_until=NOW + 301, session_ids=[a1.id, b1.id], user_id=alice.id
    )

    assert sorted(revoked) == sorted([a1.id, b1.id])
    assert len(await store.revocations_since(0, now=NOW + 1)) == 2


async def test_revoke_sessions_naming_nothing_revokes_nothing(store: Store) -> None:
    """With neither ids nor a user, nothing is revoked and nothing is fed."""
    _, live, _ = await login(store)

    assert await store.revoke_sessions(now=NOW + 1, reason="admin", feed_until=NOW + 301) == []

    assert await store.get_session(live.id) == live
    assert await store.revocations_since(0, now=NOW) == []


async def test_add_user_revocation_appends_a_user_entry(store: Store) -> None:
    """add_user_revocation appends a "user" entry carrying the minimum token version."""
    await store.add_user_revocation("user-1", 7, now=NOW, until=NOW + 300)

    [entry] = await store.revocations_since(0, now=NOW)
    assert entry == Revocation(entry.seq, "user", "user-1", 7, NOW, NOW + 300)


async def test_revocations_since_returns_later_unexpired_entries_in_seq_order(store: Store) -> None:
    """The feed returns entries after `seq` whose `until` is still ahead, in increasing seq order."""
    for subject, until in [("a", NOW + 100), ("b", NOW + 10), ("c", NOW + 200), ("d", NOW + 50)]:
        await store.add_user_revocation(subject, 1, now=NOW, until=until)

    everything = await store.revocations_since(0, now=NOW)
    current = await store.revocations_since(0, now=NOW + 10)
    after_a = await store.revocations_since(everything[0].seq, now=NOW + 10)

    assert [e.subject for e in everything] == ["a", "b", "c", "d"]
    assert [e.seq for e in everything] == sorted({e.seq for e in everything})
    assert [e.subject for e in current] == ["a", "c", "d"]
    assert [e.subject for e in after_a] == ["c", "d"]
    assert await store.revocations_since(everything[-1].seq, now=NOW) == []


async def test_feed_seq_keeps_growing_after_purge_empties_the_feed(store: Store) -> None:
    """A seq is never reused: after purge removed every entry, the next one still has a higher seq."""
    await store.add_user_revocation("a", 1, now=NOW, until=NOW + 10)
    [old] = await store.revocations_since(0, now=NOW)
    await store.purge(now=NOW + 20)

    await store.add_user_revocation("b", 1, now=NOW + 20, until=NOW + 30)

    [new] = await store.revocations_since(0, now=NOW + 20)
    assert new.subject == "b" and new.seq > old.seq


# login throttling


async def test_throttle_hit_counts_failures_in_the_window(store: Store) -> None:
    """Each failure inside the window adds one; first_at stays, last_at moves; throttle_get agrees."""
    states = [await store.throttle_hit("email:a", now=NOW + t, window=WINDOW) for t in (0, 10, 20)]

    assert states == [
        ThrottleState(1, NOW, NOW),
        ThrottleState(2, NOW, NOW + 10),
        ThrottleState(3, NOW, NOW + 20),
    ]
    assert await store.throttle_get("email:a", now=NOW + 30, window=WINDOW) == ThrottleState(3, NOW, NOW + 20)


async def test_throttle_window_restarts_once_older_than_window(store: Store) -> None:
    """A failure `window` seconds after the first still counts; one later than that starts a new window."""
    await store.throttle_hit("k", now=NOW, window=WINDOW)

    edge = await store.throttle_hit("k", now=NOW + WINDOW, window=WINDOW)
    fresh = await store.throttle_hit("k", now=NOW + WINDOW + 1, window=WINDOW)

    assert edge == ThrottleState(2, NOW, NOW + WINDOW)
    assert fresh == ThrottleState(1, NOW + WINDOW + 1, NOW + WINDOW + 1)


async def test_throttle_get_is_none_outside_the_window(store: Store) -> None:
    """throttle_get returns None for an unknown key and once the window has passed."""
    await store.throttle_hit("k", now=NOW, window=WINDOW)

    assert await store.throttle_get("k", now=NOW + WINDOW, window=WINDOW) == ThrottleState(1, NOW, NOW)
    assert await store.throttle_get("k", now=NOW + WINDOW + 1, window=WINDOW) is None
    assert await store.throttle_get("other", now=NOW, window=WINDOW) is None


async def test_throttle_keys_are_independent_and_clear_forgets_one(store: Store) -> None:
    """Failures count per key, and throttle_clear resets only its key."""
    for _ in range(3):
        await store.throttle_hit("email:a", now=NOW, window=WINDOW)
    await store.throttle_hit("ip:b", now=NOW, window=WINDOW)

    await store.throttle_clear("email:a")

    assert await store.throttle_get("email:a", now=NOW, window=WINDOW) is None
    assert await store.throttle_get("ip:b", now=NOW, window=WINDOW) == ThrottleState(1, NOW, NOW)
    assert await store.throttle_hit("email:a", now=NOW + 1, window=WINDOW) == ThrottleState(
        1, NOW + 1, NOW + 1
    )


async def test_concurrent_throttle_hits_are_all_counted(store: Store) -> None:
    """20 concurrent failures on one key are all counted, each seeing a distinct count."""
    states = await asyncio.gather(*(store.throttle_hit("k", now=NOW, window=WINDOW) for _ in range(20)))

    assert sorted(s.failures for s in states) == list(range(1, 21))
    assert await store.throttle_get("k", now=NOW, window=WINDOW) == ThrottleState(20, NOW, NOW)


# purge


async def test_purge_removes_only_dead_rows(store: Store) -> None:
    """purge drops long-dead sessions, expired tokens of dead sessions, past feed entries and stale
    throttle rows, and keeps everything that can still matter."""
    now = NOW + 10 * DAY
    owner = user()
    await store.create_user(owner)
    _, live, live_token = await login(
        store, owner, created_at=now - HOUR, last_used_at=now - HOUR, expires_at=now + DAY
    )
    _, long_expired, long_expired_token = await login(store, owner, expires_at=now - 2 * DAY)
    _, revoked, revoked_token = await login(
        store,
        owner,
        revoked_at=now - HOUR,
        revoke_reason="logout",
        last_used_at=now - HOUR,
        expires_at=now + DAY,
    )
    fresh_token = token(live.id, issued_at=now - HOUR, expires_at=now + DAY)
    await store.rotate_refresh_token(live_token.token_hash, fresh_token, now=now - HOUR, client="c")
    await store.add_user_revocation("gone", 1, now=now - 400, until=now - 100)
    await store.add_user_revocation("kept", 1, now=now - 100, until=now + 200)
    await store.throttle_hit("stale", now=now - 2 * DAY, window=3 * DAY)
    await store.throttle_hit("recent", now=now - 60, window=WINDOW)

    await store.purge(now=now)

    assert await store.get_session(live.id) is not None
    assert await store.get_refresh_token(fresh_token.token_hash) is not None
    assert await store.get_session(long_expired.id) is None
    assert await store.get_refresh_token(long_expired_token.token_hash) is None
    assert await store.get_session(revoked.id) is not None  # revoked an hour ago: still shown to admins
    assert await store.get_refresh_token(revoked_token.token_hash) is None  # expired, session dead
    assert [e.subject for e in await store.revocations_since(0, now=now - 200)] == ["kept"]
    assert await store.throttle_get("stale", now=now, window=3 * DAY) is None
    assert await store.throttle_get("recent", now=now, window=WINDOW) is not None


# health


async def test_ping_answers_on_an_open_store(store: Store) -> None:
    """ping returns quietly while the store works."""
    await store.ping()


async def test_closed_store_raises_store_error(store: Store) -> None:
    """After close, ping and every other call raise StoreError, and closing again is harmless."""
    await store.close()

    with pytest.raises(StoreError):
        await store.ping()
    with pytest.raises(StoreError):
        await store.get_user("anyone")
    await store.close()
