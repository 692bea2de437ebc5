"""`cityledger devices ...`: enrol, provision, revoke, re-key and list the devices, settle their missing
readings, and set the message budget they are held to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ledger.cli.common import Subcommands, add, emit, group, ledger_api, operator_id, operator_option


def register(sub: Subcommands) -> None:
    """Declare this group's commands under `sub`, the top-level subcommands."""
    dsub = group(sub, "devices", "enrol, revoke and list devices")
    p = add(dsub, "enroll", cmd_devices_enroll, "enrol a device whose key was made on the device")
    p.add_argument("--id", required=True)
    p.add_argument("--kind", required=True, choices=["water", "gas", "electricity", "parking"])
    p.add_argument("--district", required=True)
    p.add_argument("--public-key", required=True, help="hex Ed25519 public key")
    p.add_argument("--account")
    operator_option(p)
    p = add(
        dsub,
        "provision",
        cmd_devices_provision,
        "for a device without its own key store: make its key and broker login into a bundle DIR",
    )
    p.add_argument("--id", required=True)
    p.add_argument("--kind", required=True, choices=["water", "gas", "electricity", "parking"])
    p.add_argument("--district", required=True)
    p.add_argument("--account")
    p.add_argument("--out", required=True, help="bundle directory to create (private key, login, settings)")
    operator_option(p)
    p = add(dsub, "revoke", cmd_devices_revoke, "revoke a device: broker login removed, readings refused")
    p.add_argument("id")
    operator_option(p)
    p = add(
        dsub,
        "rotate-key",
        cmd_devices_rotate_key,
        "give a device a new key from a seq on; earlier readings stay verifiable",
    )
    p.add_argument("id")
    p.add_argument("--public-key", required=True, help="hex Ed25519 public key made on the device")
    p.add_argument(
        "--from-seq",
        type=int,
        required=True,
        help="the first seq the new key signs, as the device reports it (its next seq)",
    )
    operator_option(p)
    p = add(
        dsub,
        "write-off",
        cmd_devices_write_off,
        "settle seqs that will never be ledgered: the device's ack passes them and it drops them",
    )
    p.add_argument("id")
    p.add_argument("--seqs", type=_seq_range, required=True, metavar="FIRST[-LAST]")
    p.add_argument("--reason", required=True)
    operator_option(p)
    add(dsub, "held-back", cmd_devices_held_back, "devices whose ack a missing reading holds back", json=True)
    p = add(dsub, "write-offs", cmd_devices_write_offs, "seqs written off, of one device or all")
    p.add_argument("id", nargs="?")
    p = add(dsub, "assign", cmd_devices_assign, "bind a meter to an account (a household moves in), or unbind it")
    p.add_argument("id")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--account")
    who.add_argument("--none", action="store_true", help="unbind: nobody is billed for it from now on")
    operator_option(p)
    p = add(dsub, "keys", cmd_devices_keys, "a device's key history")
    p.add_argument("id")
    p = add(dsub, "reset-password", cmd_devices_reset_password, "issue a new broker password (shown once)")
    p.add_argument("id")
    p = add(
        dsub, "flagged", cmd_devices_flagged, "devices sending many rejected messages (hostile or broken)", json=True
    )
    p.add_argument("--minutes", type=int, default=60, help="look back this far")
    p.add_argument("--threshold", type=int, default=60, help="rejects per minute that flag a device")
    p = add(
        dsub,
        "policy",
        cmd_devices_policy,
        "the per-device message budget, and when a device over it is "
        "suspended (sealed in the chain); no option: show it",
    )
    p.add_argument("--rate", type=float, help="messages a second a device may send, sustained")
    p.add_argument("--burst", type=float, help="messages a device may send at once")
    p.add_argument("--suspend-after", type=float, metavar="MIN", help="minutes over budget before suspension")
    p.add_argument("--suspend-for", type=float, metavar="MIN", help="minutes a suspension lasts")
    operator_option(p)
    p = add(dsub, "reinstate", cmd_devices_reinstate, "end a device's suspension now (it ends by itself when due)")
    p.add_argument("id")
    operator_option(p)
    add(dsub, "list", cmd_devices_list, "list enrolled devices", json=True)


def cmd_devices_enroll(args: argparse.Namespace) -> int:
    out = ledger_api(args).enroll_device(
        device=args.id,
        kind=args.kind,
        district=args.district,
        public_key=args.public_key,
        account=args.account,
        operator=operator_id(args),
    )
    emit(out)
    return 0


def cmd_devices_provision(args: argparse.Namespace) -> int:
    """Make a key pair for a device with no key store of its own; only the bundle keeps the private key."""
    from broker.mqtt.client_ids import mqtt_client_id
    from edge.identity import DeviceIdentity

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"{out} is not empty; refusing to overwrite a device bundle", file=sys.stderr)
        return 2
    identity = DeviceIdentity.generate(args.id, args.kind, args.district)
    enrolled = ledger_api(args).enroll_device(
        device=args.id,
        kind=args.kind,
        district=args.district,
        public_key=identity.public_key_hex,
        account=args.account,
        operator=operator_id(args),
    )
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    identity.with_credentials(enrolled["mqtt_username"], enrolled["mqtt_password"]).save(out)
    # client_id: the broker admits only ids with the project's prefix (docs/security.md).
    broker = {"host": args.mqtt_host, "port": args.mqtt_port, "ca": None, "client_id": mqtt_client_id(args.id)}
    if args.mqtt_ca:
        (out / "ca.crt").write_bytes(Path(args.mqtt_ca).read_bytes())
        broker["ca"] = "ca.crt"
    (out / "device.json").write_text(
        json.dumps(
            {
                "device": args.id,
                "kind": args.kind,
                "district": args.district,
                "account": args.account,
                "public_key": identity.public_key_hex,
                "broker": broker,
                "topics": {leaf: identity.topic(leaf) for leaf in ("reading", "status", "ack")},
            },
            indent=2,
        )
        + "\n"
    )
    emit(
        {
            "device": args.id,
            "bundle": str(out.resolve()),
            "public_key": identity.public_key_hex,
            "block": enrolled["block"],
        }
    )
    return 0


