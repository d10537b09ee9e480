"""argon2id hashing off the event loop, bounded, plus the password and email policies.

One `argon2.PasswordHasher` is built at start (argon2-cffi's defaults are RFC 9106's second
recommended profile, "low memory": t=3, m=64 MiB, p=4, 16-byte salt, 32-byte hash; well above the
OWASP floor of m=19 MiB, t=2, p=1). Each hash holds 64 MiB and up to four threads, so hashing runs
in a small dedicated thread pool with a bounded queue: past it, callers get `Overloaded` (503 with
Retry-After) instead of an unbounded backlog that would starve proxied traffic (OWASP Password
Storage Cheat Sheet, "Using Work Factors"; SECURITY.md item 6).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import argon2
from zxcvbn import zxcvbn

from gateway.config import PasswordsConfig
from gateway.errors import InvalidInput, Overloaded

# Emails are emitted upstream in a header, so only characters no header parser chokes on and no
# list-parsing upstream splits on (no comma, semicolon, quotes, spaces): SECURITY item 15.
_EMAIL_RE = re.compile(
    r"^[a-z0-9.!#$%&*+/=?^_`{|}~-]{1,64}@(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
    r"(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)
# zxcvbn scores 0-4; 3 is "safely unguessable: moderate protection from offline slow-hash scenario".
MIN_ZXCVBN_SCORE = 3
T = TypeVar("T")
# zxcvbn's cost grows with length and zxcvbn >= 4.5 raises ValueError past 72 characters (a 500 for
# any longer password); the rest of a long password only adds strength (SECURITY item 9).
ZXCVBN_MAX_CHARS = 72


def normalize_email(raw: str) -> str:
    """NFKC, trimmed, lower-case; raise InvalidInput for anything we would not emit upstream.

    Invisible and control characters are refused rather than stripped, so two accounts can never
    look the same to an upstream (SECURITY item 14).
    """
    text = unicodedata.normalize("NFKC", raw).strip()
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text):
        raise InvalidInput({"email": "contains invisible or control characters"})
    email = text.lower()
    if not _EMAIL_RE.match(email):
        raise InvalidInput({"email": "is not a valid email address"})
    return email


def normalize_password(password: str) -> str:
    """NFKC so that the same password typed as NFC or NFD verifies (NIST SP 800-63B-4 §3.1.1.2)."""
    return unicodedata.normalize("NFKC", password)


def password_problem(password: str, config: PasswordsConfig, context: list[str]) -> str | None:
    """Why `password` (already normalised) is refused, or None. No composition rules (NIST)."""
    if len(password) < config.min_length:
        return f"must be at least {config.min_length} characters"
    if len(password) > config.max_length:
        return f"must be at most {config.max_length} characters"
    if config.reject_common:
        result = zxcvbn(
            password[:ZXCVBN_MAX_CHARS],
            user_inputs=[c for c in context if c],
            max_length=ZXCVBN_MAX_CHARS,
        )
        if int(result["score"]) < MIN_ZXCVBN_SCORE:
            return "is too common or easy to guess; choose a longer, less predictable passphrase"
    return None


HASH_THREAD_NICENESS = 10


def _lower_priority() -> None:
    """Run argon2 below the event loop's priority (Linux schedules threads individually), so a
    login storm takes the spare CPU instead of the proxied requests' (bench scenario i)."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted: run as is
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICENESS)


class Passwords:
    """The one PasswordHasher, its thread pool and the bound on queued work."""

    def __init__(self, config: PasswordsConfig) -> None:
        self.hasher = argon2.PasswordHasher(
            time_cost=config.argon2_time_cost,
            memory_cost=config.argon2_memory_kib,
            parallelism=config.argon2_parallelism,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=config.hash_workers, thread_name_prefix="argon2", initializer=_lower_priority
        )
        self._limit = config.hash_workers + config.hash_queue
        self._in_flight = 0
        self._dummy_hash: str | None = None
        self.runs = 0  # argon2 invocations; tests use it to prove "no KDF ran"

    async def start(self) -> None:
        """Compute the dummy hash verified for unknown emails (so their timing matches real ones)."""
        self._dummy_hash = await self._run(self.hasher.hash, "dummy password for timing equalisation")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[..., T], *args: str) -> T:
        if self._in_flight >= self._limit:
            raise Overloaded(retry_after=1)
        self._in_flight += 1
        try:
            self.runs += 1
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._in_flight -= 1

    async def hash(self, password: str) -> str:
        return await self._run(self.hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True if `password` matches `stored`; with stored=None, verify a dummy and return False.

        A corrupt stored hash (empty, bcrypt, truncated) counts as a mismatch, never a crash
        (SECURITY item 17).
        """
        target = stored if stored is not None else self._dummy_hash
        if target is None:
            raise RuntimeError("Passwords.start() must run before verify()")
        try:
            ok = await self._run(self.hasher.verify, target, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
        return bool(ok) and stored is not None

    def needs_rehash(self, stored: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(stored)
        except argon2.exceptions.InvalidHashError:
            return False
