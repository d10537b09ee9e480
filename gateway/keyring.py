"""Signing keys: the key file, key generation, and the rotation secret derived from it.

The file holds every key still needed for verification, newest last; the newest signs. It is
JSON so several keys (and algorithms' PEM material) fit in one file that every instance shares.
Created with mode 0600 on first start, written atomically so a reader never sees half a file.
Running processes notice a rewritten file (`gateway keys generate`) within RELOAD_INTERVAL of
their next use of the ring.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# RFC 8725 §3.5 / RFC 7518 §3.2: an HMAC key at least as long as the hash output (32 bytes).
HMAC_KEY_BYTES = 32
ROTATION_LABEL = b"gateway refresh-token rotation v1"
RELOAD_INTERVAL = 1.0  # seconds between checks of the file's mtime while the ring is in use
# How long after a key file is rewritten every process is assumed to sign with the new key: the
# ring checks on use at most every RELOAD_INTERVAL and the app's housekeeping every minute; the
# rest is headroom for a process that was stopped (SIGSTOP, suspended VM) or a file copied to
# other hosts late. Used by `keys generate --prune`.
PICKUP_MARGIN = 120.0

log = logging.getLogger("gateway.keyring")


class KeyFileError(Exception):
    """The key file is unreadable, malformed, or holds a key unfit for the configured algorithm."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    created_at: float
    material: bytes  # HMAC secret, or the private key in PEM
    signing_key: Any  # what PyJWT signs with: bytes for HS256, a private key object otherwise
    verifying_key: Any  # bytes for HS256, a public key object otherwise


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _new_material(algorithm: str) -> bytes:
    if algorithm == "HS256":
        return secrets.token_bytes(HMAC_KEY_BYTES)
    private: Any
    if algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise KeyFileError(f"unsupported algorithm {algorithm!r}")
    pem: bytes = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem


def _load_key(entry: dict[str, Any], algorithm: str) -> SigningKey:
    try:
        return _parse_key(entry, algorithm)
    except (ValueError, TypeError) as e:  # bad base64, bad PEM, a created_at that is not a number
        raise KeyFileError(f"key {entry.get('kid')!r} is unreadable: {e}") from e


def _parse_key(entry: dict[str, Any], algorithm: str) -> SigningKey:
    kid, alg = entry.get("kid"), entry.get("alg")
    if not isinstance(kid, str) or not kid or alg != algorithm:
        raise KeyFileError(f"key {kid!r} is for {alg!r}, but tokens.algorithm is {algorithm!r}")
    material = _unb64(str(entry.get("k", "")))
    if algorithm == "HS256":
        if len(material) < HMAC_KEY_BYTES:
            raise KeyFileError(f"key {kid!r} is shorter than {HMAC_KEY_BYTES} bytes")
        return SigningKey(kid, alg, float(entry.get("created_at", 0)), material, material, material)
    private = serialization.load_pem_private_key(material, password=None)
    expected = {
        "EdDSA": ed25519.Ed25519PrivateKey,
        "ES256": ec.EllipticCurvePrivateKey,
        "RS256": rsa.RSAPrivateKey,
    }
    if not isinstance(private, expected[algorithm]):
        raise KeyFileError(f"key {kid!r} is not a {algorithm} key")
    if isinstance(private, rsa.RSAPrivateKey) and private.key_size < 2048:
        raise KeyFileError(f"key {kid!r}: RSA keys must be at least 2048 bits")
    return SigningKey(kid, alg, float(entry.get("created_at", 0)), material, private, private.public_key())


def _derive_rotation_secret(material: bytes) -> bytes:
    # DESIGN §6: the rotation secret comes from the signing key material through HKDF with its
    # own label, so every instance sharing the key file derives the same one.
    return HKDF(hashes.SHA256(), 32, salt=None, info=ROTATION_LABEL).derive(material)


@dataclass
class _KeyFile:
    entries: list[dict[str, Any]]
    # Derived once from the first key and then kept in the file, so that pruning that key does
    # not change it (a changed secret would turn an in-grace refresh retry into "reuse").
    rotation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def rotation_secret(self) -> bytes:
        if self.rotation is not None:
            try:
                secret = _unb64(self.rotation)
            except ValueError as e:
                raise KeyFileError(f"rotation_secret is unreadable: {e}") from e
            if len(secret) < HMAC_KEY_BYTES:
                raise KeyFileError(f"rotation_secret is shorter than {HMAC_KEY_BYTES} bytes")
            return secret
        return _derive_rotation_secret(_unb64(str(self.entries[0].get("k", ""))))


def _write_atomically(path: Path, key_file: _KeyFile) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    data = {**key_file.extra, "keys": key_file.entries, "rotation_secret": _b64(key_file.rotation_secret())}
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_file(path: Path) -> _KeyFile:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KeyFileError(f"cannot read key file {path}: {e}") from e
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise KeyFileError(f"key file {path} holds no keys")
    assert isinstance(data, dict)
    rotation = data.get("rotation_secret")
    if rotation is not None and not isinstance(rotation, str):
        raise KeyFileError(f"key file {path}: rotation_secret must be a string")
    extra = {k: v for k, v in data.items() if k not in ("keys", "rotation_secret")}
    return _KeyFile(entries, rotation, extra)


def _new_entry(algorithm: str) -> dict[str, Any]:
    return {
        "kid": secrets.token_hex(8),
        "alg": algorithm,
        "created_at": time.time(),
        "k": _b64(_new_material(algorithm)),
    }


