"""The MQTT client id every cityledger client sends, and why it carries a prefix.

Mosquitto 2.0.11 (Debian 12's) drops a *connected* client from its client-id table
when it refuses a stranger who asked for that client's id without a username (the
listener's `use_username_as_clientid` refuses it after setting the id); the next
reload then crashes the broker or orphans the session (docs/security.md, "A refused
stranger cannot unseat a client"). The broker's `clientid_prefixes` check runs before
that id is set, so mosquitto.conf admits only ids that start with CLIENT_ID_PREFIX,
and `use_username_as_clientid` then replaces such an id by the username. Live ids are
therefore always usernames, which can never start with the prefix (its `:` is outside
the username pattern), so no refused id can equal one.
"""

from __future__ import annotations

# `:` cannot occur in a username (ledger.protocol.DEVICE_PATTERN, which broker/access.py
# enforces on every passwd line), so no live client id starts with this (tested).
CLIENT_ID_PREFIX = "cityledger:"


def mqtt_client_id(name: str) -> str:
    """The client id to connect with as `name` (a username, or any label): the prefix, then `name`.

    The broker replaces it by the username anyway; the name only makes the CONNECT
    readable. A name that already carries the prefix is returned as it is.
    """
    return name if name.startswith(CLIENT_ID_PREFIX) else CLIENT_ID_PREFIX + name
