"""Broker credentials and topic rights, generated from the device registry.

The broker is the only thing that stops a device from publishing readings under
another device's id, so its password and ACL files are derived mechanically from
the registry and never edited by hand. Every name is validated against the
protocol's patterns before it becomes a line: a newline, a space or a leading `#`
in a name would silently change what the file means to mosquitto.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, get_args

from broker import mosquitto
from ledger.chain.protocol import CHECKPOINT_TOPIC, DEVICE_PATTERN, ChainTopics, device_topic
from ledger.chain.records import DeviceRecord, ServiceRecord
from ledger.home import Home, write_private

# mosquitto 2.0's "sha512-pbkdf2" format: $7$<iterations>$<base64 salt>$<base64 hash>.
# 101 iterations and a 12-byte salt are what mosquitto_passwd 2.0 writes; the broker
# rejects any other salt length.
HASH_ID = 7
SALT_BYTES = 12
DEFAULT_ITERATIONS = 101
_B64 = r"[A-Za-z0-9+/]+={0,2}"
_HASH_RE = re.compile(rf"^\$7\$[1-9][0-9]*\${_B64}\${_B64}$")
_USERNAME_RE = re.compile(DEVICE_PATTERN)

Role = Literal["ingest", "observer", "witness", "acks"]
ROLES: tuple[str, ...] = get_args(Role)

# Service rights are fixed by role, so that adding a witness is a registry change
# and never an ACL edit.
ROLE_RULES: dict[str, tuple[str, ...]] = {
    "ingest": ("topic read city/#", "topic write city/+/+/+/ack", "topic write city/ledger/#"),
    "observer": ("topic read city/ledger/#", "topic read city/+/+/+/status"),
    # Ingest's publisher of device acks (ledger/ingest/acks.py): that and nothing else.
    "acks": ("topic write city/+/+/+/ack",),
    # An outside auditor: follows the header stream, reports only under its own name.
    "witness": (
        "topic read city/ledger/#",
        "topic write city/witness/{username}/alarm",
        "topic write city/witness/{username}/head",
    ),
}

# A district's own services (its ingest, workers, acks publisher, dashboard) are held to its
# district: a district's ingest cannot take another district's readings or speak for its chain.
DISTRICT_ROLE_RULES: dict[str, tuple[str, ...]] = {
    "ingest": (
        "topic read city/{district}/#",
        "topic write city/{district}/+/+/ack",
        "topic write city/ledger/districts/{district}/#",
    ),
    "observer": ("topic read city/ledger/#", "topic read city/{district}/+/+/status"),
    "acks": ("topic write city/{district}/+/+/ack",),
    "witness": ROLE_RULES["witness"],
}


@dataclass(frozen=True)
class DeviceAccess:
    """A device's broker identity: its username is its device id."""

    device: str
    district: str
    kind: str
    password_hash: str


@dataclass(frozen=True)
class ServiceAccess:
    """A service's broker identity (ingest, dashboard, witnesses)."""

    username: str
    password_hash: str
    role: Role


# ---------------------------------------------------------------- passwords


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS) -> str:
    """Hash a password the way mosquitto_passwd 2.0 does (PBKDF2-HMAC-SHA512, "$7$").

    The 64-byte key is derived from the raw salt bytes (not their base64 text).
    A fixed `salt` exists only for known-answer tests.
    """
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    if len(salt) != SALT_BYTES:
        raise ValueError(f"mosquitto needs a {SALT_BYTES}-byte salt, got {len(salt)}")
    if iterations < 1:
        raise ValueError("iterations must be positive")
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, dklen=64)
    return f"${HASH_ID}${iterations}${_b64(salt)}${_b64(key)}"


def new_password() -> str:
    """A fresh random password (192 bits, URL-safe so it survives any config file)."""
    return secrets.token_urlsafe(24)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# ---------------------------------------------------------------- validation


def _check_username(name: str) -> str:
    """A username becomes `user <name>` and `<name>:` lines, so it must be one plain token."""
    if not _USERNAME_RE.match(name):
        raise ValueError(f"invalid broker username {name!r}")
    return name


def _check_hash(password_hash: str) -> str:
    """Only a "$7$" hash may be written: anything else could smuggle a line or a colon."""
    if not _HASH_RE.match(password_hash):
        raise ValueError("password_hash is not a mosquitto $7$ hash")
    return password_hash


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown service role {role!r}")
    return role


