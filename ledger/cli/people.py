"""`cityledger accounts ...` and `cityledger operators ...`: the people the ledger knows, households and
businesses that own meters and the operators who run the city, and their dashboard passwords.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ledger.cli.api import show_token
from ledger.cli.common import Handler, Subcommands, add, emit, group, ledger_api, operator_id, operator_option


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    asub = group(sub, "accounts", "households and businesses that own meters")
    p = add(asub, "add", cmd_accounts_add, "open an account")
    p.add_argument("--id", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--class", dest="customer_class", default="residential", choices=["residential", "non-residential"])
    p.add_argument("--password-file", help="file holding the account's dashboard password")
    operator_option(p)
    p = add(asub, "set-password", cmd_set_password("citizen"), "set or reset an account's dashboard password")
    p.add_argument("id")
    p.add_argument("--password-file", required=True)
    add(asub, "list", cmd_accounts_list, "list accounts", json=True)

    osub = group(sub, "operators", "people who run the city: scoped to districts")
    p = add(osub, "add", cmd_operators_add, "add an operator for some districts, or all")
    p.add_argument("--id", required=True)
    p.add_argument("--name")
    p.add_argument("--districts", required=True, help="d01,d02 or all")
    p.add_argument("--password-file", help="file holding the operator's dashboard password")
    p = add(osub, "set-password", cmd_set_password("operator"), "set or reset an operator's password")
    p.add_argument("id")
    p.add_argument("--password-file", required=True)
    add(osub, "list", cmd_operators_list, "list operators")
    p = add(osub, "set-districts", cmd_operators_set_districts, "change the districts an operator looks after")
    p.add_argument("id")
    p.add_argument("--districts", required=True, help="d01,d02 or all")
    operator_option(p)
    p = add(
        osub, "token", cmd_operator_token, "an API token for an operator: their districts, every dataset", json=True
    )
    p.add_argument("id", help="the operator's id")
    p.add_argument("--expires", default="30d", help="YYYY-MM-DD or a number of days (default 30d)")
    p.add_argument("--rate", type=int, default=600, help="requests a minute (default 600)")
    operator_option(p)


def _password(args: argparse.Namespace) -> str | None:
    """A password from --password-file (never from the command line, where `ps` would show it)."""
    if not getattr(args, "password_file", None):
        return None
    return Path(args.password_file).read_text().strip()


def cmd_accounts_add(args: argparse.Namespace) -> int:
    ledger = ledger_api(args)
    out = ledger.add_account(
        account=args.id, name=args.name, customer_class=args.customer_class, operator=operator_id(args)
    )
    password = _password(args)
    if password:
        out["password_set"] = ledger.set_password(role="citizen", principal=args.id, password=password)["password_set"]
    emit(out)
    return 0


def cmd_set_password(role: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        password = _password(args)
        if not password:
            print("give the new password in a file: --password-file FILE", file=sys.stderr)
            return 2
        emit(ledger_api(args).set_password(role=role, principal=args.id, password=password))
        return 0

    return run


def cmd_accounts_list(args: argparse.Namespace) -> int:
    rows = ledger_api(args).accounts()
    if args.json:
        emit(rows)
        return 0
    for a in rows:
        print(f"{a['account']:<20} {a['customer_class']:<16} {a['devices']:>3} meters  {a['name']}")
    print(f"{len(rows)} accounts")
    return 0


def cmd_operators_add(args: argparse.Namespace) -> int:
    ledger = ledger_api(args)
    out = ledger.add_operator(operator=args.id, name=args.name or args.id, districts=args.districts)
    password = _password(args)
    if password:
        out["password_set"] = ledger.set_password(role="operator", principal=args.id, password=password)["password_set"]
    emit(out)
    return 0


def cmd_operators_set_districts(args: argparse.Namespace) -> int:
    emit(ledger_api(args).set_operator_districts(operator=args.id, districts=args.districts, by=operator_id(args)))
    return 0


def cmd_operators_list(args: argparse.Namespace) -> int:
    emit(ledger_api(args).operators())
    return 0


def cmd_operator_token(args: argparse.Namespace) -> int:
    out = ledger_api(args).issue_token(
        kind="operator", principal=args.id, expires=args.expires, rate_per_minute=args.rate, operator=operator_id(args)
    )
    return show_token(out, args.json)
