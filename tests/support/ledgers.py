"""Real DuckDB ledgers built quickly through the writer, for proof and tamper tests.

No broker: readings go straight to `LedgerWriter.commit`, the same call ingest
makes, so the blocks are exactly what the service would seal.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Self

from nacl.signing import SigningKey

from ledger.chain.protocol import Reading, sign_reading
from ledger.chain.records import Batch, LedgeredReading
from ledger.home import Home
from ledger.service.homes import initialize
from ledger.service.writer import LedgerWriter

T0 = 1_764_000_000_000


@dataclass
class Built:
    home: Home
    first_key: str
    keys: dict[str, SigningKey] = field(default_factory=dict)
    readings: list[Reading] = field(default_factory=list)


def build_ledger(root: Path, *, devices: int = 3, per_device: int = 12, block_size: int = 7) -> Built:
    """Enrol `devices` water meters and ledger `per_device` readings each, interleaved."""
    home = Home(root)
    info = initialize(home)
    built = Built(home, info["ledger_key"])
    writer = LedgerWriter.open(home)
    try:
        for i in range(devices):
            key = SigningKey.generate()
            device = f"wm-d01-{i:06d}"
            writer.enroll_device(device, "water", "d01", key.verify_key.encode().hex())
            built.keys[device] = key
        for seq in range(1, per_device + 1):
            for device, key in built.keys.items():
                built.readings.append(
                    sign_reading(
                        key, device=device, kind="water", seq=seq, ts=T0 + seq * 900_000, value=1000 + seq * 37
                    )
                )
        for start in range(0, len(built.readings), block_size):
            chunk = built.readings[start : start + block_size]
            writer.commit(Batch(readings=[LedgeredReading(r, r.ts + 500) for r in chunk]))
    finally:
        writer.close()
    return built


@dataclass
class Growing:
    """A built ledger that tests keep signing readings for: its keys, each device's last seq,
    and each device's kind. A module builds one (slowly) and gives each test a copy."""

    home: Home
    first_key: str
    keys: dict[str, SigningKey]
    seqs: dict[str, int]
    kinds: dict[str, str]
    value_base: int = 1000  # meters read value_base + 37 × seq; parking alternates 0 and 1

    def readings(self, n: int, devices: list[str] | None = None) -> list[LedgeredReading]:
        """n signed readings, round robin over `devices` (all by default), 15 minutes apart per device."""
        devices = devices or list(self.keys)
        out = []
        for i in range(n):
            device = devices[i % len(devices)]
            self.seqs[device] += 1
            seq = self.seqs[device]
            kind = self.kinds[device]
            value = seq % 2 if kind == "parking" else self.value_base + seq * 37
            r = sign_reading(self.keys[device], device=device, kind=kind, seq=seq, ts=T0 + seq * 900_000, value=value)
            out.append(LedgeredReading(r, r.ts))
        return out

    def copy(self, root: Path) -> Self:
        """The same ledger in another home, with seqs of its own: a test may grow or tamper with it."""
        shutil.copytree(self.home.root, root)
        return replace(self, home=Home(root), seqs=dict(self.seqs))
