"""Tampering with the DuckDB file, by someone with full write access to it.

Each case edits a real ledger file directly and runs `cityledger verify` as an
auditor would: it must exit 1 and name the first bad block (and the reading,
where one reading is to blame). Cases that only an outside copy can catch run
`verify --witness` against headers a witness accepted while the ledger grew.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from nacl.signing import SigningKey

from ledger.chain import merkle
from ledger.chain.blocks import block_hash, sign_header
from ledger.chain.protocol import canonical_json, sign_reading, signature_bytes
from ledger.chain.tlog import CompactRange
from ledger.service.operations import billing as billing_ops
from ledger.store.store import Store
from tests.support.ledgers import T0, Built, build_ledger

# build_ledger: 3 devices x 12 readings in blocks of 7 after 4 registry blocks (genesis + 3 enrolments).
FIRST_READING_BLOCK = 4


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return build_ledger(tmp_path / "home")


def verify(built: Built, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", "--home", str(built.home.root), "verify", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def sql(built: Built, statement: str, *args: object) -> list[tuple]:
    con = duckdb.connect(str(built.home.database))
    try:
        return con.execute(statement, list(args)).fetchall()
    finally:
        con.close()


def assert_fails_at(out: subprocess.CompletedProcess[str], height: int, reading: str | None = None) -> None:
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"first failure: block {height}" in out.stdout, out.stdout
    if reading:
        assert f"reading {reading}" in out.stdout, out.stdout


def where(built: Built, device: str, seq: int) -> tuple[int, int]:
    return sql(built, "SELECT height, idx FROM readings WHERE device = ? AND seq = ?", device, seq)[0]


def test_untouched_ledger_verifies(built: Built) -> None:
    out = verify(built, "--deep")
    assert out.returncode == 0 and "ledger intact" in out.stdout, out.stdout + out.stderr


def test_changed_value_is_named(built: Built) -> None:
    height, _ = where(built, "wm-d01-000001", 5)
    sql(built, "UPDATE readings SET value = value + 1 WHERE device = 'wm-d01-000001' AND seq = 5")
    assert_fails_at(verify(built), height, "wm-d01-000001#5")


def test_changed_timestamp_is_named(built: Built) -> None:
    height, _ = where(built, "wm-d01-000002", 9)
    sql(built, "UPDATE readings SET ts = ts - 60000 WHERE device = 'wm-d01-000002' AND seq = 9")
    assert_fails_at(verify(built), height, "wm-d01-000002#9")


def test_deleted_reading_is_named(built: Built) -> None:
    height, idx = where(built, "wm-d01-000000", 3)
    sql(built, "DELETE FROM readings WHERE device = 'wm-d01-000000' AND seq = 3")
    out = verify(built)
    assert_fails_at(out, height)
    assert f"leaf {idx}" in out.stdout or "leaves, header says" in out.stdout


def test_inserted_forged_reading_is_caught(built: Built) -> None:
    height, idx = where(built, "wm-d01-000000", 4)
    forger = SigningKey.generate()
    fake = sign_reading(forger, device="wm-d01-000000", kind="water", seq=99, ts=T0, value=1)
    size = sql(built, "SELECT size FROM blocks WHERE height = ?", height)[0][0]
    sql(
        built,
        "INSERT INTO readings VALUES (?, ?, 'wm-d01-000000', 'water', 99, ?, 1, ?, ?)",
        height,
        size,
        T0,
        signature_bytes(fake.sig),
        T0,
    )
    assert_fails_at(verify(built), height)


def test_swapped_readings_are_caught(built: Built) -> None:
    height, a = where(built, "wm-d01-000000", 6)
    b = sql(built, "SELECT max(idx) FROM readings WHERE height = ?", height)[0][0]
    assert a != b
    sql(
        built,
        "UPDATE readings SET idx = CASE WHEN idx = ? THEN ? ELSE ? END WHERE height = ? AND idx IN (?, ?)",
        a,
        b,
        a,
        height,
        a,
        b,
    )
    out = verify(built)
    assert_fails_at(out, height)
    assert "altered or reordered" in out.stdout


def test_changed_header_field_is_caught(built: Built) -> None:
    height = FIRST_READING_BLOCK + 1
    header = json.loads(sql(built, "SELECT header FROM blocks WHERE height = ?", height)[0][0])
    header["sealed_at"] += 1
    sql(built, "UPDATE blocks SET header = ? WHERE height = ?", canonical_json(header).decode(), height)
    out = verify(built)
    assert_fails_at(out, height)
    assert "signature" in out.stdout


def _rechain(built: Built, start: int, key: SigningKey | None) -> None:
    """Recompute roots, the log, headers and hashes from `start` on, as a forger would; sign with
    `key` (a stolen ledger key) or keep the old signatures (no key)."""
    con = duckdb.connect(str(built.home.database))
    try:
        prev = con.execute("SELECT hash FROM blocks WHERE height = ?", [start - 1]).fetchone()[0]
        store = Store(con)
        log = CompactRange()
        for height in range(start):
            log.append(
                merkle.leaf_hash(raw if raw is not None else obj.leaf_data()) for _, obj, raw in store.leaves(height)
            )
        for height, header_json, sig in con.execute(
            "SELECT height, header, sig FROM blocks WHERE height >= ? ORDER BY height", [start]
        ).fetchall():
            leaves = store.leaves(height)
            hashes = [merkle.leaf_hash(raw if raw is not None else obj.leaf_data()) for _, obj, raw in leaves]
            log.append(hashes)
            header = {**json.loads(header_json), "prev": prev, "root": merkle.root(hashes).hex(), "size": len(hashes)}
            if "log_root" in header:
                header.update(log_size=log.size, log_root=log.root().hex())
            new_sig = sign_header(key, header) if key else bytes(sig)
            prev = block_hash(header)
            con.execute(
                "UPDATE blocks SET header = ?, hash = ?, prev = ?, sig = ?, size = ? WHERE height = ?",
                [canonical_json(header).decode(), prev, header["prev"], new_sig, header["size"], height],
            )
    finally:
        con.close()


def test_rewritten_and_rehashed_chain_without_the_key_is_caught(built: Built) -> None:
    height, _ = where(built, "wm-d01-000001", 7)
    sql(built, "UPDATE readings SET value = 0 WHERE device = 'wm-d01-000001' AND seq = 7")
    _rechain(built, height, key=None)
    out = verify(built)
    assert_fails_at(out, height)
    assert "signature" in out.stdout


# ---------------------------------------------------------------- caught only with a witness


def witness_copy(built: Built, directory: Path) -> Path:
    """Feed every signed header, in order, through a witness as it would arrive over MQTT."""
    from ledger.chain.protocol import signed_header_payload
    from ledger.chain.witness import Accepted, check
    from ledger.store.witness_files import WitnessStore

    store = WitnessStore.open(directory, built.first_key)
    assert isinstance(store, WitnessStore), store
    con = duckdb.connect(str(built.home.database), read_only=True)
    try:
        rows = con.execute("SELECT hash, header, sig FROM blocks ORDER BY height").fetchall()
    finally:
        con.close()
    for hash_, header, sig in rows:
        outcome = check(store.state, signed_header_payload(hash_, json.loads(header), bytes(sig)), source="headers")
        assert isinstance(outcome, Accepted), outcome
        store.record(outcome, 0)
    return directory


def test_deleting_the_last_block_is_caught_with_a_witness(built: Built, tmp_path: Path) -> None:
    witness = witness_copy(built, tmp_path / "witness")
    last = sql(built, "SELECT max(height) FROM blocks")[0][0]
    sql(built, "DELETE FROM readings WHERE height = ?", last)
    sql(built, "DELETE FROM blocks WHERE height = ?", last)
    assert verify(built).returncode == 0  # a shorter chain is a valid chain
    out = verify(built, "--witness", str(witness))
    assert_fails_at(out, last)
    assert "missing" in out.stdout


def test_rewritten_and_resigned_with_a_stolen_key_is_caught_with_a_witness(built: Built, tmp_path: Path) -> None:
    witness = witness_copy(built, tmp_path / "witness")
    stolen = SigningKey(bytes.fromhex(built.home.ledger_key.read_text().strip()))
    height, _ = where(built, "wm-d01-000000", 8)
    forger = SigningKey.generate()  # not even the device's key: only --deep would notice that
    fake = sign_reading(forger, device="wm-d01-000000", kind="water", seq=8, ts=T0, value=1)
    sql(
        built,
        "UPDATE readings SET value = 1, ts = ?, sig = ? WHERE device = 'wm-d01-000000' AND seq = 8",
        T0,
        signature_bytes(fake.sig),
    )
    _rechain(built, height, key=stolen)
    deep = verify(built, "--deep")
    assert_fails_at(deep, height, "wm-d01-000000#8")
    # Forge the device signature too (say its key was stolen as well): only the witness is left.
    sql(
        built,
        "UPDATE readings SET sig = ? WHERE device = 'wm-d01-000000' AND seq = 8",
        signature_bytes(
            sign_reading(built.keys["wm-d01-000000"], device="wm-d01-000000", kind="water", seq=8, ts=T0, value=1).sig
        ),
    )
    _rechain(built, height, key=stolen)
    assert verify(built, "--deep").returncode == 0
    out = verify(built, "--witness", str(witness))
    assert_fails_at(out, height)
    assert "differs from the witness" in out.stdout


def test_restoring_an_older_copy_is_caught_with_a_witness(built: Built, tmp_path: Path) -> None:
    from ledger.chain.records import Batch, LedgeredReading
    from ledger.service.writer import LedgerWriter

    old_copy = tmp_path / "old.duckdb"
    shutil.copy(built.home.database, old_copy)
    first_new = sql(built, "SELECT max(height) FROM blocks")[0][0] + 1
    writer = LedgerWriter.open(built.home)
    try:
        key = built.keys["wm-d01-000001"]
        more = [
            sign_reading(key, device="wm-d01-000001", kind="water", seq=s, ts=T0 + s * 900_000, value=5000 + s)
            for s in (13, 14, 15)
        ]
        writer.commit(Batch(readings=[LedgeredReading(r, r.ts) for r in more]))
    finally:
        writer.close()
    witness = witness_copy(built, tmp_path / "witness")
    shutil.copy(old_copy, built.home.database)
    assert verify(built).returncode == 0
    out = verify(built, "--witness", str(witness))
    assert_fails_at(out, first_new)


def test_a_header_that_is_not_json_is_named_not_a_crash(built: Built) -> None:
    sql(built, "UPDATE blocks SET header = 'not json {' WHERE height = ?", FIRST_READING_BLOCK + 1)
    out = verify(built)
    assert_fails_at(out, FIRST_READING_BLOCK + 1)
    assert "not a JSON object" in out.stdout and "Traceback" not in out.stderr
    assert "not a JSON object" in verify(built, "--deep").stdout


def test_an_entry_that_is_not_json_is_named_not_a_crash(built: Built) -> None:
    sql(built, "UPDATE entries SET body = '[1, 2' WHERE height = 2")
    out = verify(built)
    assert_fails_at(out, 2, "leaf 0")
    assert "stored entry is not a JSON object" in out.stdout and "Traceback" not in out.stderr


# ---------------------------------------------------------------- invariants of the chain (issue 15)


def test_a_reading_ledgered_twice_by_the_ledger_key_holder_is_named(built: Built) -> None:
    """A copy of a properly signed reading, sealed again in a re-hashed, re-signed chain: every
    signature verifies, so only the rule "each (device, seq) is ledgered once" can catch it."""
    stolen = SigningKey(bytes.fromhex(built.home.ledger_key.read_text().strip()))
    last = sql(built, "SELECT max(height) FROM blocks")[0][0]
    size = sql(built, "SELECT size FROM blocks WHERE height = ?", last)[0][0]
    sql(
        built,
        "INSERT INTO readings SELECT ?, ?, device, kind, seq, ts, value, sig, received_at FROM readings"
        " WHERE device = 'wm-d01-000001' AND seq = 2",
        last,
        size,
    )
    _rechain(built, last, key=stolen)
    for extra in ((), ("--deep",)):
        out = verify(built, *extra)
        assert_fails_at(out, last, "wm-d01-000001#2")
        assert "reading ledgered twice" in out.stdout


REVOKED, BOUND, REKEYED = "wm-d01-000002", "wm-d01-000000", "wm-d01-000001"


@pytest.fixture(scope="module")
def registry_pristine(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """build_ledger, then what the registry cases need: accounts, a meter bound to one, a key
    rotated with a from_seq, a revoked meter. Built once; each test tampers with a copy."""
    from ledger.service.writer import LedgerWriter

    built = build_ledger(tmp_path_factory.mktemp("registry") / "home")
    writer = LedgerWriter.open(built.home)
    try:
        billing_ops.add_account(writer, "hh-1", "Household one", "residential")
        billing_ops.add_account(writer, "hh-2", "Household two", "non-residential")
        billing_ops.assign_account(writer, BOUND, "hh-1", operator="op-1")
        built.keys[REKEYED] = SigningKey.generate()
        writer.rotate_device_key(REKEYED, built.keys[REKEYED].verify_key.encode().hex(), from_seq=13, operator="op-1")
        writer.revoke_device(REVOKED, operator="op-1")
    finally:
        writer.close()
    return built


@pytest.fixture
def registry(registry_pristine: Built, tmp_path: Path) -> Built:
    shutil.copytree(registry_pristine.home.root, tmp_path / "home")
    from ledger.home import Home

    return Built(Home(tmp_path / "home"), registry_pristine.first_key, dict(registry_pristine.keys))


def assert_disagrees(out: subprocess.CompletedProcess[str], *lines: str) -> None:
    """exit 1, no chain failure, and each line among the registry disagreements listed."""
    assert out.returncode == 1, out.stdout + out.stderr
    assert "registry tables disagree with the chain" in out.stdout and "first failure" not in out.stdout, out.stdout
    for line in lines:
        assert line in out.stdout, out.stdout


def key_of(built: Built, device: str) -> str:
    return built.keys[device].verify_key.encode().hex()


def test_untouched_registry_agrees_with_the_chain(registry: Built) -> None:
    out = verify(registry, "--deep")
    assert out.returncode == 0 and "registry tables agree with the chain" in out.stdout, out.stdout + out.stderr


def test_a_swapped_device_key_is_named_in_both_tables(registry: Built) -> None:
    """The forger's key in the registry (ingest would take its readings); the chain still names the real one."""
    forger = SigningKey.generate().verify_key.encode().hex()
    sql(registry, "UPDATE devices SET public_key = ? WHERE device = ?", forger, BOUND)
    sql(registry, "UPDATE device_keys SET public_key = ? WHERE device = ?", forger, BOUND)
    enrolled = sql(registry, "SELECT from_height FROM device_keys WHERE device = ?", BOUND)[0][0]
    assert verify(registry).returncode == 0  # the chain itself is intact: only --deep reads the tables
    assert_disagrees(
        verify(registry, "--deep"),
        f"devices[device={BOUND}]: public_key is '{forger}', the chain says '{key_of(registry, BOUND)}'",
        f"device_keys[device={BOUND}, from_height={enrolled}]: public_key is '{forger}', "
        f"the chain says '{key_of(registry, BOUND)}'",
    )


