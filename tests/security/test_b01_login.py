"""SECURITY.md B.1 — login, registration, passwords (items 1–22).

Each test names its checklist item. "No KDF" means the argon2 counter did not move, "no write"
means no row of the SQLite file changed.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import sqlite3
import time
import unicodedata
from typing import Any

import argon2
import pytest

from gateway.config import PasswordsConfig
from gateway.keys import ACCOUNTS
from gateway.passwords import password_problem
from tests.conftest import OTHER_PASSWORD, PASSWORD
from tests.security.conftest import HarnessFactory
from tests.security.helpers import API, NAV, SAME_ORIGIN, Harness, cookie_header, snapshot_response

INVALID_CREDENTIALS = {"error": "invalid_credentials", "message": "the email or password is incorrect"}
WRONG = "definitely not the password"


async def post_login(h: Harness, email: str, password: str, **headers: str) -> Any:
    return await h.client.post("/auth/login", json={"email": email, "password": password}, headers=headers)


async def test_b1_001_unknown_email_and_wrong_password_are_indistinguishable(h: Harness) -> None:
    """Unknown email and wrong password: same status, headers and body, and both run argon2
    (a dummy hash for the unknown email), so neither the answer nor the timing enumerates."""
    await h.register()
    answers = []
    for email, password in (("nobody@example.com", PASSWORD), ("alice@example.com", WRONG)):
        before = h.kdf_runs
        with h.unchanged(kdf=False, except_tables={"throttle"}):
            resp = await post_login(h, email, password)
        assert h.kdf_runs == before + 1  # no "quick exit" before hashing
        answers.append(await snapshot_response(resp))
    assert answers[0] == answers[1]
    status, headers, body = answers[0]
    assert status == 401
    assert "Set-Cookie" not in headers
    assert body == b'{"error": "invalid_credentials", "message": "the email or password is incorrect"}'


async def test_b1_002_disabled_or_throttled_account_looks_like_any_other(
    make_harness: HarnessFactory,
) -> None:
    """A disabled account with the right password gets the wrong-password answer; a throttled
    real account and a throttled unknown email get identical 429s, with no argon2 run and no
    write, and the right password does not sign in during the ban."""
    h = await make_harness(login={"max_failures": 2})
    await h.register("disabled@example.com")
    await h.app[ACCOUNTS].set_disabled("disabled@example.com", True)
    disabled = await post_login(h, "disabled@example.com", PASSWORD)
    wrong = await post_login(h, "disabled@example.com", WRONG)
    assert (await snapshot_response(disabled)) == (await snapshot_response(wrong))

    await h.register("real@example.com")
    for email in ("real@example.com", "ghost@example.com"):
        for _ in range(2):
            assert (await post_login(h, email, WRONG)).status == 401
    throttled = []
    for email, password in (("real@example.com", PASSWORD), ("ghost@example.com", PASSWORD)):
        with h.unchanged():
            resp = await post_login(h, email, password)
        throttled.append(await snapshot_response(resp))
    assert throttled[0] == throttled[1]
    status, headers, body = throttled[0]
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    assert "Set-Cookie" not in headers
    assert b"too_many_attempts" in body


async def test_b1_003_brute_force_is_throttled_per_normalised_email_with_capped_backoff(
    make_harness: HarnessFactory, clock: Any
) -> None:
    """Failures count against the normalised email (case and padding do not open new counters);
    past the limit the answer is 429 + Retry-After without argon2; waits double and are capped;
    an attacker who always waits out the back-off gets far fewer than 100 guesses an hour."""
    h = await make_harness()
    await h.register("victim@example.com")
    spellings = [
        "victim@example.com",
        "VICTIM@example.com",
        " Victim@Example.COM ",
        "victim@EXAMPLE.com",
        "ＶＩＣＴＩＭ@example.com",
    ]
    for email in spellings:
        assert (await post_login(h, email, WRONG)).status == 401
    with h.unchanged():
        locked = await post_login(h, "victim@example.com", PASSWORD)
    assert locked.status == 429
    waits = [int(locked.headers["Retry-After"])]

    guesses, started = 5, clock.now
    while clock.now - started < 3600:
        clock.advance(waits[-1])
        before = h.kdf_runs
        resp = await post_login(h, "Victim@example.com", WRONG)
        if resp.status == 429:
            waits.append(int(resp.headers["Retry-After"]))
            assert h.kdf_runs == before
        else:
            assert resp.status == 401
            guesses += 1
    assert guesses <= 100  # NIST SP 800-63B: no more than 100 consecutive failures; ASVS V2.2.1 per hour
    assert max(waits) <= h.config.login.max_lockout
    growing = waits[: waits.index(max(waits)) + 1]
    assert growing == sorted(growing) and len(set(growing)) > 2  # exponential, then capped


async def test_b1_004_password_spraying_from_one_address_is_throttled(h: Harness) -> None:
    """One address, one password, many emails: after max_failures_per_address the address gets
    429 without argon2, for any email."""
    limit = h.config.login.max_failures_per_address
    for i in range(limit):
        assert (await post_login(h, f"user{i}@example.com", "Spring2024 spray!")).status == 401
    with h.unchanged():
        resp = await post_login(h, "another@example.com", "Spring2024 spray!")
    assert resp.status == 429
    assert "Retry-After" in resp.headers


async def test_b1_005_lockout_from_many_addresses_is_temporary_and_capped(
    make_harness: HarnessFactory, clock: Any
) -> None:
    """Many addresses failing on the victim's email lock it only temporarily (capped back-off);
    once the lock passes, the victim signs in. No permanent lock from anonymous input."""
    h = await make_harness(server={"trusted_proxies": (ipaddress.ip_network("127.0.0.1/32"),)})
    await h.register("victim@example.com")
    retry_afters = []
    for i in range(40):
        resp = await post_login(h, "victim@example.com", WRONG, **{"X-Forwarded-For": f"198.51.100.{i}"})
        if resp.status == 429:
            retry_afters.append(int(resp.headers["Retry-After"]))
            clock.advance(retry_afters[-1] - 1)  # the attacker comes back just before the lock ends
        else:
            assert resp.status == 401
    assert retry_afters and max(retry_afters) <= h.config.login.max_lockout
    clock.advance(h.config.login.max_lockout + 1)
    ok = await post_login(h, "victim@example.com", PASSWORD, **{"X-Forwarded-For": "203.0.113.7"})
    assert ok.status == 200


async def test_b1_006_login_flood_gets_503_and_proxied_traffic_keeps_flowing(
    make_harness: HarnessFactory,
) -> None:
    """Many concurrent logins: argon2 runs in a bounded pool, the excess gets a fast 503 with
    Retry-After, and health checks and signed-in proxied requests keep answering promptly."""
    costly = {
        "argon2_time_cost": 2,
        "argon2_memory_kib": 32768,
        "argon2_parallelism": 1,
        "hash_workers": 1,
        "hash_queue": 1,
    }
    h = await make_harness(passwords=costly, login={"max_failures_per_address": 1000})
    cookies = await h.session_cookies()
    flood = [
        asyncio.create_task(post_login(h, f"flood{i}@example.com", "some password guess")) for i in range(24)
    ]
    await asyncio.sleep(0)
    started = time.perf_counter()
    proxied = await h.client.get("/app/page", headers={**API, "Cookie": cookie_header(cookies)})
    health = await h.client.get("/auth/health")
    elapsed = time.perf_counter() - started
    answers = await asyncio.gather(*flood)
    assert proxied.status == 200 and health.status == 200
    assert elapsed < 2.0, f"proxied traffic stalled {elapsed:.2f}s behind the hashing queue"
    statuses = [r.status for r in answers]
    assert set(statuses) <= {401, 503}
    overloaded = [r for r in answers if r.status == 503]
    assert overloaded, "the hashing queue never overflowed"
    for resp in overloaded:
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"] == "overloaded"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", ["/auth/login", "/auth/register"])
async def test_b1_007_oversized_login_or_registration_body_is_413(
    h: Harness, path: str, chunked: bool
) -> None:
    """A 1 MiB body (here: a 1 MB password) is refused with 413 before parsing or hashing,
    whether announced by Content-Length or streamed chunked."""
    body = ('{"email": "alice@example.com", "password": "' + "x" * (1024 * 1024) + '"}').encode()

    async def stream() -> Any:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    with h.unchanged():
        resp = await h.client.post(
            path, data=stream() if chunked else io.BytesIO(body), headers={"Content-Type": "application/json"}
        )
    assert resp.status == 413


@pytest.mark.parametrize(("min_length", "password"), [(15, "fourteen chars"), (8, "sevench")])
async def test_b1_008_short_password_at_registration_is_400(
    make_harness: HarnessFactory, min_length: int, password: str
) -> None:
    """One code point under the minimum: 400 naming the password field, no user, no hash."""
    h = await make_harness(passwords={"min_length": min_length})
    assert len(password) == min_length - 1
    with h.unchanged():
        resp = await h.client.post("/auth/register", json={"email": "a@example.com", "password": password})
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "invalid_request"
    assert str(min_length) in body["fields"]["password"]


async def test_b1_009_long_passwords_are_accepted_whole_and_too_long_ones_refused(h: Harness) -> None:
    """64 and 128 code points register and sign in; the password is never truncated (127 of the
    128 characters fail); 129 code points are refused with an explicit reason."""
    base = "Zebra-ünïcode-Quartz-7-é-" * 6  # multi-byte letters count as one code point each
    for n in (64, 128):
        password = base[:n]
        email = f"long{n}@example.com"
        await h.register(email, password)
        assert (await post_login(h, email, password)).status == 200
        assert (await post_login(h, email, password[:-1])).status == 401
    with h.unchanged():
        resp = await h.client.post("/auth/register", json={"email": "l@example.com", "password": base[:129]})
    assert resp.status == 400
    assert "128" in (await resp.json())["fields"]["password"]


@pytest.mark.parametrize(
    ("registered", "typed"),
    [
        (
            unicodedata.normalize("NFC", "Crème brûlée à la façon de maman"),
            unicodedata.normalize("NFD", "Crème brûlée à la façon de maman"),
        ),
        ("🦊🐻🐼🐨🐯🦁🐮🐷🐸🐵🐔🐧🐦🐤🦆", "🦊🐻🐼🐨🐯🦁🐮🐷🐸🐵🐔🐧🐦🐤🦆"),
        ("  spaces   around  and inside  ", "  spaces   around  and inside  "),
    ],
    ids=["nfc-vs-nfd", "emoji", "spaces"],
)
async def test_b1_010_unicode_passwords_are_normalised_not_refused(
    h: Harness, registered: str, typed: str
) -> None:
    """Printable Unicode, emoji and spaces are accepted; NFC and NFD spellings verify alike."""
    await h.register("uni@example.com", registered)
    assert (await post_login(h, "uni@example.com", typed)).status == 200


async def test_b1_010_embedded_nul_is_not_a_terminator(h: Harness) -> None:
    """A NUL inside a password is part of it: the text before the NUL does not sign in."""
    await h.register("nul@example.com", "first half of it\x00and the second half")
    assert (await post_login(h, "nul@example.com", "first half of it")).status == 401
    assert (await post_login(h, "nul@example.com", "first half of it\x00and the second half")).status == 200


async def test_b1_011_no_composition_rules(h: Harness) -> None:
    """Lower-case words without digits or symbols are a fine password (NIST SP 800-63B)."""
    resp = await h.client.post(
        "/auth/register", json={"email": "words@example.com", "password": "correct horse battery staple"}
    )
    assert resp.status == 201


@pytest.mark.parametrize(
    "password", ["password1234567", "qwertyuiop123456", "iloveyou12345678", "aaaaaaaaaaaaaaaa"]
)
async def test_b1_012_common_password_is_refused_at_registration(h: Harness, password: str) -> None:
    """Passwords from the common lists (zxcvbn) get 400 before any hashing or write."""
    with h.unchanged():
        resp = await h.client.post("/auth/register", json={"email": "c@example.com", "password": password})
    assert resp.status == 400
    assert "password" in (await resp.json())["fields"]


async def test_b1_012_common_password_is_refused_at_admin_password_change(h: Harness) -> None:
    """The same check applies to `gateway users set-password` (the only password change)."""
    from gateway.errors import InvalidInput

    await h.register()
    with h.unchanged(), pytest.raises(InvalidInput):
        await h.app[ACCOUNTS].set_password("alice@example.com", "password1234567")


async def test_b1_013_password_built_from_the_email_is_refused(h: Harness) -> None:
    """A password made of the email's local part is refused (zxcvbn with the email as context),
    although the same string is strong for anyone else."""
    email, password = "mortimer.quibbleton@example.com", "mortimer.quibbleton1"
    assert password_problem(password, PasswordsConfig(), []) is None  # strong without context
    with h.unchanged():
        resp = await h.client.post("/auth/register", json={"email": email, "password": password})
    assert resp.status == 400
    assert "password" in (await resp.json())["fields"]


@pytest.mark.parametrize(
    "variant",
    [
        "Alice@example.com",
        "ALICE@EXAMPLE.COM",
        "ａｌｉｃｅ@example.com",
        " alice@example.com ",
        "alice@ｅｘａｍｐｌｅ.com",
    ],
    ids=["case", "upper", "fullwidth", "padded", "fullwidth-domain"],
)
async def test_b1_014_canonical_email_collisions_are_one_account(h: Harness, variant: str) -> None:
    """NFKC + case-fold + trim make one canonical email: a second registration is 409, and it
    still runs the hash (timing does not reveal that the email exists)."""
    await h.register("alice@example.com")
    before = h.kdf_runs
    with h.unchanged(kdf=False):
        resp = await h.client.post("/auth/register", json={"email": variant, "password": OTHER_PASSWORD})
    assert resp.status == 409
    assert h.kdf_runs == before + 1


@pytest.mark.parametrize(
    "email",
    [
        "ali\u200dce@example.com",
        "alice\u200b@example.com",
        "\u2060alice@example.com",
        "alice@exa\u00admple.com",
    ],
    ids=["zwj", "zwsp", "word-joiner", "soft-hyphen"],
)
async def test_b1_014_invisible_characters_are_refused(h: Harness, email: str) -> None:
    """Invisible characters are refused, never stripped: two accounts must not look alike."""
    with h.unchanged():
        resp = await h.client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert resp.status == 400
    assert "email" in (await resp.json())["fields"]


@pytest.mark.parametrize(
    "email",
    [
        "ali\rce@example.com",
        "ali\nce@example.com",
        "ali\x00ce@example.com",
        "ali,ce@example.com",
        "ali;ce@example.com",
        'ali"ce@example.com',
        "ali'ce@example.com",
        "ålice@example.com",
        "alice@exämple.com",
        "a" * 65 + "@example.com",
        "alice@" + "a" * 250 + ".com",
        "alice@example.com\r\nX-Auth-User-Roles: admin",
    ],
    ids=[
        "cr",
        "lf",
        "nul",
        "comma",
        "semicolon",
        "dquote",
        "squote",
        "non-ascii",
        "idn",
        "long-local",
        "long-domain",
        "header-injection",
    ],
)
async def test_b1_015_email_that_could_break_a_header_is_refused(h: Harness, email: str) -> None:
    """The email is later sent upstream in a header: anything that could split, truncate or
    list-split it is refused with 400 at registration, with no write and no hash."""
    with h.unchanged():
        resp = await h.client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert resp.status == 400
    assert "email" in (await resp.json())["fields"]


async def test_b1_016_hash_is_upgraded_on_successful_login_only(make_harness: HarnessFactory) -> None:
    """A hash with old argon2 parameters is re-hashed on the next successful login; a failed login
    never rewrites it."""
    old = await make_harness()
    await old.register()
    new = await make_harness(
        passwords={"argon2_time_cost": 2, "argon2_memory_kib": 16, "argon2_parallelism": 1}
    )

    def stored() -> str:
        return str(new.tables()["users"][0][2])

    before = stored()
    assert argon2.PasswordHasher(time_cost=2, memory_cost=16, parallelism=1).check_needs_rehash(before)
    assert (await post_login(new, "alice@example.com", WRONG)).status == 401
    assert stored() == before
    assert (await post_login(new, "alice@example.com", PASSWORD)).status == 200
    after = stored()
    assert after != before and "m=16,t=2,p=1" in after
    assert (await post_login(new, "alice@example.com", PASSWORD)).status == 200


@pytest.mark.parametrize(
    "corrupt",
    [
        "",
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ",
    ],
    ids=["empty", "bcrypt", "truncated-argon2"],
)
async def test_b1_017_corrupt_stored_hash_is_a_generic_401(h: Harness, corrupt: str) -> None:
    """A damaged stored hash answers the generic 401, never a 500 with a traceback."""
    await h.register()
    with sqlite3.connect(h.db) as db:
        db.execute("UPDATE users SET password_hash = ?", (corrupt,))
    resp = await post_login(h, "alice@example.com", PASSWORD)
    assert resp.status == 401
    assert await resp.json() == INVALID_CREDENTIALS


async def test_b1_018_credentials_in_the_query_string_never_sign_in(h: Harness) -> None:
    """GET /auth/login?email=…&password=… only shows the page (no session, no hash, no write),
    a POST with credentials only in the query is refused, and the password is not logged."""
    await h.register()
    h.keep_secret(PASSWORD)
    query = "/auth/login?email=alice%40example.com&password=correct%20horse%20battery%20staple%2042"
    with h.unchanged():
        page = await h.client.get(query, headers=NAV)
        post = await h.client.post(query, headers=API)
    assert page.status == 200 and "Set-Cookie" not in page.headers
    assert post.status == 400 and "Set-Cookie" not in post.headers
    assert "correct%20horse" not in h.logged_text()


async def test_b1_019_cross_site_login_and_registration_are_403(h: Harness) -> None:
    """Login CSRF: a cross-site POST to /auth/login or /auth/register is refused before any
    hashing or write, and sets no cookie."""
    await h.register()
    cross = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    with h.unchanged():
        login = await post_login(h, "alice@example.com", PASSWORD, **cross)
        register = await h.client.post(
            "/auth/register", json={"email": "x@example.com", "password": PASSWORD}, headers=cross
        )
    for resp in (login, register):
        assert resp.status == 403
        assert "Set-Cookie" not in resp.headers


async def test_b1_020_login_never_adopts_cookies_presented_before_it(h: Harness) -> None:
    """Session fixation: the victim's browser carries the attacker's session cookies; logging in
    issues a new session and new tokens, and the attacker's tokens stay the attacker's."""
    planted = await h.session_cookies("attacker@example.com")
    await h.register("victim@example.com")
    resp = await h.client.post(
        "/auth/login",
        json={"email": "victim@example.com", "password": PASSWORD},
        headers={"Cookie": cookie_header(planted)},
    )
    assert resp.status == 200
    fresh = {name: morsel.value for name, morsel in resp.cookies.items()}
    assert set(fresh) == set(planted)
    assert all(fresh[name] != planted[name] for name in planted)
    me = await h.client.get("/auth/me", headers={"Cookie": cookie_header(planted)})
    assert (await me.json())["email"] == "attacker@example.com"


async def test_b1_021_redirect_after_form_login_is_303_to_a_validated_next(h: Harness) -> None:
    """A form login answers 303 See Other (never 307/308, which would re-post the password)."""
    await h.register()
    form = {"email": "alice@example.com", "password": PASSWORD, "next": "/app/page?x=1"}
    resp = await h.client.post("/auth/login", data=form, headers=SAME_ORIGIN, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/app/page?x=1"
    evil = await h.client.post(
        "/auth/login", data={**form, "next": "//evil.example/"}, headers=SAME_ORIGIN, allow_redirects=False
    )
    assert evil.status == 303 and evil.headers["Location"] == "/"


async def test_b1_022_admin_password_change_revokes_every_session(h: Harness) -> None:
    """`gateway users set-password` (there is no self-service change, see NOT_APPLICABLE.md)
    revokes every session of the user: refresh tokens and unexpired access tokens stop working."""
    first = await h.signed_in()
    first_refresh = h.cookie("gw_refresh")
    second = await h.login()
    await h.app[ACCOUNTS].set_password("alice@example.com", "an entirely new passphrase 9")
    for token in (first["access_token"], second["access_token"]):
        resp = await h.client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 401
    refresh = await h.client.post("/auth/refresh", headers={"Cookie": f"gw_refresh={first_refresh}"})
    assert refresh.status == 401
    assert [row[8] for row in h.tables()["sessions"]] == ["password_change", "password_change"]
    assert (await post_login(h, "alice@example.com", PASSWORD)).status == 401
    assert (await post_login(h, "alice@example.com", "an entirely new passphrase 9")).status == 200
