"""The anomaly queue: filter by status, type and district; open one to work on it."""

from __future__ import annotations

import streamlit as st

from dashboard import fmt, ui
from dashboard.data import ANOMALY_STATES
from ledger.clock import now_ms

data = ui.operator()
st.title("Anomalies")

with ui.guard("the anomaly queue"):
    c = st.columns([1, 1, 2])
    status = c[0].selectbox(
        "Status", ["open", "acknowledged", "open or acknowledged", *ANOMALY_STATES[2:], "any"], key="an_status"
    )
    type_ = c[1].text_input("Type", key="an_type", placeholder="leak, tamper, silent…", max_chars=40).strip()
    districts = c[2].multiselect(
        "Districts",
        data.districts(),
        key="an_districts",
        placeholder="All your districts" if data.limited else "The whole city",
    )
    want = None if status in ("any", "open or acknowledged") else status
    found = data.anomalies(status=want, type=type_ or None, districts=districts or None)
    if status == "open or acknowledged":
        found = [a for a in found if a["status"] in ("open", "acknowledged")]
    if not found:
        ui.empty("No anomalies match. The detectors scan the ledger every few minutes; new findings appear here.")
        st.stop()
    now = now_ms()
    rows = [
        {
            "Id": a["id"],
            "Type": a["type"],
            "Severity": a["severity"],
            "Status": a["status"],
            "Device": a["device"],
            "District": a["district"],
            "Account": a["account"] or "-",
            "Raised": ui.when(a["raised_at"]),
            "Updated": fmt.ago(a["updated_at"], now),
            "What": a["detail"] or "",
        }
        for a in found
    ]
    st.caption(f"{len(rows)} anomal{'y' if len(rows) == 1 else 'ies'}. Select one to open it.")
    picked = ui.table(rows, on_select="rerun", selection_mode="single-row", key="an_table")
    chosen = None
    if picked is not None and picked.selection.rows:
        chosen = found[picked.selection.rows[0]]["id"]
    ids = [a["id"] for a in found]
    manual = st.selectbox(
        "Open anomaly",
        ids,
        index=ids.index(chosen) if chosen in ids else None,
        key="an_open",
        placeholder="Pick an anomaly id",
    )
    if st.button("Open this anomaly", key="an_go", type="primary", disabled=manual is None) and manual is not None:
        st.switch_page("screens/operator_anomaly.py", query_params={"id": manual})
    if chosen:
        st.switch_page("screens/operator_anomaly.py", query_params={"id": chosen})
