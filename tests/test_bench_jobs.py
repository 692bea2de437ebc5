"""`cityledger bench --job`: one short real run on a tiny history, asserting the figures are there and sane.

Never how fast: the figures of real runs are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_short_jobs_run_reports_sealing_acks_and_memory_for_the_baseline_and_the_job(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYLEDGER_")}
    env["TMPDIR"] = str(tmp_path)
    argv = [
        sys.executable,
        "-m",
        "ledger.cli",
        "bench",
        "--job",
        "roll-up",
        "--seconds",
        "5",
        "--devices",
        "12",
        "--history-devices",
        "9",
        "--history-days",
        "1",
        "--json",
    ]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["history"]["readings"] == 9 * 96 and result["history"]["blocks"] == 96
    assert [p["job"] for p in result["phases"]] == ["baseline", "roll-up"]
    for p in result["phases"]:
        assert p["blocks"] > 0 and p["readings_per_s"] > 0 and p["ingest_peak_rss_mb"] > 0, p
        assert 0 <= p["seal_gap_p50_ms"] <= p["seal_gap_p99_ms"] <= p["seal_gap_max_ms"], p
        assert 0 < p["ack_p50_ms"] <= p["ack_p99_ms"] <= p["ack_max_ms"], p
        assert p["job_errors"] == [] and p["other_cores"] >= 0, p
    job = result["phases"][1]
    assert job["job_runs"] >= 1 and job["job_s_median"] is not None
    assert result["quarantined"] == 0 and result["duplicates"] == 0
    assert result["readings"] >= result["history"]["readings"]
    assert not list(tmp_path.glob("cityledger-bench-jobs-*")), "the temporary home is removed after a good run"
