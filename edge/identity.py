"""A device's identity: its id, kind, district, signing key and broker credentials.

The key is generated ON the device and never leaves its directory; enrolment
sends only the public key. Each device's secrets live in their own directory
(`home.fleet / <device id>`), both files 0600 and written atomically, so a
crash mid-write leaves either the old file or the new one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from ledger.chain.protocol import KINDS, device_topic, valid_device_id, valid_district
from ledger.home import Home, write_private

KEY_FILE = "key"
CREDENTIALS_FILE = "credentials.json"

# Called with a device whose key exists but which is not yet enrolled; returns
# the (mqtt username, mqtt password) the broker will accept for it.
Enroll = Callable[["DeviceIdentity"], tuple[str, str]]


def device_dir(home: Home, device: str) -> Path:
    """Where one simulated device keeps its key and credentials."""
    if not valid_device_id(device):
        raise ValueError(f"invalid device id {device!r}")
    return home.fleet / device


@dataclass(frozen=True)
class DeviceIdentity:
    """Who a device is to the ledger (its key) and to the broker (username and password)."""

    device: str
    kind: str
    district: str
    key: SigningKey = field(repr=False)
    username: str = ""
    password: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not valid_device_id(self.device):
            raise ValueError(f"invalid device id {self.device!r}")
        if self.kind not in KINDS:
            raise ValueError(f"invalid kind {self.kind!r}")
        if not valid_district(self.district):
            raise ValueError(f"invalid district {self.district!r}")

    @classmethod
    def generate(cls, device: str, kind: str, district: str) -> DeviceIdentity:
        """A new, not yet enrolled device with a fresh key."""
        return cls(device, kind, district, SigningKey.generate())

    @property
    def verify_key(self) -> VerifyKey:
        return self.key.verify_key

    @property
    def public_key_hex(self) -> str:
        return self.key.verify_key.encode().hex()

    @property
    def enrolled(self) -> bool:
        return bool(self.username and self.password)

    def with_credentials(self, username: str, password: str) -> DeviceIdentity:
        return replace(self, username=username, password=password)

    def topic(self, leaf: str) -> str:
        """This device's `reading`, `status` or `ack` topic."""
        return device_topic(self.district, self.kind, self.device, leaf)

    # ------------------------------------------------------------ storage

    def save_key(self, directory: Path) -> None:
        """Write the key's 32-byte seed as hex, 0600."""
        write_private(directory / KEY_FILE, self.key.encode().hex() + "\n")

    def save(self, directory: Path) -> None:
        """Write the key and, once enrolled, the credentials (both 0600)."""
        self.save_key(directory)
        if self.enrolled:
            document = {
                "device": self.device,
                "kind": self.kind,
                "district": self.district,
                "username": self.username,
                "password": self.password,
            }
            write_private(directory / CREDENTIALS_FILE, json.dumps(document, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> DeviceIdentity:
        """An enrolled device from its directory (FileNotFoundError if it has no credentials yet)."""
        key = load_key(directory)
        if key is None:
            raise FileNotFoundError(directory / KEY_FILE)
        document = json.loads((directory / CREDENTIALS_FILE).read_text())
        return cls(
            device=document["device"],
            kind=document["kind"],
            district=document["district"],
            key=key,
            username=document["username"],
            password=document["password"],
        )


def load_key(directory: Path) -> SigningKey | None:
    """The device's key, None if it has none yet."""
    try:
        text = (directory / KEY_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return SigningKey(bytes.fromhex(text))


def provision(home: Home, device: str, kind: str, district: str, enroll: Enroll) -> tuple[DeviceIdentity, bool]:
    """The device's identity, creating and enrolling it on first use. Returns (identity, newly enrolled).

    The key is saved before `enroll` is called, so a crash in between re-enrols
    the same key rather than a second one. An existing device must match the
    kind and district asked for: a device id never changes what it is.
    """
    directory = device_dir(home, device)
    if (directory / CREDENTIALS_FILE).exists():
        identity = DeviceIdentity.load(directory)
        if (identity.device, identity.kind, identity.district) != (device, kind, district):
            raise ValueError(
                f"{directory} holds {identity.device} ({identity.kind}, {identity.district}), "
                f"not {device} ({kind}, {district})"
            )
        return identity, False
    key = load_key(directory)
    identity = DeviceIdentity(device, kind, district, key) if key else DeviceIdentity.generate(device, kind, district)
    if key is None:
        identity.save_key(directory)
    username, password = enroll(identity)
    identity = identity.with_credentials(username, password)
    identity.save(directory)
    return identity, True
