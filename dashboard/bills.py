"""A bill as people read it: line titles, tier and session tables, CSV and a printable page. Pure.

Amounts are shown exactly as the ledger computed them (decimal strings): nothing
here does arithmetic on money, so the page cannot disagree with the bill.
"""

from __future__ import annotations

import csv
import html
import io
from typing import Any

from dashboard.fmt import kind_label, minutes, money, month_label, unit_label


def line_title(line: dict[str, Any]) -> str:
    if line["type"] == "utility":
        return (
            f"{kind_label(line['kind'])} · meter {line['device']} · "
            f"{line['consumption']} {unit_label(line['unit'])} · {money(line['amount'])}"
        )
    if line["type"] == "parking":
        n = len(line["sessions"])
        return f"Parking · space {line['device']} · {n} stay{'s' if n != 1 else ''} · {money(line['amount'])}"
    return f"Adjustment · {line['reason']} · {money(line['amount'])}"


def line_key(index: int, line: dict[str, Any]) -> str:
    """A stable, human name for a line, used as a dispute's subject."""
    if line["type"] == "adjustment":
        return f"line {index + 1}: adjustment {line['id']}"
    return f"line {index + 1}: {line['type']} {line['device']}"


def tier_rows(line: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "Tier": t["tier"],
            "Quantity": f"{t['quantity']} {unit_label(t['unit'])}",
            "Price": f"¥{t['price']}/{unit_label(t['unit'])}",
            "Amount": money(t["amount"]),
        }
        for t in line.get("tiers", [])
    ]


