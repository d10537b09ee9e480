"""Login throttling: per submitted email (existing or not) and per client address.

Counters live in the store so every process and host sees the same ones (DESIGN §3 [login]).
The check runs before any password hashing, so a throttled attempt costs no argon2 run. Once a
key reaches its limit inside the window it is locked for a back-off that doubles with every
further failure, capped at `max_lockout` (OWASP Authentication Cheat Sheet; NIST SP 800-63B-4
§3.2.2: increasing waits, temporary, so an attacker cannot lock a victim out for good).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import LoginConfig
from gateway.errors import TooManyAttempts
from gateway.store import Store, ThrottleState

BASE_LOCKOUT = 30.0  # seconds of the first lockout; doubles per further failure


@dataclass(frozen=True)
class ThrottleKeys:
    email: str
    address: str


def throttle_keys(email: str, address: str) -> ThrottleKeys:
    return ThrottleKeys(email=f"email:{email}", address=f"addr:{address}")


def lockout_remaining(state: ThrottleState | None, limit: int, max_lockout: float, now: float) -> float:
    """Seconds the key stays locked (0 when it is not locked)."""
    if state is None or state.failures < limit:
        return 0.0
    lock = min(BASE_LOCKOUT * 2.0 ** (state.failures - limit), max_lockout)
    return max(0.0, state.last_at + lock - now)


class LoginThrottle:
    def __init__(self, config: LoginConfig, store: Store) -> None:
        self.config = config
        self.store = store

    def _limits(self, keys: ThrottleKeys) -> list[tuple[str, int]]:
        return [(keys.email, self.config.max_failures), (keys.address, self.config.max_failures_per_address)]

    async def check(self, keys: ThrottleKeys, now: float) -> None:
        """Raise TooManyAttempts while either key is locked."""
        wait = 0.0
        for key, limit in self._limits(keys):
            state = await self.store.throttle_get(key, now=now, window=self.config.window)
            wait = max(wait, lockout_remaining(state, limit, self.config.max_lockout, now))
        if wait > 0:
            raise TooManyAttempts(retry_after=wait)

    async def failed(self, keys: ThrottleKeys, now: float) -> None:
        for key, _ in self._limits(keys):
            await self.store.throttle_hit(key, now=now, window=self.config.window)

    async def succeeded(self, keys: ThrottleKeys) -> None:
        # Only the account's counter resets: a spraying address keeps its count.
        await self.store.throttle_clear(keys.email)


class AddressFailures:
    """Failures per client address in a fixed window, kept in this process's memory.

    Used for refresh attempts with bad tokens (SECURITY items 58 and 136; C.1 suggests 30 per
    5 minutes per address): an unknown refresh token costs one indexed read, so counting it in
    the shared store would cost more than the attack it stops. With N worker processes the
    effective limit is N times `limit`, still a bound on the database load.
    """

    MAX_ADDRESSES = 100_000  # bounded memory: past it, windows that ended are dropped, then all

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._counts: dict[str, tuple[int, float]] = {}  # address -> (failures, window start)

    def retry_after(self, address: str, now: float) -> float:
        """Seconds until `address` may try again; 0 when it may now."""
        count, start = self._counts.get(address, (0, now))
        if now - start > self.window or count < self.limit:
            return 0.0
        return start + self.window - now

    def failed(self, address: str, now: float) -> None:
        count, start = self._counts.get(address, (0, now))
        if now - start > self.window:
            count, start = 0, now
        if address not in self._counts and len(self._counts) >= self.MAX_ADDRESSES:
            self._counts = {a: v for a, v in self._counts.items() if now - v[1] <= self.window}
            if len(self._counts) >= self.MAX_ADDRESSES:
                self._counts.clear()
        self._counts[address] = (count + 1, start)
