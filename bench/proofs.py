"""Audit and receipt figures on a large ledger (issue 3).

    .venv/bin/python -m bench.proofs --readings 1000000

Builds a ledger of N pre-signed readings through the real writer (signing runs
on every core; it is the devices' cost, not measured), then measures `verify`
(structural, hashed in DuckDB: ledger/store/sqlaudit.py) and `verify --deep` readings
per second, and the size and time of a receipt. --python-audit also times the
structural audit's Python path, for comparison.
Pass --home DIR to keep and reuse the ledger between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from nacl.signing import SigningKey

from ledger.chain.protocol import Reading, sign_reading
from ledger.chain.receipts import encode_receipt
from ledger.chain.records import Batch, LedgeredReading
from ledger.home import Home
from ledger.service.api import local_api
from ledger.service.homes import initialize
from ledger.service.progress import ProgressBar
from ledger.service.writer import LedgerWriter

T0 = 1_764_000_000_000


def _sign_chunk(args: tuple[list[tuple[str, bytes]], int, int]) -> list[dict]:
    """Readings seq_from..seq_to for each (device, seed): one device-interval of meters."""
    devices, seq_from, seq_to = args
    out = []
    for seq in range(seq_from, seq_to):
        for device, seed in devices:
            r = sign_reading(
                SigningKey(seed), device=device, kind="water", seq=seq, ts=T0 + seq * 900_000, value=seq * 31
            )
            out.append(r.as_dict())
    return out


def build(home: Home, readings: int, devices: int, block: int) -> None:
    initialize(home)
    writer = LedgerWriter.open(home)
    try:
        fleet = []
        for i in range(devices):
            seed = os.urandom(32)
            device = f"wm-b01-{i:06d}"
            writer.enroll_device(device, "water", "b01", SigningKey(seed).verify_key.encode().hex())
            fleet.append((device, seed))
        per_device = readings // devices
        step = max(1, block // devices)
        jobs = [(fleet, s, min(s + step, per_device + 1)) for s in range(1, per_device + 1, step)]
        bar = ProgressBar("building")
        done = 0
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            for chunk in pool.map(_sign_chunk, jobs):
                rows = [LedgeredReading(Reading.model_construct(**r), r["ts"]) for r in chunk]
                writer.commit(Batch(readings=rows))
                done += len(rows)
                bar.update(done, per_device * devices)
        bar.close()
    finally:
        writer.close()


def python_audit_rate(home: Home) -> dict:
    """The structural audit as it was before ledger/store/sqlaudit.py: every reading rebuilt in Python."""
    from ledger.chain.audit import audit
    from ledger.keys import verify_key_from_hex
    from ledger.store.store import Store

    store = Store.open(home.database, read_only=True)
    try:
        report = audit(store.iter_blocks(), store.leaves, verify_key_from_hex(store.get_meta("first_ledger_key")))
    finally:
        store.close()
    assert report.ok, report
    return {
        "verify_python_readings_per_s": round(report.readings / report.seconds),
        "verify_python_seconds": round(report.seconds, 1),
    }


def measure(home: Home, python_audit: bool = False, runs: int = 3) -> dict:
    api = local_api(home)
    structurals = []
    for _ in range(runs):  # about a second each now: the median of a few, on a shared machine
        bar = ProgressBar("verify")
        structurals.append(api.verify(progress=bar.update))
        bar.close()
    structural = sorted(structurals, key=lambda r: r["seconds"])[len(structurals) // 2]
    bar = ProgressBar("verify --deep")
    deep = api.verify(deep=True, progress=bar.update)
    bar.close()
    assert all(r["ok"] for r in structurals) and deep["ok"], (structurals, deep)
    status = api.status()
    devices = [d["device"] for d in api.devices()]
    per_device = status["readings"] // len(devices)
    times, sizes = [], []
    rng = random.Random(1)
    for _ in range(30):
        t = time.perf_counter()
        receipt = api.receipt(rng.choice(devices), rng.randint(1, per_device))
        times.append(time.perf_counter() - t)
        sizes.append(len(encode_receipt(receipt)))
    return {
        "readings": structural["readings"],
        "blocks": structural["blocks"],
        "verify_readings_per_s": round(structural["readings"] / structural["seconds"]),
        "verify_seconds": round(structural["seconds"], 2),
        "verify_seconds_all_runs": [round(r["seconds"], 2) for r in structurals],
        **(python_audit_rate(home) if python_audit else {}),
        "verify_deep_readings_per_s": round(deep["readings"] / deep["seconds"]),
        "verify_deep_seconds": round(deep["seconds"], 1),
        "receipt_bytes_median": int(statistics.median(sizes)),
        "receipt_ms_median": round(statistics.median(times) * 1000, 1),
        "receipt_ms_max": round(max(times) * 1000, 1),
        "database_bytes": home.database.stat().st_size,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=1_000_000)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--block", type=int, default=5000, help="readings per block")
    p.add_argument("--home", help="keep the ledger here (reused if it exists)")
    p.add_argument(
        "--python-audit",
        action="store_true",
        help="also time the structural audit's Python path (what `verify` did before sqlaudit)",
    )
    args = p.parse_args()
    home = Home(Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="cityledger-proofs-")))
    if not home.database.exists():
        t = time.perf_counter()
        build(home, args.readings, args.devices, args.block)
        print(f"built in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    print(json.dumps(measure(home, args.python_audit), indent=2))


if __name__ == "__main__":
    main()
