"""The domain rules of accounts and sessions: register, login, refresh, logout, revoke.

No HTTP here: handlers and the proxy translate requests into these calls. The refresh rotation
follows SECURITY.md C.2: single-use refresh tokens in families (sessions), coalesced in-process,
an idempotent grace window for the immediately previous token (same successor every time, derived
by HMAC so only digests are stored), and reuse of anything older treated as theft: the whole
session is revoked and its access tokens die at once (RFC 9700 §4.14.2, ASVS 5.0 V10.4.5).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from gateway.config import Config
from gateway.errors import (
    InvalidCredentials,
    InvalidInput,
    InvalidRefreshToken,
    NotFound,
    Overloaded,
    RegistrationClosed,
    TooManyAttempts,
)
from gateway.passwords import Passwords, normalize_email, normalize_password, password_problem
from gateway.ratelimit import AddressFailures, LoginThrottle, throttle_keys
from gateway.revocation import RevocationList
from gateway.store import RefreshTokenRecord, Revocation, SessionRecord, Store, UserRecord
from gateway.tokens import (
    AccessTokens,
    Claims,
    hash_refresh_token,
    new_refresh_token,
    successor_token,
)

security_log = logging.getLogger("gateway.security")
# Failed refreshes per client address before 429 (SECURITY C.1: 30 per 5 minutes per address).
REFRESH_FAILURES_PER_ADDRESS = 30
REFRESH_FAILURE_WINDOW = 300.0


@dataclass(frozen=True)
class Issued:
    """What a login or refresh hands out: both tokens and how long each cookie may live."""

    user: UserRecord
    session: SessionRecord
    access_token: str
    claims: Claims
    refresh_token: str
    refresh_max_age: int  # seconds: min(idle TTL, time left in the session)
    outcome: str = "login"  # login | rotated | coalesced | grace


def _public_roles(roles: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(r.strip() for r in roles if r.strip()))


class Accounts:
    """Everything that changes users and sessions. One instance per process."""

    def __init__(
        self,
        config: Config,
        store: Store,
        passwords: Passwords,
        tokens: AccessTokens,
        revocations: RevocationList,
        clock: Callable[[], float] = time.time,
        events: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.passwords = passwords
        self.tokens = tokens
        self.revocations = revocations
        self.clock = clock
        self.throttle = LoginThrottle(config.login, store)
        self.refresh_failures = AddressFailures(REFRESH_FAILURES_PER_ADDRESS, REFRESH_FAILURE_WINDOW)
        self._inflight: dict[str, asyncio.Future[Issued]] = {}
        # (kind, outcome) for metrics: ("login", "success"), ("refresh", "reuse_detected"), …
        self.events: Callable[[str, str], None] = events or (lambda kind, outcome: None)

    # ---- registration and login -------------------------------------------------------------

    async def _checked_password(self, raw: str, email: str) -> str:
        password = normalize_password(raw)
        context = [email, email.split("@")[0], self.config.pages.product_name]
        problem = await asyncio.get_running_loop().run_in_executor(
            None, password_problem, password, self.config.passwords, context
        )
        if problem:
            raise InvalidInput({"password": problem})
        return password

    async def register(self, email: str, password: str, roles: Sequence[str] | None = None) -> UserRecord:
        reg = self.config.registration
        normalized = normalize_email(email)
        domain = normalized.rsplit("@", 1)[1]
        if reg.allowed_email_domains and domain not in reg.allowed_email_domains:
            raise RegistrationClosed("registration is not open to this email domain")
        return await self.create_user(normalized, password, roles if roles is not None else reg.default_roles)

    async def create_user(self, email: str, password: str, roles: Sequence[str]) -> UserRecord:
        """Create a user regardless of the registration switch (admin path, `gateway users add`)."""
        normalized = normalize_email(email)
        checked = await self._checked_password(password, normalized)
        now = self.clock()
        user = UserRecord(
            id=uuid.uuid4().hex,
            email=normalized,
            password_hash=await self.passwords.hash(checked),
            roles=_public_roles(roles),
            disabled=False,
            token_version=1,
            created_at=now,
            updated_at=now,
        )
        await self.store.create_user(user)  # raises EmailTaken atomically on a duplicate
        security_log.info("user registered user=%s", user.id)
        return user

    async def login(
        self, email: str, password: str, *, address: str, client: str, remember: bool = False
    ) -> Issued:
        """Check the password and open a session. Every failure is the same InvalidCredentials.

        Throttling runs first and is keyed on what was submitted, so an unknown email behaves
        exactly like a known one and a locked key costs no argon2 run (SECURITY items 1-4).
        """
        try:
            normalized = normalize_email(email)
        except InvalidInput:
            normalized = email.strip().lower()[:254]
        keys = throttle_keys(normalized, address)
        now = self.clock()
        try:
            await self.throttle.check(keys, now)
            user = await self.store.get_user_by_email(normalized)
            ok = await self.passwords.verify(
                user.password_hash if user else None, normalize_password(password)
            )
        except TooManyAttempts:
            self.events("login", "throttled")
            security_log.warning("login throttled address=%s", address)
            raise
        except Overloaded:
            self.events("login", "overloaded")
            raise
        if user is None or not ok or user.disabled:
            self.events("login", "failure")
            await self.throttle.failed(keys, self.clock())
            security_log.warning("login failed address=%s user=%s", address, user.id if user else "-")
            raise InvalidCredentials()
        await self.throttle.succeeded(keys)
        if self.passwords.needs_rehash(user.password_hash):
            new_hash = await self.passwords.hash(normalize_password(password))
            updated = await self.store.update_user(
                user.id, now=self.clock(), password_hash=new_hash, expected_password_hash=user.password_hash
            )
            user = updated or user
        self.events("login", "success")
        security_log.info("login succeeded user=%s address=%s", user.id, address)
        return await self._open_session(user, client=client, remember=remember)

    async def _open_session(self, user: UserRecord, *, client: str, remember: bool) -> Issued:
        t = self.config.tokens
        remember = remember and t.remember_me
        idle = t.remember_refresh_ttl if remember else t.refresh_ttl
        absolute = t.remember_session_ttl if remember else t.session_ttl
        now = self.clock()
        session = SessionRecord(
            id=uuid.uuid4().hex,
            user_id=user.id,
            created_at=now,
            last_used_at=now,
            expires_at=now + absolute,
            idle_ttl=idle,
            client=client[:200],
        )
        raw = new_refresh_token()
        token = RefreshTokenRecord(
            token_hash=hash_refresh_token(raw),
            session_id=session.id,
            generation=0,
            issued_at=now,
            expires_at=min(now + idle, session.expires_at),
        )
        await self.store.create_session(session, token)
        return self._issue(user, session, raw, token.expires_at, now, "login")

    def _issue(
        self,
        user: UserRecord,
        session: SessionRecord,
        raw: str,
        token_expires: float,
        now: float,
        outcome: str,
    ) -> Issued:
        access, claims = self.tokens.issue(user, session.id, now)
        max_age = max(0, int(min(token_expires, session.expires_at) - now))
        return Issued(user, session, access, claims, raw, max_age, outcome)

    # ---- refresh ------------------------------------------------------------------------------

    async def refresh(
        self, raw: str, *, client: str, session_id: str | None = None, address: str | None = None
    ) -> Issued:
        """Rotate `raw`; concurrent calls with the same token in this process share one rotation.

        `session_id`: the session of the (expired) access token presented beside `raw`; a refresh
        token of another session is refused without rotating (SECURITY item 61). `address`: the
        client address, whose failed refreshes are limited before any database read (items 58,
        136); past the limit TooManyAttempts is raised.
        """
        if address is not None and raw:
            wait = self.refresh_failures.retry_after(address, self.clock())
            if wait > 0:
                self.events("refresh", "throttled")
                raise TooManyAttempts(retry_after=wait)
        try:
            return await self._refresh_once(raw, client, session_id)
        except InvalidRefreshToken:
            if address is not None and raw:
                self.refresh_failures.failed(address, self.clock())
            raise

    async def _refresh_once(self, raw: str, client: str, session_id: str | None) -> Issued:
        if not raw or len(raw) > 128:
            raise InvalidRefreshToken()
        token_hash = hash_refresh_token(raw)
        key = f"{token_hash} {session_id or ''}"  # a mismatched caller must not share a rotation
        pending = self._inflight.get(key)
        if pending is not None:
            issued = replace(await asyncio.shield(pending), outcome="coalesced")
            self.events("refresh", issued.outcome)
            return issued
        task = asyncio.ensure_future(self._refresh(raw, token_hash, client, session_id))
        self._inflight[key] = task
        # Shielded so a browser that disconnects cannot cancel a rotation half-way for its siblings.
        task.add_done_callback(lambda _: self._inflight.pop(key, None))
        issued = await asyncio.shield(task)
        self.events("refresh", issued.outcome)
        return issued

    async def _refresh(self, raw: str, token_hash: str, client: str, session_id: str | None = None) -> Issued:
        row = await self.store.get_refresh_token(token_hash)
        if row is None:
            self.events("refresh", "unknown")
            raise InvalidRefreshToken()
        if session_id is not None and row.session_id != session_id:
            # An access token of one session beside the refresh token of another: never rotate.
            self.events("refresh", "session_mismatch")
            security_log.warning(
                "refresh refused: session mismatch session=%s access_session=%s address=%s",
                row.session_id,
                session_id,
                client.split(" ", 1)[0],
            )
            raise InvalidRefreshToken()
        session = await self.store.get_session(row.session_id)
        now = self.clock()
        if session is None or session.revoked_at is not None:
            self.events("refresh", "revoked")
            raise InvalidRefreshToken()
        if now >= session.expires_at or now >= row.expires_at:
            self.events("refresh", "expired")
            raise InvalidRefreshToken("the session has expired; sign in again")
        user = await self.store.get_user(session.user_id)
        if user is None or user.disabled:
            await self._revoke([session.id], reason="user_disabled")
            raise InvalidRefreshToken()
        successor = successor_token(self.tokens.ring.rotation_secret, session.id, row.generation + 1, raw)
        successor_hash = hash_refresh_token(successor)
        expires = min(now + session.idle_ttl, session.expires_at)
        if row.rotated_at is None:
            new_row = RefreshTokenRecord(successor_hash, session.id, row.generation + 1, now, expires)
            if await self.store.rotate_refresh_token(token_hash, new_row, now=now, client=client[:200]):
                return self._issue(user, session, successor, expires, now, "rotated")
            # Another process rotated it between our read and our write: judge it as a retry.
            row = await self.store.get_refresh_token(token_hash)
            if row is None:
                raise InvalidRefreshToken()
        # The grace path: only the immediately previous token (its successor not used yet),
        # only within reuse_grace, and only if the successor is the one we derive (SECURITY C.2).
        if (
            row.rotated_at is not None
            and now - row.rotated_at <= self.config.tokens.reuse_grace
            and row.successor_hash is not None
            and hmac.compare_digest(row.successor_hash, successor_hash)
        ):
            current = await self.store.get_refresh_token(successor_hash)
            if current is not None and current.rotated_at is None:
                return self._issue(user, session, successor, current.expires_at, now, "grace")
        await self._revoke([session.id], reason="refresh_reuse")
        self.events("refresh", "reuse_detected")
        security_log.warning(
            "refresh token reuse detected: session revoked session=%s user=%s generation=%d address=%s",
            session.id,
            user.id,
            row.generation,
            client.split(" ", 1)[0],  # `client` is "<address> <user agent>"
        )
        raise InvalidRefreshToken()

    # ---- sign-out and revocation --------------------------------------------------------------

    def _feed_until(self, now: float) -> float:
        t = self.config.tokens
        return now + t.access_ttl + t.leeway + 1

    async def _revoke(
        self, session_ids: Sequence[str] = (), *, reason: str, user_id: str | None = None
    ) -> list[str]:
        now = self.clock()
        until = self._feed_until(now)
        revoked = await self.store.revoke_sessions(
            now=now, reason=reason, feed_until=until, session_ids=session_ids, user_id=user_id
        )
        for sid in revoked:  # effective in this process at once; others follow from the feed
            self.revocations.apply(Revocation(0, "session", sid, 0, now, until))
        if revoked:
            self.events("revocation", reason)
            security_log.info("sessions revoked reason=%s count=%d", reason, len(revoked))
        return revoked

    async def logout(self, *, session_id: str | None = None, refresh_token: str | None = None) -> None:
        """End one session, found by its id (access token) or by its refresh token. Idempotent."""
        if session_id is None and refresh_token:
            row = await self.store.get_refresh_token(hash_refresh_token(refresh_token))
            session_id = row.session_id if row else None
        if session_id is not None:
            await self._revoke([session_id], reason="logout")

    async def logout_all(self, user_id: str) -> list[str]:
        return await self._revoke(user_id=user_id, reason="logout_all")

    async def revoke_session(self, session_id: str) -> None:
        if await self.store.get_session(session_id) is None:
            raise NotFound(f"no session {session_id}")
        await self._revoke([session_id], reason="admin")

    async def _invalidate_user_tokens(self, user: UserRecord) -> None:
        """Kill the user's access tokens older than its new version (roles changed, disabled…)."""
        now = self.clock()
        until = self._feed_until(now)
        await self.store.add_user_revocation(user.id, user.token_version, now=now, until=until)
        self.revocations.apply(Revocation(0, "user", user.id, user.token_version, now, until))

    # ---- queries and admin ----------------------------------------------------------------------

    async def user_by_email(self, email: str) -> UserRecord:
        user = await self.store.get_user_by_email(normalize_email(email))
        if user is None:
            raise NotFound(f"no user {email.strip()}")
        return user

    async def sessions_of(self, user_id: str | None) -> list[SessionRecord]:
        return await self.store.list_sessions(now=self.clock(), user_id=user_id)

    async def set_password(self, email: str, password: str) -> UserRecord:
        user = await self.user_by_email(email)
        checked = await self._checked_password(password, user.email)
        new_hash = await self.passwords.hash(checked)
        updated = await self.store.update_user(
            user.id, now=self.clock(), password_hash=new_hash, bump_token_version=True
        )
        assert updated is not None
        security_log.info("password changed user=%s", user.id)
        await self._revoke(user_id=user.id, reason="password_change")
        await self._invalidate_user_tokens(updated)
        return updated

    async def set_disabled(self, email: str, disabled: bool) -> UserRecord:
        user = await self.user_by_email(email)
        updated = await self.store.update_user(
            user.id, now=self.clock(), disabled=disabled, bump_token_version=disabled
        )
        assert updated is not None
        security_log.info("user %s user=%s", "disabled" if disabled else "enabled", user.id)
        if disabled:
            await self._revoke(user_id=user.id, reason="user_disabled")
            await self._invalidate_user_tokens(updated)
        return updated

    async def set_roles(self, email: str, roles: Sequence[str]) -> UserRecord:
        """New roles take effect on the next access token: current ones die, sessions survive."""
        user = await self.user_by_email(email)
        updated = await self.store.update_user(
            user.id, now=self.clock(), roles=_public_roles(roles), bump_token_version=True
        )
        assert updated is not None
        await self._invalidate_user_tokens(updated)
        return updated
