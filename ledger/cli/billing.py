"""`cityledger` commands about money: what bills are computed from (`tariffs`, `parking` zones and
leases, `meters` replacements), corrections to them (`adjust`, `adjustments` and their four-eyes
approval), the bills themselves (`bill`, `billing close`) and the payments against them (`payments`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ledger.cli.common import Handler, Subcommands, add, emit, group, ledger_api, operator_id, operator_option
from ledger.defaults import configured_timezone


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    tsub = group(sub, "tariffs", "the prices bills are computed with")
    add(tsub, "show", cmd_tariffs_show, "print the tariff file in force")
    p = add(tsub, "load", cmd_tariffs_load, "load an edited tariff file as a new version")
    p.add_argument("file")
    operator_option(p)

    psub = group(sub, "parking", "parking spaces: zones, leases, check-ins")
    p = add(psub, "zone", cmd_parking_zone, "set a space's zone class (from now, or --since)")
    p.add_argument("--space", required=True)
    p.add_argument("--class", dest="zone_class", type=int, required=True, choices=[1, 2, 3])
    p.add_argument("--since", help="ISO time in the city's time zone, or epoch ms")
    operator_option(p)
    p = add(psub, "lease", cmd_parking_lease, "lease a space to an account (from now, or --since)")
    p.add_argument("--space", required=True)
    p.add_argument("--account", required=True)
    p.add_argument("--since")
    operator_option(p)
    p = add(psub, "checkin", cmd_parking_checkin, "an account takes responsibility for the current stay")
    p.add_argument("--space", required=True)
    p.add_argument("--account", required=True)
    p.add_argument("--at")
    operator_option(p)
    p = add(psub, "unpaid", cmd_parking_unpaid, "stays in a month that nobody pays for")
    p.add_argument("--month", required=True)

    msub = group(sub, "meters", "meter records kept by operators")
    p = add(msub, "replace", cmd_meters_replace, "record a meter replacement (the register's jump)")
    p.add_argument("--device", required=True)
    p.add_argument("--at", required=True, help="ISO time in the city's time zone, or epoch ms")
    p.add_argument("--old-final", type=int, required=True, help="the old register's last value")
    p.add_argument("--new-initial", type=int, required=True, help="the new register's first value")
    operator_option(p)

    p = add(
        sub,
        "adjust",
        cmd_adjust,
        "append a refund, credit or re-bill; it shows on the next bill (above the "
        "approval limit, once a second operator approves it)",
    )
    p.add_argument("--account", required=True)
    p.add_argument("--amount", required=True, help="yuan to the fen, e.g. -12.50 for a refund (no exponent)")
    p.add_argument("--reason", required=True)
    operator_option(p)
    adjsub = group(sub, "adjustments", "adjustments waiting for a second operator (four eyes), and the limit")
    p = add(adjsub, "list", cmd_adjustments_list, "requested adjustments (pending by default)")
    p.add_argument("--status", default="pending", choices=["pending", "approved", "rejected", "all"])
    for action, approve, what in (
        ("approve", True, "approve a requested adjustment: it is sealed now"),
        ("reject", False, "reject (or, as its requester, withdraw) a requested adjustment"),
    ):
        p = add(adjsub, action, cmd_adjustments_decide(approve), what)
        p.add_argument("id")
        p.add_argument("--note", help="why (kept in the ledger)")
        operator_option(p)
    p = add(
        adjsub,
        "limit",
        cmd_adjustments_limit,
        "the amount above which an adjustment needs approval; with AMOUNT, set it (sealed)",
    )
    p.add_argument("amount", nargs="?")
    operator_option(p)

    p = add(sub, "bill", cmd_bill, "an account's bill for a month (issued, or as it stands)", json=True)
    p.add_argument("account")
    p.add_argument("--month", required=True, help="YYYY-MM")
    bsub = group(sub, "billing", "month-end close")
    p = add(bsub, "close", cmd_billing_close, "issue every account's bill for a month (again: nothing new)")
    p.add_argument("--month", required=True, help="YYYY-MM")

    paysub = group(sub, "payments", "payments against issued bills, and what each bill is left with")
    p = add(paysub, "record", cmd_payments_record, "record a payment against an account's issued bill (sealed)")
    p.add_argument("--account", required=True)
    p.add_argument("--month", required=True, help="YYYY-MM: the issued bill it pays")
    p.add_argument("--amount", required=True, help="yuan to the fen, positive, e.g. 128.50 (no exponent)")
    p.add_argument("--reference", required=True, help="the provider's transaction id (once per account)")
    p.add_argument("--paid-at", help="when it was paid: ISO time in the city's time zone, or epoch ms (default: now)")
    operator_option(p)
    p = add(paysub, "list", cmd_payments_list, "an account's payments, or (--balances) its bills' balances")
    p.add_argument("account")
    p.add_argument("--month", help="YYYY-MM: that month's payments only")
    p.add_argument("--balances", action="store_true", help="each issued bill's total, paid, balance and status")


def _when(text: str | None) -> int | None:
    """An ISO date/time in the city's time zone, or epoch ms, as epoch ms."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    import datetime as dt
    from zoneinfo import ZoneInfo

    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(configured_timezone()))
    return int(when.timestamp() * 1000)


