"""Proof: a reading's receipt, checked here step by step against the city's published ledger key."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from dashboard import bills, proof, ui
from dashboard.data import call, ledger
from dashboard.fmt import kind_label, month_label
from ledger.clock import now_ms
from ledger.errors import NotFound, Unavailable
from ledger.home import Home

data = ui.citizen()
st.title("Proof")
st.caption(
    "A receipt proves that a reading is in the city ledger exactly as your meter signed it. "
    "You can check it here, or anywhere else with the receipt file and the city's ledger key "
    "(see docs/verifying.md)."
)

FROM_BILL, FROM_METER = "A reading a bill rests on", "A reading of my meter at a time"


def trusted_key() -> str:
    """The first ledger key as the city published it (a file in the home), never the receipt's."""
    try:
        return Home.from_env().trusted_key.read_text().strip()
    except OSError as exc:
        raise NotFound("trusted key") from exc


def from_bill() -> tuple[str, int, str] | None:
    months = [m["month"] for m in data.bill_months()]
    q_month, q_device, q_seq = ui.query_param("month"), ui.query_param("device"), ui.query_param("seq")
    if q_month in months and st.session_state.get("proof_month") is None:
        st.session_state["proof_month"] = q_month
    month = st.selectbox("Bill", months, key="proof_month", format_func=month_label)
    readings = bills.all_readings(data.bill(month))
    choices = [f"{d} #{s}" for _, d, s in readings]
    asked = f"{q_device} #{q_seq}" if q_device and q_seq else None
    if asked and asked not in choices:
        choices.insert(0, asked)  # a reading named in the URL: the data layer decides whether it is yours
    if asked and st.session_state.get("proof_reading") is None:
        st.session_state["proof_reading"] = asked
    if not choices:
        ui.empty(f"Your bill for {month_label(month)} rests on no readings yet.")
        return None
    line_of = {f"{d} #{s}": i for i, d, s in readings}
    picked = st.selectbox(
        "Reading",
        choices,
        key="proof_reading",
        format_func=lambda c: f"{c} (line {line_of[c] + 1})" if c in line_of else c,
    )
    device, _, seq = (picked or "").rpartition(" #")
    return device, int(seq) if seq.isdigit() else -1, month


def from_meter() -> tuple[str, int, str | None] | None:
    meters = [d["device"] for d in data.meters()]
    if not meters:
        ui.empty("No meters are registered to your account.")
        return None
    tz = ui.tz()
    now = dt.datetime.fromtimestamp(now_ms() / 1000, tz)
    c = st.columns(3)
    device = c[0].selectbox(
        "Meter", meters, key="proof_meter", format_func=lambda d: f"{kind_label(data.meter(d)['kind'])} · {d}"
    )
    day = c[1].date_input("Day", value=now.date(), max_value=now.date(), key="proof_day")
    at = c[2].time_input("Time", value=dt.time(now.hour, 0), key="proof_time", step=900)
    when = int(dt.datetime.combine(day, at, tzinfo=tz).timestamp() * 1000)
    reading = data.reading_near(device, when)
    return device, reading["seq"], None


with ui.guard("the proof"):
    linked = ui.query_param("device") is not None  # arrived from a bill line
    source = st.radio("Prove", [FROM_BILL, FROM_METER], key="proof_source", horizontal=True, index=0 if linked else 1)
    picked = from_bill() if source == FROM_BILL else from_meter()
    if picked is None:
        st.stop()
    device, seq, month = picked
    receipt = data.receipt(device, seq, month=month)  # refused unless the reading is this account's
    key = trusted_key()
    steps = proof.check(receipt, key, call(ledger().key_chain))
    r = receipt["reading"]
    st.markdown(
        f"Reading **#{r['seq']}** of `{r['device']}` ({r['kind']}): value **{r['value']:,}** at "
        f"{ui.when(r['ts'], seconds=True)}, in block **{receipt['block']['height']}** "
        f"(leaf {receipt['leaf_index']} of {receipt['block']['size']})."
    )
    for s in steps:
        icon = {"ok": ":material/check_circle:", "failed": ":material/cancel:"}.get(s.state, ":material/pending:")
        box = {"ok": st.success, "failed": st.error}.get(s.state, st.info)
        box(f"**{s.title}**: {s.state}. {s.explains}" + (f"  \n`{s.detail}`" if s.detail else ""), icon=icon)
    if proof.valid(steps):
        st.success(
            f"Receipt valid: checked against the city's published ledger key `{key[:16]}…`, "
            "not the key written in the receipt.",
            icon=":material/verified:",
        )
    else:
        st.error("This receipt does not verify. Please report it on the Disputes page.")
    st.download_button(
        "Download receipt (JSON)",
        proof.receipt_file(receipt),
        key="receipt_json",
        file_name=f"receipt-{r['device']}-{r['seq']}.json",
        mime="application/json",
        icon=":material/download:",
    )
    with st.expander("The receipt"):
        st.code(proof.pretty(receipt), language="json")
    st.subheader("Checked by the witnesses")
    try:
        tlog_proof = data.tlog_receipt(device, seq, month=month)
    except Unavailable as exc:
        st.info(f"The version 2 receipt is not ready yet: {exc}", icon=":material/schedule:")
    else:
        st.caption(
            "The same proof in the transparency-log standard (C2SP tlog-proof): it also carries the "
            "signatures of the independent witnesses who keep their own copy of the city's log, so the "
            "city cannot show you one history and others another. Check it anywhere with:"
        )
        st.code(
            f"cityledger verify-receipt receipt-{r['device']}-{r['seq']}.tlog-proof "
            f'--ledger-key "$(cityledger tlog vkey)" --device-key {receipt["device_key"]} --policy policy.txt',
            language="sh",
        )
        st.download_button(
            "Download receipt (tlog-proof)",
            tlog_proof.encode(),
            key="receipt_tlog",
            file_name=f"receipt-{r['device']}-{r['seq']}.tlog-proof",
            mime="text/plain",
            icon=":material/download:",
        )
