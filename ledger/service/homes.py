"""Making a home's ledger: the ledger key, the schema, the service logins, genesis and the
default tariffs. `cityledger init`, `up` and a new district chain all start here.
"""

from __future__ import annotations

from typing import Any

from ledger.billing.tariffs import DEFAULT_FILE
from ledger.chain.records import Batch
from ledger.clock import now_ms
from ledger.errors import Refused
from ledger.home import Home
from ledger.keys import create_key_file, load_signing_key, public_hex
from ledger.service.logins import installed_logins
from ledger.service.operations.billing import load_tariffs
from ledger.service.writer import ORIGIN_META, SERVICES, LedgerWriter, check_origin_base, ensure_service_login
from ledger.store import billing_queries
from ledger.store.store import Store


def initialize(home: Home, log_origin: str | None = None) -> dict[str, Any]:
    """Create the home, ledger key, schema, service logins and genesis; idempotent.

    `log_origin`: the deployment's name for its transparency log (PROTOCOL.md section 7), to
    which the chain's own name is added; it is fixed by the first `init` (a log's origin is its
    identity to witnesses and verifiers) and a later one naming another is refused.
    """
    home.ensure()
    created = not home.ledger_key.exists()
    key = create_key_file(home.ledger_key) if created else load_signing_key(home.ledger_key)
    store = Store.open(home.database)
    try:
        known = store.get_meta("ledger_key")
        if known is None:
            store.set_meta("ledger_key", public_hex(key))
            store.set_meta("first_ledger_key", public_hex(key))
            home.trusted_key.write_text(public_hex(key) + "\n")
        elif known != public_hex(key) and not home.ledger_next_key.exists():
            raise RuntimeError(f"{home.ledger_key} does not match the ledger's key {known}")
        if log_origin is not None:
            origin = f"{check_origin_base(log_origin)}/{home.district or 'city'}"
            known_origin = store.get_meta(ORIGIN_META)
            if known_origin is None:
                store.set_meta(ORIGIN_META, origin)
            elif known_origin != origin:
                raise Refused(f"this ledger's log is {known_origin}; a log's origin never changes")
        logins = installed_logins(home)
        for username, role in SERVICES:
            ensure_service_login(home, store, logins, username, role)
        writer = LedgerWriter(home, store, key, logins)
        if writer.height < 0:
            district = {"district": home.district} if home.district else {}
            writer.commit(
                Batch(), [{"entry": "ledger_init", "ledger_key": public_hex(key), **district, "at": now_ms()}]
            )
        if billing_queries.latest_tariffs(store) is None:
            load_tariffs(writer, DEFAULT_FILE.read_text())
        writer.publish_access()
        return {
            "home": str(home.root),
            "ledger_key": public_hex(key),
            "created": created,
            "height": writer.height,
            "log_origin": writer.log_origin,
        }
    finally:
        store.close()
