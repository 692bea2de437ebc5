"""Device identity: weak keys, provisioning bundles, revocation at the broker and at ingest."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from edge.identity import DeviceIdentity
from ledger.chain.sigcheck import first_bad
from ledger.keys import check_device_key
from tests.support.broker import close_client, connect_client, wait_for
from tests.support.stack import Stack
from tests.vectors import load_json

SMALL_ORDER = [  # the eight points of order 1, 2, 4 and 8, as commonly encoded
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
]
NON_CANONICAL = [  # y >= p: other spellings of small points
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
]


@pytest.mark.parametrize("key", SMALL_ORDER + NON_CANONICAL)
def test_weak_keys_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="weak|32 bytes"):
        check_device_key(key)


def test_a_good_key_is_normalised_to_lowercase() -> None:
    key = SigningKey.generate().verify_key.encode().hex()
    assert check_device_key(key.upper()) == key


WYCHEPROOF = [
    (g["publicKey"]["pk"], t)
    for g in load_json("ed25519/wycheproof_ed25519_test.json")["testGroups"]
    for t in g["tests"]
]


@pytest.mark.parametrize("pk, case", WYCHEPROOF, ids=[f"tc{t['tcId']}" for _, t in WYCHEPROOF])
def test_our_verification_path_agrees_with_wycheproof(pk: str, case: dict) -> None:
    """The same verify ingest and audits use: malleable and small-order cases refused."""
    verdict = first_bad([(bytes.fromhex(pk), bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"]))]) < 0
    if case["result"] == "valid":
        assert verdict, case["comment"]
    elif case["result"] == "invalid":
        assert not verdict, case["comment"]


def test_enrolment_refuses_weak_and_reused_keys(stack: Stack) -> None:
    out = stack.cli(
        "devices",
        "enroll",
        "--id",
        "wm-d01-000001",
        "--kind",
        "water",
        "--district",
        "d01",
        "--public-key",
        SMALL_ORDER[4],
    )
    assert out.returncode == 2 and "weak public key" in out.stderr
    dev = stack.enroll("wm-d01-000002")
    again = stack.cli(
        "devices",
        "enroll",
        "--id",
        "wm-d01-000003",
        "--kind",
        "water",
        "--district",
        "d01",
        "--public-key",
        dev.key.verify_key.encode().hex(),
    )
    assert again.returncode == 2 and "already enrolled for wm-d01-000002" in again.stderr
    stack.cli("devices", "revoke", dev.device, check=True)  # a revoked device's key stays taken
    after = stack.cli(
        "devices",
        "enroll",
        "--id",
        "wm-d01-000004",
        "--kind",
        "water",
        "--district",
        "d01",
        "--public-key",
        dev.key.verify_key.encode().hex(),
    )
    assert after.returncode == 2


def test_provisioned_bundle_works_and_the_server_keeps_no_private_key(stack: Stack, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    out = stack.cli_json(
        "devices", "provision", "--id", "gm-d02-000009", "--kind", "gas", "--district", "d02", "--out", str(bundle)
    )
    identity = DeviceIdentity.load(bundle)
    assert identity.public_key_hex == out["public_key"]
    for name in ("key", "credentials.json"):
        assert stat.S_IMODE((bundle / name).stat().st_mode) == 0o600
    settings = json.loads((bundle / "device.json").read_text())
    assert settings["topics"]["reading"] == "city/d02/gas/gm-d02-000009/reading"
    seed = identity.key.encode().hex()
    for root, _, files in os.walk(stack.home.root):
        for name in files:
            if not (Path(root) / name).is_file():  # the ingest's socket
                continue
            data = (Path(root) / name).read_bytes()
            assert seed.encode() not in data and identity.key.encode() not in data, f"private key in {name}"
    # The bundle's own client id, sent as is: what a device's firmware would send.
    client = connect_client(
        stack.broker.port,
        identity.username,
        identity.password,
        client_id=settings["broker"]["client_id"],
        raw_client_id=True,
    )
    close_client(client)
    assert (
        stack.cli(
            "devices", "provision", "--id", "x-1", "--kind", "gas", "--district", "d02", "--out", str(bundle)
        ).returncode
        == 2
    )  # never overwrites a bundle


def test_revocation_takes_effect_at_the_broker_and_ingest_within_seconds(stack: Stack) -> None:
    dev = stack.enroll("em-d03-000001", kind="electricity", district="d03")
    client = stack.connect(dev)
    stack.cli("devices", "revoke", dev.device, check=True)
    wait_for(lambda: not client.is_connected(), 5, "the broker to drop the revoked device")
    close_client(client)
    with pytest.raises(ConnectionRefusedError):
        stack.connect(dev)
    assert {d["device"]: d["status"] for d in stack.api.devices()}[dev.device] == "revoked"