def cmd_tariffs_show(args: argparse.Namespace) -> int:
    t = ledger_api(args).tariffs()
    print(f"# tariff version {t['version']}")
    print(t["source"], end="")
    return 0


def cmd_tariffs_load(args: argparse.Namespace) -> int:
    emit(ledger_api(args).load_tariffs(source=Path(args.file).read_text(), operator=operator_id(args)))
    return 0


def cmd_parking_zone(args: argparse.Namespace) -> int:
    emit(
        ledger_api(args).set_zone(
            space=args.space, zone_class=args.zone_class, from_ts=_when(args.since), operator=operator_id(args)
        )
    )
    return 0


def cmd_parking_lease(args: argparse.Namespace) -> int:
    emit(
        ledger_api(args).lease(
            space=args.space, account=args.account, from_ts=_when(args.since), operator=operator_id(args)
        )
    )
    return 0


def cmd_parking_checkin(args: argparse.Namespace) -> int:
    emit(
        ledger_api(args).checkin(space=args.space, account=args.account, at=_when(args.at), operator=operator_id(args))
    )
    return 0


def cmd_parking_unpaid(args: argparse.Namespace) -> int:
    emit(ledger_api(args).unpaid_stays(month=args.month))
    return 0


def cmd_meters_replace(args: argparse.Namespace) -> int:
    emit(
        ledger_api(args).record_replacement(
            device=args.device,
            ts=_when(args.at),
            old_final=args.old_final,
            new_initial=args.new_initial,
            operator=operator_id(args),
        )
    )
    return 0


def cmd_adjust(args: argparse.Namespace) -> int:
    out = ledger_api(args).adjust(
        account=args.account, amount=args.amount, reason=args.reason, operator=operator_id(args)
    )
    emit(out)
    if out["status"] == "pending":
        print(
            f"{out['amount']} is above the approval limit of {out['limit']}: another operator must approve it "
            f"(`cityledger adjustments approve {out['id']}`)",
            file=sys.stderr,
        )
    return 0


def cmd_adjustments_list(args: argparse.Namespace) -> int:
    emit(ledger_api(args).adjustment_requests(status=None if args.status == "all" else args.status))
    return 0


def cmd_adjustments_decide(approve: bool) -> Handler:
    def run(args: argparse.Namespace) -> int:
        emit(
            ledger_api(args).decide_adjustment(
                id=args.id, operator=operator_id(args), approve=approve, note=args.note or ""
            )
        )
        return 0

    return run


def cmd_adjustments_limit(args: argparse.Namespace) -> int:
    api = ledger_api(args)
    emit(
        api.set_adjustment_limit(amount=args.amount, operator=operator_id(args))
        if args.amount
        else {"limit": api.adjustment_limit()}
    )
    return 0


def cmd_bill(args: argparse.Namespace) -> int:
    bill = ledger_api(args).bill(account=args.account, month=args.month)
    if args.json:
        emit(bill)
        return 0
    print(f"{bill['name']} ({bill['account']}), {bill['month']}: {bill['status']}, total {bill['total']} yuan")
    for line in bill["lines"]:
        if line["type"] == "utility":
            print(
                f"  {line['kind']:<12} {line['device']:<18} {line['consumption']:>12} {line['unit']:<4}"
                f" {line['amount']:>10}"
            )
            for t in line["tiers"]:
                print(f"      tier {t['tier']}: {t['quantity']} {t['unit']} x {t['price']} = {t['amount']}")
        elif line["type"] == "parking":
            print(f"  parking      {line['device']:<18} {len(line['sessions']):>4} stays{'':>9} {line['amount']:>10}")
        else:
            print(f"  adjustment   {line['reason'][:40]:<40} {line['amount']:>10}")
        for flag in line.get("flags", []):
            print(f"      ! {flag}")
    return 0


def cmd_payments_record(args: argparse.Namespace) -> int:
    from ledger.clock import now_ms

    paid_at = _when(args.paid_at)
    emit(
        ledger_api(args).record_payment(
            account=args.account,
            month=args.month,
            amount=args.amount,
            reference=args.reference,
            paid_at=now_ms() if paid_at is None else paid_at,
            recorded_by=operator_id(args),
        )
    )
    return 0


def cmd_payments_list(args: argparse.Namespace) -> int:
    api = ledger_api(args)
    emit(api.balances(account=args.account) if args.balances else api.payments(account=args.account, month=args.month))
    return 0


def cmd_billing_close(args: argparse.Namespace) -> int:
    from ledger.service.progress import ProgressBar

    bar = ProgressBar("close", stream=sys.stderr)
    result = ledger_api(args).close_month(month=args.month, progress=bar.update)
    bar.close()
    emit(result)
    return 0
