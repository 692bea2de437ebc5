"""Receipts: built from a real DuckDB ledger, checked offline, refused when altered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from ledger.chain.protocol import sign_reading
from ledger.chain.receipts import encode_receipt, receipt_ok, verify_receipt
from ledger.chain.records import Batch, LedgeredReading
from ledger.service.api import local_api
from ledger.service.writer import LedgerWriter
from tests.support.ledgers import T0, Built, build_ledger


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_ledger(tmp_path_factory.mktemp("ledger") / "home")


def failed_step(receipt: dict | bytes, key: str) -> str | None:
    checks = verify_receipt(receipt if isinstance(receipt, bytes) else encode_receipt(receipt), key)
    return None if receipt_ok(checks) else checks[-1].name


def test_every_reading_has_a_valid_receipt(built: Built) -> None:
    api = local_api(built.home)
    for r in built.readings:
        receipt = api.receipt(r.device, r.seq)
        assert receipt["reading"] == r.as_dict()
        assert failed_step(receipt, built.first_key) is None, (r.device, r.seq)


def test_unknown_reading_has_no_receipt(built: Built) -> None:
    with pytest.raises(KeyError):
        local_api(built.home).receipt("wm-d01-000000", 999)


def _altered(receipt: dict, path: tuple, value: object) -> dict:
    out = json.loads(json.dumps(receipt))
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


@pytest.mark.parametrize(
    "path, change, step",
    [
        (("reading", "value"), lambda v: v + 1, "device_signature"),
        (("reading", "ts"), lambda v: v - 1, "device_signature"),
        (("reading", "seq"), lambda v: v + 1, "device_signature"),
        (("leaf_index",), lambda v: v ^ 1, "inclusion"),
        (("proof", 0), lambda v: "0" * 64, "inclusion"),
        (("block", "size"), lambda v: v + 1, "inclusion"),
        (("block", "root"), lambda v: "f" * 64, "inclusion"),
        (("block", "sealed_at"), lambda v: v + 1, "block_signature"),
        (("block", "prev"), lambda v: "0" * 64, "block_signature"),
        (("block_sig",), lambda v: v[:10] + ("A" if v[10] != "A" else "B") + v[11:], "block_signature"),
        (("device_key",), lambda v: SigningKey.generate().verify_key.encode().hex(), "device_signature"),
    ],
)
def test_an_altered_receipt_is_refused_at_the_right_step(built: Built, path: tuple, change, step: str) -> None:
    receipt = local_api(built.home).receipt("wm-d01-000001", 5)
    value = receipt
    for key in path:
        value = value[key]
    assert failed_step(_altered(receipt, path, change(value)), built.first_key) == step


def test_proof_path_shortened_or_extended_is_refused(built: Built) -> None:
    receipt = local_api(built.home).receipt("wm-d01-000002", 4)
    assert failed_step(_altered(receipt, ("proof",), receipt["proof"][:-1]), built.first_key) == "inclusion"
    assert failed_step(_altered(receipt, ("proof",), receipt["proof"] + ["0" * 64]), built.first_key) == "inclusion"


def test_the_receipts_own_ledger_key_is_not_trusted(built: Built) -> None:
    receipt = local_api(built.home).receipt("wm-d01-000000", 1)
    stranger = SigningKey.generate().verify_key.encode().hex()
    assert failed_step(receipt, stranger) == "block_signature"


def test_every_single_byte_change_of_a_receipt_is_refused(built: Built) -> None:
    data = encode_receipt(local_api(built.home).receipt("wm-d01-000001", 6))
    assert failed_step(data, built.first_key) is None
    refused = 0
    for i in range(len(data)):
        variants = {data[i] ^ 0x01, data[i] ^ 0x20, data[i] ^ 0x80, ord("0"), ord(" ")} - {data[i]}
        for b in variants:
            mutated = data[:i] + bytes([b]) + data[i + 1 :]
            assert failed_step(mutated, built.first_key) is not None, f"byte {i} -> {b!r} accepted"
            refused += 1
        assert failed_step(data[:i] + data[i + 1 :], built.first_key) is not None, f"deleting byte {i} accepted"
    assert refused > 4 * len(data)


def test_verify_receipt_command_is_offline_and_says_which_check_failed(built: Built, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "--home",
            str(built.home.root),
            "receipt",
            "wm-d01-000000",
            "3",
            "--out",
            str(good),
        ],
        check=True,
    )
    bad = tmp_path / "bad.json"
    bad.write_bytes(encode_receipt(_altered(json.loads(good.read_bytes()), ("reading", "value"), 1)))
    # Offline: a home that does not exist, so neither database nor keys can be consulted.
    env_home = ["--home", str(tmp_path / "nowhere")]
    ok = subprocess.run(
        [sys.executable, "-m", "ledger.cli", *env_home, "verify-receipt", str(good), "--ledger-key", built.first_key],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "receipt valid" in ok.stdout, ok.stdout + ok.stderr
    no = subprocess.run(
        [sys.executable, "-m", "ledger.cli", *env_home, "verify-receipt", str(bad), "--ledger-key", built.first_key],
        capture_output=True,
        text=True,
    )
    assert no.returncode == 1 and "FAIL device_signature" in no.stdout
    assert not (tmp_path / "nowhere").exists()


def test_rotations_keep_old_readings_provable(tmp_path: Path) -> None:
    built = build_ledger(tmp_path / "home", devices=2, per_device=4, block_size=3)
    writer = LedgerWriter.open(built.home)
    new_device_key = SigningKey.generate()
    try:
        writer.rotate_ledger_key()
        writer.rotate_device_key("wm-d01-000000", new_device_key.verify_key.encode().hex(), 5, "op-test")
        later = sign_reading(new_device_key, device="wm-d01-000000", kind="water", seq=5, ts=T0 + 10**7, value=9999)
        writer.commit(Batch(readings=[LedgeredReading(later, later.ts)]))
    finally:
        writer.close()
    api = local_api(built.home)
    assert api.verify(deep=True)["ok"]

    old = api.receipt("wm-d01-000000", 2)  # signed by the first ledger key, old device key
    assert old["device_key"] == built.keys["wm-d01-000000"].verify_key.encode().hex()
    assert failed_step(old, built.first_key) is None

    new = api.receipt("wm-d01-000000", 5)  # signed by the rotated ledger key, new device key
    assert new["device_key"] == new_device_key.verify_key.encode().hex()
    assert failed_step(new, built.first_key) == "block_signature"  # the first key alone is not enough
    chain = tmp_path / "chain.json"
    chain.write_text(json.dumps(api.key_chain()))
    receipt = tmp_path / "r.json"
    receipt.write_bytes(encode_receipt(new))
    cmd = [sys.executable, "-m", "ledger.cli", "verify-receipt", str(receipt), "--ledger-key", built.first_key]
    assert subprocess.run(cmd + ["--key-chain", str(chain)], capture_output=True).returncode == 0
    forged = api.key_chain()
    forged[0]["header"]["next_key"] = SigningKey.generate().verify_key.encode().hex()
    chain.write_text(json.dumps(forged))
    out = subprocess.run(cmd + ["--key-chain", str(chain)], capture_output=True, text=True)
    assert out.returncode == 1 and "key chain refused" in out.stderr


def test_the_portable_verifier_in_docs_agrees(built: Built) -> None:
    """docs/verifying.md's standalone code, run as written, on real and altered receipts."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "verifying.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "docs/verifying.md", "exec"), scope)
    receipt = local_api(built.home).receipt("wm-d01-000002", 11)
    assert scope["check_receipt"](receipt, built.first_key) is True
    for path, value in [
        (("reading", "value"), 0),
        (("leaf_index",), receipt["leaf_index"] ^ 1),
        (("block", "sealed_at"), 0),
    ]:
        with pytest.raises(Exception):  # noqa: B017  # the README's verifier refuses however it likes
            scope["check_receipt"](_altered(receipt, path, value), built.first_key)
