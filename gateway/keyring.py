"""Signing keys: the key file, key generation, and the rotation secret derived from it.

The file holds every key still needed for verification, newest last; the newest signs. It is
JSON so several keys (and algorithms' PEM material) fit in one file that every instance shares.
Created with mode 0600 on first start, written atomically so a reader never sees half a file.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# RFC 8725 §3.5 / RFC 7518 §3.2: an HMAC key at least as long as the hash output (32 bytes).
HMAC_KEY_BYTES = 32
ROTATION_LABEL = b"gateway refresh-token rotation v1"


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


def _write_atomically(path: Path, entries: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"keys": entries}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_entries(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KeyFileError(f"cannot read key file {path}: {e}") from e
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise KeyFileError(f"key file {path} holds no keys")
    return entries


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
            _write_atomically(path, [_new_entry(algorithm)])
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


def generate_key(path: Path, algorithm: str, *, drop_older_than: float | None = None) -> str:
    """Append a new key that signs from now on; keep older ones so their tokens still verify.

    `drop_older_than`: remove keys created before this time (they can no longer have live tokens),
    but never the newest existing one. Returns the new kid.
    """
    entries = _read_entries(path) if path.exists() else []
    if drop_older_than is not None and entries:
        entries = [e for e in entries[:-1] if float(e.get("created_at", 0)) >= drop_older_than] + entries[-1:]
    entry = _new_entry(algorithm)
    _write_atomically(path, [*entries, entry])
    return str(entry["kid"])


class KeyRing:
    """The keys from the file: the newest signs, all verify; `kid` is looked up in a fixed dict."""

    def __init__(self, path: Path, algorithm: str) -> None:
        self.path = path
        self.algorithm = algorithm
        self._mtime = -1.0
        self.keys: dict[str, SigningKey] = {}
        self.current: SigningKey
        self.rotation_secret = b""
        self.reload()

    def reload(self) -> bool:
        """Re-read the file if it changed (after `gateway keys generate`). Returns True if reloaded."""
        try:
            mtime = self.path.stat().st_mtime
        except OSError as e:
            raise KeyFileError(f"cannot read key file {self.path}: {e}") from e
        if mtime == self._mtime:
            return False
        keys = [_load_key(e, self.algorithm) for e in _read_entries(self.path)]
        self.keys = {k.kid: k for k in keys}
        self.current = keys[-1]
        # DESIGN §6: the rotation secret comes from the signing key material through HKDF with its
        # own label, so every instance sharing the key file derives the same one.
        hkdf = HKDF(hashes.SHA256(), 32, salt=None, info=ROTATION_LABEL)
        self.rotation_secret = hkdf.derive(keys[0].material)
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