def _check_unique(names: list[str]) -> None:
    """A device called like a service would inherit its rights: mosquitto merges `user` blocks."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate broker username {name!r}")
        seen.add(name)


# ---------------------------------------------------------------- rendering


def device_rules(device: DeviceAccess, checkpoint: str = CHECKPOINT_TOPIC) -> tuple[str, ...]:
    """The four ACL lines of one device: write its reading and status, read its ack and the
    checkpoint of the chain that ledgers it (its district's, when the district has one)."""
    topic = partial(device_topic, device.district, device.kind, device.device)
    return (
        f"topic write {topic('reading')}",
        f"topic write {topic('status')}",
        f"topic read {topic('ack')}",
        f"topic read {checkpoint}",
    )


def service_rules(service: ServiceAccess, district: str | None = None) -> tuple[str, ...]:
    """The ACL lines of a service, fixed by its role (and its own name, for witnesses), and by its
    district for a district's services."""
    rules = DISTRICT_ROLE_RULES if district else ROLE_RULES
    return tuple(
        rule.format(username=_check_username(service.username), district=district)
        for rule in rules[_check_role(service.role)]
    )


def render_passwd(devices: Iterable[DeviceAccess], services: Iterable[ServiceAccess]) -> str:
    """The password file: one `username:$7$...` line per device and service."""
    devices, services = list(devices), list(services)
    entries = [(d.device, d.password_hash) for d in devices] + [(s.username, s.password_hash) for s in services]
    _check_unique([name for name, _ in entries])
    return "".join(f"{_check_username(name)}:{_check_hash(h)}\n" for name, h in entries)


ACL_HEADER = "# Generated by cityledger (broker/access.py) from the device registry; do not edit.\n"


def render_acl(devices: Iterable[DeviceAccess], services: Iterable[ServiceAccess], district: str | None = None) -> str:
    """The ACL file: no anonymous section, then one `user` block of exact topics per identity
    (for a district's home: its devices read its chain's checkpoint, its services stay in it)."""
    return ACL_HEADER + _acl_blocks(list(devices), list(services), district)


def _acl_blocks(devices: list[DeviceAccess], services: list[ServiceAccess], district: str | None) -> str:
    _check_unique([d.device for d in devices] + [s.username for s in services])
    checkpoint = ChainTopics(district).checkpoint
    blocks = [_block(d.device, device_rules(d, checkpoint)) for d in devices]
    blocks += [_block(s.username, service_rules(s, district)) for s in services]
    return "".join(blocks)


def _block(username: str, rules: tuple[str, ...]) -> str:
    lines = [f"user {_check_username(username)}", *rules]
    return "\n" + "\n".join(lines) + "\n"


def write_access_files(home: Home, devices: Iterable[DeviceAccess], services: Iterable[ServiceAccess]) -> None:
    """Replace this home's share of the broker's passwd and ACL, then the merged files (0600, atomically).

    The city's home and each district's home share one broker, and each knows only
    its own devices and services: each writes a fragment (broker/access.d/OWNER.*),
    and the broker's files are all fragments joined, under a lock. Everything is
    rendered and checked (a login in two fragments included) before anything is
    written, so an invalid name leaves the old files in place. A running broker
    picks them up on `broker.mosquitto.reload`.
    """
    devices, services = list(devices), list(services)
    passwd = render_passwd(devices, services)
    acl = _acl_blocks(devices, services, home.district)
    owner = home.district or "city"
    fragments = home.access_fragments
    with _locked(fragments):
        shares = {o: texts for o, texts in _read_fragments(fragments).items() if o != owner}
        shares[owner] = (passwd, acl)
        order = sorted(shares, key=lambda o: (o != "city", o))
        _check_unique([name for o in order for name in _logins(shares[o][0])])
        write_private(fragments / f"{owner}.passwd", passwd)
        write_private(fragments / f"{owner}.acl", acl)
        write_private(home.passwd, "".join(shares[o][0] for o in order))
        write_private(home.acl, ACL_HEADER + "".join(shares[o][1] for o in order))


def logins_elsewhere(home: Home) -> set[str]:
    """Broker logins that other homes on this broker hold: a new device or service may not take one."""
    owner = home.district or "city"
    with _locked(home.access_fragments):
        return {
            name
            for o, (passwd, _) in _read_fragments(home.access_fragments).items()
            if o != owner
            for name in _logins(passwd)
        }


@contextlib.contextmanager
def _locked(fragments: Path) -> Iterator[None]:
    fragments.mkdir(parents=True, exist_ok=True)
    with (fragments / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_fragments(fragments: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for path in fragments.glob("*.passwd"):
        acl = path.with_suffix(".acl")
        out[path.stem] = (path.read_text(), acl.read_text() if acl.exists() else "")
    return out


def _logins(passwd: str) -> list[str]:
    return [line.split(":", 1)[0] for line in passwd.splitlines() if line]


class MosquittoLogins:
    """The ledger's registry as Mosquitto's logins: the keeper ledger/service/logins.py names.

    Each writer subscribes `keep_in_step` to its access changes, so the broker's files
    follow every enrolment, revocation, suspension and new service login, and a running
    broker reloads them.
    """

    def __init__(self, home: Home) -> None:
        self.home = home

    def new_login(self) -> tuple[str, str]:
        password = new_password()
        return password, hash_password(password)

    def logins_elsewhere(self) -> set[str]:
        return logins_elsewhere(self.home)

    def keep_in_step(self, devices: Sequence[DeviceRecord], services: Sequence[ServiceRecord]) -> None:
        write_access_files(
            self.home,
            [DeviceAccess(d.device, d.district, d.kind, d.mqtt_hash) for d in devices],
            [ServiceAccess(s.username, s.mqtt_hash, _check_role(s.role)) for s in services],  # type: ignore[arg-type]
        )
        mosquitto.reload(self.home)