def test_a_rotation_moved_to_another_seq_is_named(registry: Built) -> None:
    sql(registry, "UPDATE device_keys SET from_seq = 1 WHERE device = ? AND from_seq = 13", REKEYED)
    assert_disagrees(verify(registry, "--deep"), f"device_keys[device={REKEYED}, ", "from_seq is 1, the chain says 13")


def test_an_unrevoked_device_is_named(registry: Built) -> None:
    sql(registry, "UPDATE devices SET status = 'active', revoked_at = NULL WHERE device = ?", REVOKED)
    assert_disagrees(
        verify(registry, "--deep"),
        f"devices[device={REVOKED}]: status is 'active', the chain says 'revoked'",
        f"devices[device={REVOKED}]: revoked_at is None, the chain says ",
    )


def test_a_deleted_revocation_is_named(registry: Built) -> None:
    """The revocation taken out of a re-signed chain, the table left saying revoked."""
    stolen = SigningKey(bytes.fromhex(registry.home.ledger_key.read_text().strip()))
    height = sql(registry, "SELECT height FROM entries WHERE type = 'device_revoked'")[0][0]
    sql(registry, "DELETE FROM entries WHERE type = 'device_revoked'")
    _rechain(registry, height, key=stolen)
    assert_disagrees(
        verify(registry, "--deep"), f"devices[device={REVOKED}]: status is 'revoked', the chain says 'active'"
    )


