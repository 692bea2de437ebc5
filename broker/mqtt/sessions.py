"""paho clients for the ledger's own services (ingest, witness, anchor): one way to build and connect them.

Each service acknowledges a message only once what it said is durable (manual
acks), and keeps a persistent MQTT 5 session, so whatever is published while it
is down, or was delivered but not yet acknowledged when it died, waits for it
at the broker. The devices' agents and the lean hot-path subscriber
(broker/mqtt/subscriber.py) build their connections their own way.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker.mqtt.client_ids import mqtt_client_id
from broker.mqtt.tls import TLSSettings
from broker.mqtt.tls import configure as configure_tls

SESSION_EXPIRY_S = 7 * 24 * 3600
# MQTT 5 cap on unacknowledged deliveries to one client, so also on what waits in its inbox:
# at most RECEIVE_MAXIMUM messages of at most max_packet_size (mosquitto.conf) each.
RECEIVE_MAXIMUM = 20000


def service_client(client_id: str, username: str, password: str, tls: TLSSettings | None) -> mqtt.Client:
    """An MQTT 5 client that acknowledges by hand and reconnects quickly after the broker returns.

    `client_id` goes out with the prefix the broker requires (broker/mqtt/client_ids.py); the
    broker then names the session by `username`.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=mqtt_client_id(client_id), protocol=mqtt.MQTTv5, manual_ack=True
    )
    client.username_pw_set(username, password)
    configure_tls(client, tls)
    client.reconnect_delay_set(0.2, 5)  # type: ignore[arg-type]  # paho only multiplies it: a float works
    return client


def start(
    client: mqtt.Client, host: str, port: int, *, persistent: bool = True, receive_maximum: int | None = None
) -> None:
    """Connect in the background and run paho's network thread.

    `persistent`: resume the session the broker kept (and keep it for a week after a
    disconnect); otherwise start clean and leave nothing behind.
    """
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_EXPIRY_S if persistent else 0
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    client.connect_async(host, port, keepalive=30, clean_start=not persistent, properties=props)
    client.loop_start()