def ensure_key_file(path: Path, algorithm: str) -> None:
    """Create the key file with one fresh key when it does not exist (first start).

    Several workers may start together: O_EXCL on a lock file makes exactly one of them write it.
    """
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(100):  # another process is writing it; wait for the rename
            if path.exists():
                return
            time.sleep(0.05)
        raise KeyFileError(f"timed out waiting for {path} to be created (stale {lock}?)") from None
    try:
        if not path.exists():
            _write_atomically(path, _KeyFile([_new_entry(algorithm)]))
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


@dataclass(frozen=True)
class Generated:
    kid: str  # the new key, which signs from now on
    kept: tuple[str, ...]  # older keys still in the file (they keep verifying)
    pruned: tuple[str, ...]  # keys removed by `retired_before`


def generate_key(path: Path, algorithm: str, *, retired_before: float | None = None) -> Generated:
    """Append a new key that signs from now on; keep older ones so their tokens still verify.

    A key stops signing when its successor is created, so the last token it signed expires at
    most access_ttl + leeway after that moment (plus the time processes take to notice the new
    file). `retired_before`: remove every key whose *successor* was created before this time;
    the newest existing key, which signed until now, is always kept. Existing keys must all be
    fit for `algorithm` (else KeyFileError, and the file is left untouched).
    """
    with _exclusive(path):
        return _generate(path, algorithm, retired_before)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Two `keys generate` at once would each rewrite the file from the same old copy, losing a key
    that may already sign: take turns through an O_EXCL lock file (the one ensure_key_file uses)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            time.sleep(0.05)
    else:
        raise KeyFileError(f"{lock} exists: another process is writing the key file (or it is stale)")
    try:
        yield
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


def _generate(path: Path, algorithm: str, retired_before: float | None) -> Generated:
    key_file = _read_file(path) if path.exists() else _KeyFile([])
    for entry in key_file.entries:
        _load_key(entry, algorithm)
    if key_file.entries:
        key_file.rotation = _b64(key_file.rotation_secret())  # pin it before the first key can go
    kept, pruned = list(key_file.entries), []
    if retired_before is not None:
        successors = [float(e.get("created_at", 0)) for e in key_file.entries[1:]]
        kept = [e for e, succ in zip(key_file.entries, successors, strict=False) if succ >= retired_before]
        kept += key_file.entries[-1:]
        pruned = [e for e in key_file.entries if e not in kept]
    entry = _new_entry(algorithm)
    key_file.entries = [*kept, entry]
    _write_atomically(path, key_file)
    return Generated(
        kid=str(entry["kid"]),
        kept=tuple(str(e.get("kid")) for e in kept),
        pruned=tuple(str(e.get("kid")) for e in pruned),
    )


class KeyRing:
    """The keys from the file: the newest signs, all verify; `kid` is looked up in a fixed dict.

    `keys`, `current` and `rotation_secret` re-check the file's mtime at most every
    RELOAD_INTERVAL, so a key added by `gateway keys generate` signs within about a second in
    every running process, and a token it signed verifies everywhere just as soon.
    """

    def __init__(self, path: Path, algorithm: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.algorithm = algorithm
        self._clock = clock
        self._mtime = -1.0
        self._checked_at = 0.0
        self._keys: dict[str, SigningKey] = {}
        self._current: SigningKey
        self._rotation_secret = b""
        self._last_error = ""
        self.reload()

    @property
    def keys(self) -> dict[str, SigningKey]:
        self._maybe_reload()
        return self._keys

    @property
    def current(self) -> SigningKey:
        self._maybe_reload()
        return self._current

    @property
    def rotation_secret(self) -> bytes:
        self._maybe_reload()
        return self._rotation_secret

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now - self._checked_at < RELOAD_INTERVAL:
            return
        try:
            self.reload()
            self._last_error = ""
        except (KeyFileError, ValueError, TypeError) as e:
            # A broken file must not take the running service down: keep signing with the keys
            # we have, and say so once per problem (a restart would refuse this file).
            if str(e) != self._last_error:
                log.error("key file not reloaded, keeping the previous keys: %s", e)
            self._last_error = str(e)

    def reload(self) -> bool:
        """Re-read the file if it changed (after `gateway keys generate`). Returns True if reloaded."""
        self._checked_at = self._clock()
        try:
            mtime = self.path.stat().st_mtime
        except OSError as e:
            raise KeyFileError(f"cannot read key file {self.path}: {e}") from e
        if mtime == self._mtime:
            return False
        key_file = _read_file(self.path)
        keys = [_load_key(e, self.algorithm) for e in key_file.entries]
        rotation_secret = key_file.rotation_secret()
        self._keys = {k.kid: k for k in keys}
        self._current = keys[-1]
        self._rotation_secret = rotation_secret
        self._mtime = mtime
        return True

    def jwks(self) -> dict[str, Any]:
        """Public keys as a JWK Set (RFC 7517); empty for HS256, whose key is secret."""
        from jwt.algorithms import get_default_algorithms

        if self.algorithm == "HS256":
            return {"keys": []}
        algo = get_default_algorithms()[self.algorithm]
        out = []
        for key in self.keys.values():
            jwk = json.loads(algo.to_jwk(key.verifying_key))
            jwk.update({"kid": key.kid, "alg": self.algorithm, "use": "sig"})
            out.append(jwk)
        return {"keys": out}
