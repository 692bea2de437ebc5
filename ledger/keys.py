"""Ed25519 key files: created once with mode 0600, read back as PyNaCl keys."""

from __future__ import annotations

from pathlib import Path

from nacl.bindings import crypto_core_ed25519_is_valid_point
from nacl.signing import SigningKey, VerifyKey

from ledger.home import write_private


def create_key_file(path: Path) -> SigningKey:
    """Write a new key's 32-byte seed as hex, 0600; refuses to overwrite a key."""
    if path.exists():
        raise FileExistsError(f"{path} exists; refusing to replace a key")
    key = SigningKey.generate()
    write_private(path, key.encode().hex() + "\n")
    return key


def load_signing_key(path: Path) -> SigningKey:
    seed = bytes.fromhex(path.read_text().strip())
    if len(seed) != 32:
        raise ValueError(f"{path}: not a 32-byte Ed25519 seed")
    return SigningKey(seed)


def verify_key_from_hex(public_key: str) -> VerifyKey:
    """Parse a hex public key, with a clear error for anything that is not 32 bytes."""
    try:
        raw = bytes.fromhex(public_key)
    except ValueError as exc:
        raise ValueError("public key must be hex") from exc
    if len(raw) != 32:
        raise ValueError(f"public key must be 32 bytes, got {len(raw)}")
    return VerifyKey(raw)


def check_device_key(public_key: str) -> str:
    """A device key fit to enrol, as lowercase hex; ValueError saying why not.

    Small-order points and non-canonical encodings are refused: with such a key
    one signature can verify for many messages, or one message under many keys.
    """
    raw = verify_key_from_hex(public_key).encode()
    if not crypto_core_ed25519_is_valid_point(raw):
        raise ValueError("weak public key: a small-order point or a non-canonical encoding")
    return raw.hex()


def public_hex(key: SigningKey | VerifyKey) -> str:
    vk = key.verify_key if isinstance(key, SigningKey) else key
    return vk.encode().hex()
