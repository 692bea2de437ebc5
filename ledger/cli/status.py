"""`cityledger status` (the ledger's counters, head, ingest and jobs) and `cityledger quarantine list`
(the messages ingest refused): how the ledger is doing right now.
"""

from __future__ import annotations

import argparse

from ledger.cli.common import Subcommands, add, emit, group, ledger_api


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    add(sub, "status", cmd_status, "ledger counters and head", json=True)

    qsub = group(sub, "quarantine", "rejected messages")
    p = add(qsub, "list", cmd_quarantine_list, "list quarantined messages, newest first", json=True)
    p.add_argument("--reason")
    p.add_argument("--device")
    p.add_argument("--limit", type=int, default=100)


def cmd_status(args: argparse.Namespace) -> int:
    status = ledger_api(args).status()
    if args.json:
        emit(status)
    else:
        for key in (
            "ledger_key",
            "height",
            "last_block_hash",
            "blocks",
            "readings",
            "quarantined",
            "quarantine_dropped",
            "duplicates",
            "devices",
        ):
            print(f"{key:>16}: {status[key]}")
        ingest = status["ingest"]
        if ingest["running"]:
            print(
                f"{'ingest':>16}: lag {ingest['lag_ms'] / 1000:.1f} s, last seal at {ingest['last_seal_at']}, "
                f"{ingest['pending']} waiting, {ingest['workers']} workers"
            )
        else:
            print(f"{'ingest':>16}: not running")
        tlog = status["log"]
        checkpoint = "none published yet" if tlog["checkpoint_size"] is None else f"size {tlog['checkpoint_size']}"
        cosigned = f", cosigned by {', '.join(tlog['cosigners'])}" if tlog["cosigners"] else ""
        print(f"{'log':>16}: {tlog['origin']}, {tlog['size']} leaves; checkpoint {checkpoint}{cosigned}")
        print(f"{'witness quorum':>16}: {tlog['policy']}")
        if tlog["alarm"]:
            print(f"{'log alarm':>16}: {tlog['alarm']}")
        for name, job in status["jobs"].items():
            if job["failing"]:
                print(f"{'job failing':>16}: {name}, {job['failures']} in a row: {job['last_error']}")
        from ledger.service.supervision import describe_restarts

        if restarts := describe_restarts(status.get("supervisor") or {}):  # parts `cityledger up` restarted
            print(f"{'restarts':>16}: {restarts}")
    return 0


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    rows = ledger_api(args).quarantine(reason=args.reason, device=args.device, limit=args.limit)
    if args.json:
        emit(rows)
        return 0
    for r in rows:
        print(f"{r['received_at']}  {r['reason']:<17} {r['topic']}  {r['detail']}")
    print(f"{len(rows)} entries")
    return 0
