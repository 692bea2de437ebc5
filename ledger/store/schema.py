"""DuckDB schema as numbered migrations, applied in order, each exactly once.

Readings carry no leaf hash and no JSON text: both are recomputed from the
members, which keeps a reading near 90 bytes on disk. No index on readings:
uniqueness is enforced by the single writer's in-memory sequence state.
"""

from __future__ import annotations

import duckdb

from ledger.store.transactions import transaction

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
        CREATE TABLE blocks (
            height BIGINT PRIMARY KEY, hash VARCHAR NOT NULL, prev VARCHAR NOT NULL,
            header VARCHAR NOT NULL, sig BLOB NOT NULL, size INTEGER NOT NULL, sealed_at BIGINT NOT NULL);
        CREATE TABLE readings (
            height BIGINT NOT NULL, idx INTEGER NOT NULL, device VARCHAR NOT NULL, kind VARCHAR NOT NULL,
            seq BIGINT NOT NULL, ts BIGINT NOT NULL, value BIGINT NOT NULL, sig BLOB NOT NULL,
            received_at BIGINT NOT NULL);
        CREATE TABLE entries (
            height BIGINT NOT NULL, idx INTEGER NOT NULL, type VARCHAR NOT NULL, body VARCHAR NOT NULL);
        CREATE TABLE devices (
            device VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, district VARCHAR NOT NULL, account VARCHAR,
            public_key VARCHAR NOT NULL, status VARCHAR NOT NULL, mqtt_hash VARCHAR NOT NULL,
            enrolled_at BIGINT NOT NULL, revoked_at BIGINT);
        CREATE TABLE services (username VARCHAR PRIMARY KEY, role VARCHAR NOT NULL, mqtt_hash VARCHAR NOT NULL);
        CREATE TABLE quarantine (
            received_at BIGINT NOT NULL, topic VARCHAR NOT NULL, reason VARCHAR NOT NULL,
            device VARCHAR, detail VARCHAR, payload BLOB NOT NULL);
        CREATE TABLE duplicates (device VARCHAR NOT NULL, seq BIGINT NOT NULL, received_at BIGINT NOT NULL);
        CREATE TABLE device_status (device VARCHAR PRIMARY KEY, status VARCHAR NOT NULL, changed_at BIGINT NOT NULL);
        """,
    ),
    (
        2,
        """
        CREATE TABLE witness_reports (
            witness VARCHAR NOT NULL, kind VARCHAR NOT NULL, body VARCHAR NOT NULL, received_at BIGINT NOT NULL);
        CREATE TABLE device_keys (
            device VARCHAR NOT NULL, public_key VARCHAR NOT NULL, from_height BIGINT NOT NULL, since BIGINT NOT NULL);
        INSERT INTO meta SELECT 'first_ledger_key', json_extract_string(body, '$.ledger_key') FROM entries
            WHERE type = 'ledger_init' AND NOT EXISTS (SELECT 1 FROM meta WHERE key = 'first_ledger_key');
        INSERT INTO device_keys SELECT d.device, d.public_key, coalesce(
            (SELECT min(e.height) FROM entries e WHERE e.type = 'device_enrolled'
              AND json_extract_string(e.body, '$.device') = d.device), 0), d.enrolled_at FROM devices d;
        """,
    ),
    (
        3,
        """
        -- Every rejected message is counted here, even when its details are not kept.
        CREATE TABLE reject_counts (
            device VARCHAR NOT NULL, minute BIGINT NOT NULL, reason VARCHAR NOT NULL, count BIGINT NOT NULL,
            PRIMARY KEY (device, minute, reason));
        INSERT INTO reject_counts SELECT coalesce(device, '?'), received_at // 60000, reason, count(*)
            FROM quarantine GROUP BY ALL;
        """,
    ),
    (
        4,
        """
        CREATE TABLE accounts (
            account VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, customer_class VARCHAR NOT NULL,
            created_at BIGINT NOT NULL);
        CREATE TABLE tariff_versions (
            version INTEGER PRIMARY KEY, loaded_at BIGINT NOT NULL, source VARCHAR NOT NULL, sha256 VARCHAR NOT NULL);
        CREATE TABLE parking_zones (space VARCHAR NOT NULL, zone_class INTEGER NOT NULL, from_ts BIGINT NOT NULL);
        CREATE TABLE parking_leases (space VARCHAR NOT NULL, account VARCHAR, from_ts BIGINT NOT NULL);
        CREATE TABLE parking_checkins (space VARCHAR NOT NULL, account VARCHAR NOT NULL, checked_in_at BIGINT NOT NULL);
        CREATE TABLE meter_replacements (
            device VARCHAR NOT NULL, ts BIGINT NOT NULL, old_final BIGINT NOT NULL, new_initial BIGINT NOT NULL,
            operator VARCHAR NOT NULL, recorded_at BIGINT NOT NULL);
        CREATE TABLE bills (
            account VARCHAR NOT NULL, month VARCHAR NOT NULL, issued_at BIGINT NOT NULL, total VARCHAR NOT NULL,
            body VARCHAR NOT NULL, hash VARCHAR NOT NULL, height BIGINT NOT NULL, PRIMARY KEY (account, month));
        CREATE TABLE adjustments (
            id VARCHAR PRIMARY KEY, account VARCHAR NOT NULL, amount VARCHAR NOT NULL, reason VARCHAR NOT NULL,
            operator VARCHAR NOT NULL, created_at BIGINT NOT NULL, height BIGINT NOT NULL);
        """,
    ),
    (
        5,
        """
        -- An anomaly as first raised; what happens to it afterwards is only ever appended below.
        CREATE TABLE anomalies (
            id VARCHAR PRIMARY KEY, key VARCHAR NOT NULL, type VARCHAR NOT NULL, device VARCHAR NOT NULL,
            account VARCHAR, district VARCHAR NOT NULL, raised_at BIGINT NOT NULL);
        CREATE TABLE anomaly_events (
            id VARCHAR NOT NULL, at_ms BIGINT NOT NULL, status VARCHAR NOT NULL, operator VARCHAR,
            note VARCHAR, window_start BIGINT, window_end BIGINT, severity VARCHAR, evidence VARCHAR,
            detail VARCHAR);
        """,
    ),
    (
        6,
        """
        CREATE TABLE logins (
            role VARCHAR NOT NULL, id VARCHAR NOT NULL, password_hash VARCHAR NOT NULL, changed_at BIGINT NOT NULL,
            failures INTEGER NOT NULL DEFAULT 0, locked_until BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (role, id));
        CREATE TABLE operators (
            operator VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, districts VARCHAR NOT NULL, created_at BIGINT NOT NULL);
        CREATE TABLE disputes (
            id VARCHAR NOT NULL, at_ms BIGINT NOT NULL, account VARCHAR NOT NULL, author VARCHAR NOT NULL,
            status VARCHAR NOT NULL, subject VARCHAR, message VARCHAR NOT NULL);
        """,
    ),
    (
        7,
        """
        -- Every duplicate counted here; the `duplicates` rows (which seqs) are kept up to a cap.
        CREATE TABLE duplicate_counts (
            device VARCHAR NOT NULL, minute BIGINT NOT NULL, count BIGINT NOT NULL, PRIMARY KEY (device, minute));
        INSERT INTO duplicate_counts SELECT device, received_at // 60000, count(*) FROM duplicates GROUP BY ALL;
        """,
    ),
    (
        8,
        """
        -- Derived, rebuilt from readings by `roll_up`: per device and UTC day, the first and last
        -- reading and what the billing checks look for in between (ledger/billing/device_days.py).
        CREATE TABLE device_days (
            device VARCHAR NOT NULL, day INTEGER NOT NULL, n INTEGER NOT NULL,
            first_ts BIGINT NOT NULL, first_value BIGINT NOT NULL, first_seq BIGINT NOT NULL,
            last_ts BIGINT NOT NULL, last_value BIGINT NOT NULL, last_seq BIGINT NOT NULL,
            drops INTEGER NOT NULL, breaks INTEGER NOT NULL, changes INTEGER NOT NULL, max_gap BIGINT NOT NULL);
        """,
    ),
    (
        9,
        """
        -- A city of district chains (ledger/chain/anchors.py): each district's first ledger key, and each
        -- district head the city chain anchored, with its signed header (what keys it hands on).
        CREATE TABLE districts (
            district VARCHAR PRIMARY KEY, ledger_key VARCHAR NOT NULL, added_at BIGINT NOT NULL, height BIGINT NOT NULL);
        CREATE TABLE district_heads (
            district VARCHAR NOT NULL, height BIGINT NOT NULL, hash VARCHAR NOT NULL, header VARCHAR NOT NULL,
            sig VARCHAR NOT NULL, anchored_at BIGINT NOT NULL, city_height BIGINT NOT NULL,
            PRIMARY KEY (district, height));
        """,
    ),
    (
        10,
        """
        -- Issue 15. A key rotation names the first seq the new key signs (ledger/chain/keyspans.py);
        -- keys recorded before that sign every reading sealed after them (from_seq 0).
        ALTER TABLE device_keys ADD COLUMN from_seq BIGINT DEFAULT 0;
        -- Gaps an operator settled for good: the device's ack passes them (`devices write-off`).
        CREATE TABLE write_offs (
            device VARCHAR NOT NULL, from_seq BIGINT NOT NULL, to_seq BIGINT NOT NULL, reason VARCHAR NOT NULL,
            operator VARCHAR NOT NULL, written_at BIGINT NOT NULL, height BIGINT NOT NULL);
        -- Adjustments above the approval limit wait here for a second operator (four eyes);
        -- the request and the decision are ledger entries, this is their work queue.
        CREATE TABLE adjustment_requests (
            id VARCHAR PRIMARY KEY, account VARCHAR NOT NULL, amount VARCHAR NOT NULL, reason VARCHAR NOT NULL,
            operator VARCHAR NOT NULL, requested_at BIGINT NOT NULL, height BIGINT NOT NULL, status VARCHAR NOT NULL,
            decided_by VARCHAR, decided_at BIGINT);
        """,
    ),
    (
        11,
        """
        -- Issue 15. Sign-in throttling (ledger/people/signin.py): failures per pair (login@source),
        -- account (login) and source, each with the time of its last failure; a pair also
        -- remembers its last success, which makes its source known for that login.
        CREATE TABLE signin_counts (
            scope VARCHAR NOT NULL, key VARCHAR NOT NULL, failures INTEGER NOT NULL,
            last_failure_ms BIGINT NOT NULL, last_success_ms BIGINT NOT NULL, PRIMARY KEY (scope, key));
        -- Every failed sign-in, for operators (never the password). Throttled attempts are
        -- counted in `attempts`, one row per login, source and minute.
        CREATE TABLE signin_failures (
            at_ms BIGINT NOT NULL, role VARCHAR NOT NULL, id VARCHAR NOT NULL, source VARCHAR NOT NULL,
            throttled BOOLEAN NOT NULL, attempts INTEGER NOT NULL, last_ms BIGINT NOT NULL);
        """,
    ),
    (
        12,
        """
        -- Issue 19. The HTTP API's callers (ledger/people/tokens.py): tokens stored only as the
        -- SHA-256 of their secret; scopes as text `DISTRICTS:DATASETS:MODE`, one per line.
        CREATE TABLE api_tokens (
            id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, principal VARCHAR NOT NULL, scopes VARCHAR NOT NULL,
            secret_hash VARCHAR NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL,
            revoked_at BIGINT, rate_per_minute INTEGER NOT NULL, height BIGINT NOT NULL);
        -- Sharing between districts and agencies; each grant and revocation is also a ledger entry.
        CREATE TABLE sharing_grants (
            id VARCHAR PRIMARY KEY, from_district VARCHAR NOT NULL, to_agency VARCHAR NOT NULL,
            dataset VARCHAR NOT NULL, granted_at BIGINT NOT NULL, until BIGINT NOT NULL, operator VARCHAR NOT NULL,
            height BIGINT NOT NULL, revoked_at BIGINT, revoked_by VARCHAR);
        -- Every read made under a grant, and every request refused for its scope.
        CREATE TABLE api_access (
            at_ms BIGINT NOT NULL, token VARCHAR NOT NULL, principal VARCHAR NOT NULL, method VARCHAR NOT NULL,
            path VARCHAR NOT NULL, dataset VARCHAR NOT NULL, district VARCHAR, grant_id VARCHAR,
            status INTEGER NOT NULL, records BIGINT NOT NULL);
        -- Writes made with an Idempotency-Key: the answer is given again to a repeat of the request.
        CREATE TABLE api_idempotency (
            token VARCHAR NOT NULL, key VARCHAR NOT NULL, fingerprint VARCHAR NOT NULL, status INTEGER NOT NULL,
            body VARCHAR NOT NULL, at_ms BIGINT NOT NULL, PRIMARY KEY (token, key));
        -- Payments recorded by payment providers against an account's bill; each is a ledger entry.
        CREATE TABLE payments (
            id VARCHAR PRIMARY KEY, account VARCHAR NOT NULL, month VARCHAR NOT NULL, amount VARCHAR NOT NULL,
            reference VARCHAR NOT NULL, recorded_by VARCHAR NOT NULL, paid_at BIGINT NOT NULL,
            recorded_at BIGINT NOT NULL, height BIGINT NOT NULL);
        """,
    ),
]


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the schema up to date; returns the version now in force."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    for version, sql in MIGRATIONS:
        if version in done:
            continue
        with transaction(con):
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations VALUES (?, now())", [version])
    return max(v for v, _ in MIGRATIONS)
