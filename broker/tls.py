"""TLS for MQTT clients: one place decides how every client verifies the broker.

A client given a CA file connects over TLS and checks the broker's certificate
and host name against that CA; without one it speaks plain MQTT (loopback only).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt


@dataclass(frozen=True)
class TLSSettings:
    """How a client reaches the broker over TLS: the CA that signed the broker's certificate."""

    ca_file: Path

    @classmethod
    def from_option(cls, ca: str | None) -> TLSSettings | None:
        return cls(Path(ca)) if ca else None


def configure(client: mqtt.Client, tls: TLSSettings | None) -> None:
    """Turn on TLS with certificate and host-name verification, or leave the client plain."""
    if tls is None:
        return
    client.tls_set(ca_certs=str(tls.ca_file), cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.tls_insecure_set(False)