def test_a_changed_account_class_is_named(registry: Built) -> None:
    sql(registry, "UPDATE accounts SET customer_class = 'non-residential' WHERE account = 'hh-1'")
    assert_disagrees(
        verify(registry, "--deep"),
        "accounts[account=hh-1]: customer_class is 'non-residential', the chain says 'residential'",
    )


def test_a_changed_account_binding_is_named(registry: Built) -> None:
    sql(registry, "UPDATE devices SET account = 'hh-2' WHERE device = ?", BOUND)
    assert_disagrees(verify(registry, "--deep"), f"devices[device={BOUND}]: account is 'hh-2', the chain says 'hh-1'")


def test_every_disagreement_is_reported_not_only_the_first(registry: Built) -> None:
    sql(registry, "UPDATE devices SET account = 'hh-2' WHERE device = ?", BOUND)
    sql(registry, "UPDATE accounts SET customer_class = 'residential' WHERE account = 'hh-2'")
    sql(registry, "INSERT INTO accounts VALUES ('hh-9', 'Nobody', 'residential', 0)")
    sql(registry, "DELETE FROM device_keys WHERE device = ? AND from_seq = 13", REKEYED)
    out = verify(registry, "--deep", "--json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    found = {(d["table"], d["column"]) for d in report["disagreements"]}
    assert found == {
        ("devices", "account"),
        ("accounts", "customer_class"),
        ("accounts", None),
        ("device_keys", None),
    }, report["disagreements"]
    assert report["disagreements_found"] == 4 and not report["ok"] and report["failed_block"] is None