def session_rows(line: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for s in line.get("sessions", []):
        rows.append(
            {
                "Space": line["device"],
                "From": s["start"].replace("T", " ")[:16],
                "To": (s["end"] or "still parked").replace("T", " ")[:16],
                "Duration": minutes(s.get("minutes")),
                "Zone class": s["zone_class"],
                "Fee": money(s["amount"]),
                "Notes": "; ".join(s.get("flags", [])),
            }
        )
    return rows


def readings_of(line: dict[str, Any]) -> list[tuple[str, int]]:
    """Every (device, seq) the line rests on, in order, once each."""
    found: list[tuple[str, int]] = []
    for device, seq in line.get("readings", []):
        found.append((device, int(seq)))
    for s in line.get("sessions", []):
        for device, seq in s.get("readings", []):
            found.append((device, int(seq)))
    return list(dict.fromkeys(found))


def all_readings(bill: dict[str, Any]) -> list[tuple[int, str, int]]:
    """(line index, device, seq) for every reading the bill rests on."""
    return [(i, d, s) for i, line in enumerate(bill["lines"]) for d, s in readings_of(line)]


def status_text(bill: dict[str, Any]) -> str:
    if bill.get("status") == "issued":
        return f"issued, sealed in block {bill.get('height')} (bill hash {str(bill.get('hash'))[:16]}…)"
    return "as it stands now (not yet issued)"


def csv_text(bill: dict[str, Any]) -> str:
    """Every line, tier row, parking stay and adjustment, with the total: one row each."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(
        [
            "account",
            "month",
            "status",
            "line",
            "type",
            "item",
            "detail",
            "quantity",
            "unit",
            "price",
            "amount_cny",
            "readings",
        ]
    )
    head = [bill["account"], bill["month"], bill.get("status", "draft")]
    for i, line in enumerate(bill["lines"], 1):
        readings = " ".join(f"{d}#{s}" for d, s in readings_of(line))
        if line["type"] == "utility":
            w.writerow(
                [
                    *head,
                    i,
                    line["kind"],
                    line["device"],
                    "total " + "; ".join(line.get("flags", [])),
                    line["consumption"],
                    line["unit"],
                    "",
                    line["amount"],
                    readings,
                ]
            )
            for t in line["tiers"]:
                w.writerow(
                    [
                        *head,
                        i,
                        "tier",
                        line["device"],
                        f"tier {t['tier']}",
                        t["quantity"],
                        t["unit"],
                        t["price"],
                        t["amount"],
                        "",
                    ]
                )
        elif line["type"] == "parking":
            w.writerow(
                [
                    *head,
                    i,
                    "parking",
                    line["device"],
                    "total",
                    len(line["sessions"]),
                    "stays",
                    "",
                    line["amount"],
                    readings,
                ]
            )
            for s in line["sessions"]:
                w.writerow(
                    [
                        *head,
                        i,
                        "stay",
                        line["device"],
                        f"{s['start']} to {s['end'] or 'still parked'}",
                        s.get("minutes", ""),
                        "minutes",
                        f"zone class {s['zone_class']}",
                        s["amount"],
                        " ".join(f"{d}#{q}" for d, q in s.get("readings", [])),
                    ]
                )
        else:
            w.writerow(
                [
                    *head,
                    i,
                    "adjustment",
                    line["id"],
                    line["reason"],
                    "",
                    "",
                    "",
                    line["amount"],
                    f"by {line['operator']}",
                ]
            )
    w.writerow([*head, "", "total", "", "", "", "", "", bill["total"], ""])
    return out.getvalue()


_PRINT_CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em; color: #111; }
h1 { font-size: 1.4em; margin-bottom: 0; } .meta { color: #555; margin-top: .2em; }
table { border-collapse: collapse; width: 100%; margin: .5em 0 1.2em; }
th, td { border-bottom: 1px solid #ccc; padding: .3em .5em; text-align: left; font-size: .9em; }
td.n, th.n { text-align: right; } .total { font-size: 1.2em; font-weight: bold; text-align: right; }
.flag { color: #8a4b00; font-size: .85em; } code { font-size: .8em; }
@media print { body { margin: 0; } a { color: inherit; } }
"""


def printable_html(bill: dict[str, Any], issued_by: str = "cityledger") -> str:
    """A standalone page to print or keep; every value from the ledger is escaped."""
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Bill {e(bill['account'])} "
        f"{e(bill['month'])}</title><style>{_PRINT_CSS}</style></head><body>",
        f"<h1>{e(issued_by)}: bill for {e(month_label(bill['month']))}</h1>",
        f"<p class='meta'>Account {e(bill['account'])} · {e(bill.get('name', ''))} · "
        f"{e(bill.get('customer_class', ''))} · tariff version {e(str(bill.get('tariff_version', '')))} · "
        f"{e(status_text(bill))}</p>",
    ]
    for i, line in enumerate(bill["lines"], 1):
        parts.append(f"<h3>{i}. {e(line_title(line))}</h3>")
        if line["type"] == "utility":
            parts.append(
                "<table><tr><th>Tier</th><th class='n'>Quantity</th><th class='n'>Price</th>"
                "<th class='n'>Amount</th></tr>"
            )
            for t in tier_rows(line):
                parts.append(
                    f"<tr><td>{t['Tier']}</td><td class='n'>{e(t['Quantity'])}</td>"
                    f"<td class='n'>{e(t['Price'])}</td><td class='n'>{e(t['Amount'])}</td></tr>"
                )
            parts.append("</table>")
        elif line["type"] == "parking":
            parts.append("<table><tr><th>From</th><th>To</th><th>Duration</th><th>Zone</th><th class='n'>Fee</th></tr>")
            for s in session_rows(line):
                parts.append(
                    f"<tr><td>{e(s['From'])}</td><td>{e(s['To'])}</td><td>{e(s['Duration'])}</td>"
                    f"<td>{s['Zone class']}</td><td class='n'>{e(s['Fee'])}</td></tr>"
                )
            parts.append("</table>")
        else:
            parts.append(f"<p>Recorded by {e(line['operator'])} (adjustment {e(line['id'])}).</p>")
        for flag in line.get("flags", []):
            parts.append(f"<p class='flag'>Note: {e(flag)}</p>")
        readings = readings_of(line)
        if readings:
            parts.append(
                "<p class='meta'>Rests on readings: <code>"
                + e(", ".join(f"{d} #{s}" for d, s in readings))
                + "</code></p>"
            )
    parts.append(f"<p class='total'>Total {e(money(bill['total']))}</p>")
    parts.append(
        "<p class='meta'>Every reading above can be proven with a receipt (dashboard: Proof; "
        "or <code>cityledger receipt DEVICE SEQ</code>) and checked against the city's ledger key.</p>"
    )
    parts.append("</body></html>")
    return "".join(parts)