def cmd_devices_revoke(args: argparse.Namespace) -> int:
    emit(ledger_api(args).revoke_device(device=args.id, operator=operator_id(args)))
    return 0


def cmd_devices_flagged(args: argparse.Namespace) -> int:
    rows = ledger_api(args).flagged_devices(minutes=args.minutes, threshold=args.threshold)
    if args.json:
        emit(rows)
        return 0
    for r in rows:
        print(
            f"{r['device']:<22} peak {r['peak_rejects_per_minute']:>7}/min  {r['rejects']:>9} rejects  {r['reasons']}"
        )
        s = r.get("suspension")
        if s:  # ledger/service/budget.py: over budget for too long
            rule = s["rule"] or {}
            state = (
                f"suspended until {_iso(s['until'])}"
                if s["status"] == "suspended"
                else f"was suspended {_iso(s['at'])}, reinstated {_iso(s['reinstated_at'])}"
            )
            print(
                f"{'':<22} {state}: over budget ({rule.get('rate')}/s, burst {rule.get('burst')}) for "
                f"{rule.get('suspend_after_min')} min, suspended for {rule.get('suspend_for_min')} min "
                + (
                    f"(rule of block {rule['policy_height']})"
                    if rule.get("policy_height") is not None
                    else "(the default rule)"
                )
            )
    print(f"{len(rows)} flagged devices")
    return 0


def _iso(ms: int | None) -> str:
    import datetime

    if ms is None:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_devices_policy(args: argparse.Namespace) -> int:
    changes = {
        "rate": args.rate,
        "burst": args.burst,
        "suspend_after_min": args.suspend_after,
        "suspend_for_min": args.suspend_for,
    }
    api = ledger_api(args)
    if any(v is not None for v in changes.values()):
        emit(api.set_budget_policy(**changes, operator=operator_id(args)))
    else:
        emit(api.budget_policy())
    return 0


def cmd_devices_reinstate(args: argparse.Namespace) -> int:
    emit(ledger_api(args).reinstate_device(device=args.id, operator=operator_id(args)))
    return 0


def cmd_devices_reset_password(args: argparse.Namespace) -> int:
    emit(ledger_api(args).reset_device_password(device=args.id))
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    devices = ledger_api(args).devices()
    if args.json:
        emit(devices)
        return 0
    print(f"{'device':<22} {'kind':<12} {'district':<10} {'status':<9} {'online':<8} account")
    for d in devices:
        print(
            f"{d['device']:<22} {d['kind']:<12} {d['district']:<10} {d['status']:<9} {d['online']:<8} "
            f"{d['account'] or '-'}"
        )
    print(f"{len(devices)} devices")
    return 0


def cmd_devices_rotate_key(args: argparse.Namespace) -> int:
    emit(
        ledger_api(args).rotate_device_key(
            device=args.id, public_key=args.public_key, from_seq=args.from_seq, operator=operator_id(args)
        )
    )
    return 0


def _seq_range(text: str) -> tuple[int, int]:
    """`7` or `7-12`: the seqs a write-off names."""
    first, _, last = text.partition("-")
    try:
        lo, hi = int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seq or a range like 7-12") from None
    return lo, hi


def cmd_devices_write_off(args: argparse.Namespace) -> int:
    lo, hi = args.seqs
    emit(
        ledger_api(args).write_off(
            device=args.id, from_seq=lo, to_seq=hi, reason=args.reason, operator=operator_id(args)
        )
    )
    return 0


def cmd_devices_write_offs(args: argparse.Namespace) -> int:
    emit(ledger_api(args).write_offs(device=args.id))
    return 0


def cmd_devices_held_back(args: argparse.Namespace) -> int:
    rows = ledger_api(args).held_back()
    if args.json:
        emit(rows)
        return 0
    for r in rows:
        gap = f"{r['missing_from']}" + (f"-{r['missing_to']}" if r["missing_to"] > r["missing_from"] else "")
        print(
            f"{r['device']:<22} acked {r['acked']:>8}  missing {gap:<15} {r['ledgered_above']:>6} ledgered above  "
            f"(see `cityledger quarantine list --device {r['device']}`; settle: `cityledger devices write-off "
            f"{r['device']} --seqs {gap} --reason ...`)"
        )
    return 0


def cmd_devices_assign(args: argparse.Namespace) -> int:
    emit(
        ledger_api(args).assign_account(
            device=args.id, account=None if args.none else args.account, operator=operator_id(args)
        )
    )
    return 0


def cmd_devices_keys(args: argparse.Namespace) -> int:
    emit(ledger_api(args).device_key_history(device=args.id))
    return 0
