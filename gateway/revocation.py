"""The in-memory revocation list every process keeps, fed by the store's revocation feed.

Access tokens are self-contained, so killing one before its `exp` needs a deny-list (ASVS 5.0
V7.4.1, SECURITY R-JWT-9): keyed on the session id (`sid`) and on a per-user minimum token
version, never on the raw token. The process that revokes applies the entry at once; the others
poll the feed (every second by default), so revocation is effective everywhere within 2 s with
no database round trip on the hot path. Entries are dropped once every token they could kill
has expired.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.store import Revocation, Store
from gateway.tokens import Claims

log = logging.getLogger("gateway.revocation")


class RevocationList:
    def __init__(self) -> None:
        self.sessions: dict[str, float] = {}  # sid -> until
        self.users: dict[str, tuple[int, float]] = {}  # user id -> (min version, until)
        self.last_seq = 0
        self._listeners: list[Callable[[Revocation], None]] = []

    def on_revocation(self, listener: Callable[[Revocation], None]) -> None:
        """Call `listener` for every entry applied (used to close open websockets)."""
        self._listeners.append(listener)

    def is_revoked(self, claims: Claims) -> bool:
        if claims.sid in self.sessions:
            return True
        user = self.users.get(claims.sub)
        return user is not None and claims.ver < user[0]

    def apply(self, entry: Revocation) -> None:
        if entry.kind == "session":
            self.sessions[entry.subject] = max(entry.until, self.sessions.get(entry.subject, 0.0))
        else:
            old = self.users.get(entry.subject, (0, 0.0))
            self.users[entry.subject] = (max(old[0], entry.min_version), max(old[1], entry.until))
        self.last_seq = max(self.last_seq, entry.seq)
        for listener in self._listeners:
            listener(entry)

    def prune(self, now: float) -> None:
        self.sessions = {sid: until for sid, until in self.sessions.items() if until > now}
        self.users = {uid: v for uid, v in self.users.items() if v[1] > now}

    async def poll(self, store: Store, now: float) -> int:
        """Apply feed entries newer than the last seen; return how many."""
        entries = await store.revocations_since(self.last_seq, now=now)
        for entry in entries:
            self.apply(entry)
        return len(entries)


async def poll_forever(
    revocations: RevocationList, store: Store, clock: Callable[[], float], interval: float = 1.0
) -> None:
    """Background task: keep the list in step with the store until cancelled."""
    ticks = 0
    while True:
        try:
            await revocations.poll(store, clock())
            ticks += 1
            if ticks % 60 == 0:
                revocations.prune(clock())
        except asyncio.CancelledError:
            raise
        except Exception:  # the store may be briefly unavailable; keep the last known list
            log.warning("revocation poll failed; retrying", exc_info=True)
        await asyncio.sleep(interval)
