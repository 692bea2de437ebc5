"""Month-end close for a city of accounts (issue 6).

    .venv/bin/python -m bench.close --accounts 100000

Fabricates N residential accounts, each with a water and an electricity meter
read every 4 hours from the start of the year, straight into DuckDB with SQL.
The readings carry placeholder signatures: the close never looks at
signatures, and signing tens of millions of readings would only measure
signing. Then it runs the real `close_month` (bills computed, hashes sealed
into the chain) and prints how long it took; a second close must issue nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from ledger.home import Home
from ledger.service.api import local_api
from ledger.service.homes import initialize
from ledger.service.progress import ProgressBar
from ledger.store.store import Store

T0 = 1_767_196_800_000 - 8 * 3_600_000  # 2026-01-01 00:00 Asia/Shanghai
STEP = 4 * 3_600_000


def fabricate(home: Home, accounts: int, readings: int) -> None:
    store = Store.open(home.database)
    con = store.con
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute(
            """INSERT INTO accounts SELECT 'hh-' || lpad(i::VARCHAR, 7, '0'), 'Household ' || i,
                       'residential', 0 FROM range(?) t(i)""",
            [accounts],
        )
        con.execute(
            """INSERT INTO devices SELECT k.prefix || '-b01-' || lpad(i::VARCHAR, 7, '0'), k.kind, 'b01',
                       'hh-' || lpad(i::VARCHAR, 7, '0'), lpad(i::VARCHAR, 64, '0'), 'active', '-', 0, NULL
                       FROM range(?) t(i), (VALUES ('wm', 'water', 16), ('em', 'electricity', 1300)) k(prefix, kind, rate)""",
            [accounts],
        )
        # Water about 100 L and electricity about 1.3 kWh every 4 hours, with per-meter variety.
        con.execute(
            """INSERT INTO readings
                       SELECT 1, 0, d.device, d.kind, n + 1, ? + n * ?,
                              (n * (CASE WHEN d.kind = 'water' THEN 100 ELSE 1300 END) * (1 + hash(d.device) % 7) / 4)::BIGINT,
                              '\\x00'::BLOB, ? + n * ?
                       FROM devices d, range(?) r(n) WHERE d.kind <> 'parking'""",
            [T0 - STEP, STEP, T0 - STEP, STEP, readings],
        )
        con.execute("COMMIT")
    finally:
        store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--month", default="2026-02")
    p.add_argument("--home", help="keep the ledger here (reused if it exists)")
    args = p.parse_args()
    home = Home(Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="cityledger-close-")))
    readings = 6 * (31 + 29 + 2)  # Jan and Feb, with margin either side
    if not home.database.exists():
        initialize(home)
        t = time.perf_counter()
        fabricate(home, args.accounts, readings)
        print(
            f"fabricated {args.accounts} accounts, {2 * args.accounts * readings:,} readings in "
            f"{time.perf_counter() - t:.0f} s",
            file=sys.stderr,
        )
    api = local_api(home)
    bar = ProgressBar("close")
    first = api.close_month(month=args.month, progress=bar.update)
    bar.close()
    again = api.close_month(month=args.month)
    sample = api.bill(account="hh-0000042", month=args.month)
    print(
        json.dumps(
            {
                "accounts": first["accounts"],
                "bills_issued": first["issued"],
                "close_seconds": round(first["seconds"], 1),
                "second_close_issued": again["issued"],
                "second_close_seconds": round(again["seconds"], 1),
                "readings": 2 * args.accounts * readings,
                "sample_total": sample["total"],
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
