"""Fifty API clients read bills and a day of readings each while ingest seals at load (bench.api's
`load`, small): every answer is right, and ingest ledgers and acknowledges every reading meanwhile.

The latency figures (the API's p50/p99, ingest's ack p99 under this load) are measured by
`python -m bench.api load` and recorded in docs/benchmarks.md, not asserted here.
"""

from __future__ import annotations

from pathlib import Path

from bench.api import load


def test_fifty_clients_while_ingest_seals(tmp_path: Path) -> None:
    out = load(devices=100, seconds=6, n_clients=50, keep=tmp_path / "home")
    api = out["api"]
    assert api["wrong_answers"] == 0, api["first_wrong"]
    assert api["bill"]["n"] >= 50 and api["day_of_readings"]["n"] >= 50  # every client was served
    assert out["readings_ledgered"] == out["readings_acked"] > 0  # ingest lost nothing meanwhile
    assert out["readings_per_s"] > 0 and out["ack_p99_ms"] > 0
