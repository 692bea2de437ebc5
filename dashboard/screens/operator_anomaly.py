"""One anomaly: the device's readings around it, the evidence, the device's history, and the actions."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, fmt, ui
from dashboard.data import tariffs
from ledger.errors import NotFound

data = ui.operator()

NEXT = {"open": ["acknowledged", "resolved", "dismissed"], "acknowledged": ["resolved", "dismissed"]}
VERB = {"acknowledged": "Acknowledge", "resolved": "Resolve", "dismissed": "Dismiss"}

with ui.guard("the anomaly"):
    anomaly_id = ui.query_param("id") or st.session_state.get("anomaly_id")
    if not anomaly_id:
        st.title("Anomaly")
        ui.empty("Pick an anomaly on the Anomalies page.")
        st.page_link("screens/operator_anomalies.py", label="Back to the queue", icon=":material/arrow_back:")
        st.stop()
    try:
        a = data.anomaly(anomaly_id)
    except NotFound:
        st.title("Anomaly")
        raise
    st.session_state["anomaly_id"] = a["id"]
    st.query_params["id"] = a["id"]
    st.title(f"Anomaly {a['id']}: {a['type']}")
    ui.show_flash()
    st.page_link("screens/operator_anomalies.py", label="Back to the queue", icon=":material/arrow_back:")
    c = st.columns(4)
    c[0].metric("Status", a["status"])
    c[1].metric("Severity", a["severity"] or "-")
    c[2].metric("Device", a["device"])
    c[3].metric("District", a["district"])
    st.markdown(f"**What the detector saw:** {a['detail'] or '-'}")
    st.caption(
        f"Window {ui.when(a['window_start'])} to {ui.when(a['window_end'])} · raised "
        f"{ui.when(a['raised_at'])} · account {a['account'] or '-'}"
    )

    tz_name = tariffs()["timezone"]
    around = data.anomaly_readings(a)
    evidence = [int(s) for d, s in a["evidence"] if d == a["device"]]
    if around["points"]:
        device = data.device(a["device"])
        unit = {"water": "litres", "gas": "litres", "electricity": "Wh", "parking": "0 free / 1 taken"}.get(
            device["kind"], ""
        )
        st.subheader("Readings around it")
        st.altair_chart(
            charts.readings_chart(around["points"], unit, (a["window_start"], a["window_end"]), tz_name, evidence),
            width="stretch",
        )
        st.caption(
            f"{around['count']:,} readings of {a['device']}"
            + (" (thinned to the last reading per interval for the chart)" if around["thinned"] else "")
            + "; the shaded band is the anomaly's window, red dots are the evidence."
        )
    else:
        ui.empty("No readings of this device around the anomaly's window.")

    left, right = st.columns(2)
    with left:
        st.subheader("Evidence")
        if a["evidence"]:
            by_seq = {p["seq"]: p for p in around["points"]}
            ui.table(
                [
                    {
                        "Device": d,
                        "Seq": s,
                        "Measured": ui.when(by_seq[s]["ts"], seconds=True) if s in by_seq else "-",
                        "Value": by_seq[s]["value"] if s in by_seq else None,
                    }
                    for d, s in a["evidence"]
                ]
            )
        else:
            st.caption("The detector named no particular readings.")
        st.subheader("History of this anomaly")
        ui.table(
            [
                {
                    "When": ui.when(h["at"], seconds=True),
                    "Status": h["status"],
                    "By": h["operator"] or "-",
                    "Note": h["note"] or "",
                    "Detail": h["detail"] or "",
                }
                for h in a["history"]
            ]
        )
    with right:
        st.subheader("The device")
        d = data.device(a["device"])
        st.markdown(
            f"`{d['device']}` · {d['kind']} · {d['district']} · {d['status']} · "
            f"connection {d['online'] or 'unknown'} · account {d['account'] or '-'}"
        )
        last = d["last"]
        seen = "none" if last is None else f"#{last['seq']} = {last['value']:,} at {ui.when(last['ts'])}"
        st.caption(
            f"Last reading: {seen} · {d['readings_last_day']:,} readings and "
            f"{d['rejects_last_day']:,} rejects in the last day"
        )
        keys = data.key_history(a["device"])
        ui.table(
            [
                {"Key": fmt.short(k["public_key"], 24), "From block": k["from_height"], "Since": ui.when(k["since"])}
                for k in keys
            ]
        )
        others = [x for x in data.device_anomalies(a["device"]) if x["id"] != a["id"]]
        if others:
            st.markdown("**Other anomalies of this device**")
            ui.table(
                [
                    {"Id": x["id"], "Type": x["type"], "Status": x["status"], "Raised": ui.when(x["raised_at"])}
                    for x in others
                ]
            )

    st.subheader("Act on it")
    actions = NEXT.get(a["status"], [])
    if not actions:
        st.info(f"This anomaly is {a['status']}; nothing more to do.")
    else:
        with st.form("act", clear_on_submit=True):
            action = st.radio("Action", actions, format_func=lambda s: VERB[s], horizontal=True, key="act_action")
            note = st.text_area("Note (required to resolve or dismiss)", key="act_note", max_chars=2000)
            if st.form_submit_button("Record", type="primary"):
                done = data.act_on_anomaly(a["id"], action, note)
                ui.flash(f"Recorded: {a['id']} is now {done['status']}.")
                st.rerun()
