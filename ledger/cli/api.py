"""`cityledger api` (the city's HTTP API), `cityledger agencies ...` (its callers' tokens) and
`cityledger sharing ...` (grants from a district to an agency, and the log of reads under them).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from ledger.cli.common import Subcommands, add, emit, group, home_of, ledger_api, operator_id, operator_option, opt
from ledger.people.tokens import DATASETS
from ledger.service.results.access import TokenIssued


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    p = add(sub, "api", cmd_api, "serve the city's HTTP API (/v1, OpenAPI at /v1/openapi.json)")
    opt(p, "--host", "127.0.0.1", "address to listen on")
    opt(p, "--port", 8480, "port to listen on")
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browsers from ORIGIN (repeatable; off by default)",
    )
    p.add_argument("--tls", action="store_true", help="serve HTTPS with the broker's certificate (home/tls)")
    p.add_argument("--tls-cert", help="certificate file (default: the broker's, home/tls/server.crt)")
    p.add_argument("--tls-key", help="its private key (default: home/tls/server.key)")

    asub = group(sub, "agencies", "other systems' API tokens: scoped to districts and datasets, expiring")
    p = add(asub, "add", cmd_agencies_add, "make a token for an agency (shown once: only its hash is kept)", json=True)
    p.add_argument("name", help="the agency: water-bureau, billing, payments, gis, d05-bureau ...")
    p.add_argument(
        "--scope",
        action="append",
        required=True,
        metavar="DISTRICTS:DATASETS[:write]",
        help=f"e.g. d01,d02:readings,bills or all:payments:write; datasets: {', '.join(DATASETS)} or all (repeatable)",
    )
    p.add_argument("--expires", default="90d", help="YYYY-MM-DD or a number of days (default 90d)")
    p.add_argument("--rate", type=int, default=600, help="requests a minute (default 600)")
    operator_option(p)
    p = add(asub, "list", cmd_agencies_list, "list tokens (never their secrets)", json=True)
    p.add_argument("name", nargs="?", help="only this agency's (or operator's) tokens")
    p = add(asub, "revoke", cmd_agencies_revoke, "revoke a token now (a ledger entry)", json=True)
    p.add_argument("token_id")
    operator_option(p)

    ssub = group(sub, "sharing", "a district's data shared with an agency: grants (ledger entries) and the access log")
    p = add(ssub, "grant", cmd_grant, "let an agency read one dataset of one district until a date", json=True)
    p.add_argument("--from", dest="from_district", required=True, metavar="DISTRICT")
    p.add_argument("--to", dest="to_agency", required=True, metavar="AGENCY")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--until", required=True, help="YYYY-MM-DD or a number of days")
    operator_option(p)
    p = add(ssub, "revoke", cmd_revoke_grant, "end a grant now", json=True)
    p.add_argument("grant_id")
    operator_option(p)
    p = add(ssub, "list", cmd_grants, "the sharing register", json=True)
    p.add_argument("--district")
    p.add_argument("--agency")
    p = add(ssub, "log", cmd_access_log, "reads made under a district's grants: who, what, when, how many records")
    p.add_argument("--district", required=True)
    p.add_argument("--days", type=int, default=30, help="this many days back (default 30)")
    p.add_argument("--refusals", action="store_true", help="also requests refused for their scope")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")


def cmd_api(args: argparse.Namespace) -> int:
    from ledger.http.server import serve

    home = home_of(args)
    tls = None
    if args.tls:
        from broker.certs import server_cert_path, server_key_path

        cert = Path(args.tls_cert) if args.tls_cert else server_cert_path(home)
        key = Path(args.tls_key) if args.tls_key else server_key_path(home)
        if not cert.exists() or not key.exists():
            print(f"no certificate in {cert.parent}: run `cityledger broker --tls` once to make one", file=sys.stderr)
            return 2
        tls = (cert, key)
    serve(home, args.host, args.port, args.cors_origin, tls)
    return 0


def cmd_agencies_add(args: argparse.Namespace) -> int:
    out = ledger_api(args).issue_token(
        kind="agency",
        principal=args.name,
        scopes=args.scope,
        expires=args.expires,
        rate_per_minute=args.rate,
        operator=operator_id(args),
    )
    return show_token(out, args.json)


def show_token(out: TokenIssued, as_json: bool) -> int:
    """A token just made, printed once (`agencies add`, `operators token`): only its hash is kept."""
    if as_json:
        emit(out)
        return 0
    print(f"token for {out['kind']} {out['principal']} (id {out['id']}), shown this once; keep it secret:")
    print(out["token"])
    print(f"scopes: {' '.join(out['scopes'])}; expires {_day(out['expires_at'])}; {out['rate_per_minute']}/min")
    return 0


def cmd_agencies_list(args: argparse.Namespace) -> int:
    rows = ledger_api(args).api_tokens(args.name)
    if args.json:
        emit(rows)
        return 0
    now = time.time() * 1000
    for t in rows:
        state = "revoked" if t["revoked_at"] else "expired" if t["expires_at"] <= now else "live"
        print(
            f"{t['id']}  {t['kind']:<8} {t['principal']:<20} {state:<8} until {_day(t['expires_at'])}  {' '.join(t['scopes'])}"
        )
    print(f"{len(rows)} tokens")
    return 0


def cmd_agencies_revoke(args: argparse.Namespace) -> int:
    emit(ledger_api(args).revoke_token(args.token_id, operator_id(args)))
    return 0


def cmd_grant(args: argparse.Namespace) -> int:
    emit(
        ledger_api(args).grant_sharing(args.from_district, args.to_agency, args.dataset, args.until, operator_id(args))
    )
    return 0


def cmd_revoke_grant(args: argparse.Namespace) -> int:
    emit(ledger_api(args).revoke_sharing(args.grant_id, operator_id(args)))
    return 0


def cmd_grants(args: argparse.Namespace) -> int:
    rows = ledger_api(args).sharing_grants(args.district, args.agency)
    if args.json:
        emit(rows)
        return 0
    now = time.time() * 1000
    for g in rows:
        state = "revoked" if g["revoked_at"] else "ended" if g["until"] <= now else "live"
        print(
            f"{g['id']}  {g['from_district']} -> {g['to_agency']:<20} {g['dataset']:<10} {state:<8} until {_day(g['until'])}"
        )
    print(f"{len(rows)} grants")
    return 0


def cmd_access_log(args: argparse.Namespace) -> int:
    ledger = ledger_api(args)
    until = int(time.time() * 1000) + 1
    since = until - args.days * 86_400_000
    rows, cursor = [], None
    while True:
        page = ledger.access_log(args.district, since, until, not args.refusals, cursor, 10_000)
        rows.extend(page["items"])
        cursor = page["next"]
        if cursor is None:
            break
    if args.format == "json":
        emit(rows)
    elif args.format == "csv":
        out = csv.writer(sys.stdout)
        out.writerow(
            ["at_ms", "principal", "token", "method", "path", "dataset", "district", "grant", "status", "records"]
        )
        for r in rows:
            out.writerow(
                [
                    r["at"],
                    r["principal"],
                    r["token"],
                    r["method"],
                    r["path"],
                    r["dataset"],
                    r["district"],
                    r["grant"],
                    r["status"],
                    r["records"],
                ]
            )
    else:
        for r in rows:
            print(
                f"{_day(r['at'], True)}  {r['principal']:<20} {r['status']} {r['method']} {r['path']}  {r['records']} records  {r['grant'] or ''}"
            )
        print(f"{len(rows)} requests")
    return 0


def _day(ms: int, with_time: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if with_time else "%Y-%m-%d", time.gmtime(ms / 1000))
