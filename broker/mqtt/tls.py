"""TLS for MQTT clients: one place decides how every client verifies the broker.

A client given a CA file connects over TLS and checks the broker's certificate
and host name against that CA; without one it speaks plain MQTT (loopback only).

Clients of one process share one SSL context per CA file: a fleet of a thousand
devices then parses the CA once, not a thousand times. The context is rebuilt
when the file changes (a new CA is picked up by the next client made).
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2  # the broker's listener refuses older ones too (mosquitto.conf)


@dataclass(frozen=True)
class TLSSettings:
    """How a client reaches the broker over TLS: the CA that signed the broker's certificate."""

    ca_file: Path

    @classmethod
    def from_option(cls, ca: str | None) -> TLSSettings | None:
        return cls(Path(ca)) if ca else None


def configure(client: mqtt.Client, tls: TLSSettings | None) -> None:
    """Turn on TLS with certificate and host-name verification, or leave the client plain.

    A missing or unreadable CA file raises here (FileNotFoundError, ssl.SSLError),
    at start-up, rather than as endless failed connection attempts.
    """
    if tls is None:
        return
    client.tls_set_context(client_context(tls.ca_file))
    client.tls_insecure_set(False)


def client_context(ca_file: Path) -> ssl.SSLContext:
    """A client context that trusts only `ca_file` and checks the host name (shared while the file is unchanged)."""
    path = Path(ca_file).resolve()
    st = path.stat()
    return _context(path, st.st_ino, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _context(path: Path, inode: int, mtime_ns: int, size: int) -> ssl.SSLContext:
    """The cache key includes the file's identity, so a replaced CA file gets a new context."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname on
    context.minimum_version = MINIMUM_VERSION
    context.load_verify_locations(cafile=str(path))  # only this CA: not the system's public ones
    return context
