"""Publishing a chain's signed headers: every one on the header stream, the newest as the checkpoint.

Shared by ingest (the city's or a district's chain) and the city anchor. Both are
called under the writer's lock, so headers reach the broker in height order.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt

from ledger.chain.protocol import ChainTopics, signed_header_payload
from ledger.service.writer import LedgerWriter, Sealed


def publish_sealed(client: mqtt.Client, topics: ChainTopics, sealed: Sealed) -> None:
    signed = signed_header_payload(sealed.hash, sealed.header, sealed.sig)
    client.publish(topics.headers, signed, qos=1)
    client.publish(topics.checkpoint, signed, qos=1, retain=True)


def publish_head(client: mqtt.Client, topics: ChainTopics, writer: LedgerWriter) -> None:
    """Re-announce the head a service starts from: a ledger restored from an old copy shows here."""
    with writer.lock:  # no block may be sealed (and announced) between reading and publishing
        if writer.height < 0:
            return
        store = writer.store.cursor()  # called on paho's thread: never share the writer's cursor
        try:
            block = store.block(writer.height)
        finally:
            store.close()
        if block is not None:
            client.publish(
                topics.checkpoint,
                signed_header_payload(block["hash"], block["header"], block["sig"]),
                qos=1,
                retain=True,
            )
