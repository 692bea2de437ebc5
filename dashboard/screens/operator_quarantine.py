"""Quarantine: rejected messages with their reasons and raw payloads (shown as text, never rendered)."""

from __future__ import annotations

import streamlit as st

from dashboard import ui

data = ui.operator()
st.title("Quarantine")

with ui.guard("the quarantine"):
    c = st.columns([1, 1, 2])
    districts = c[2].multiselect(
        "Districts",
        data.districts(),
        key="q_districts",
        placeholder="All your districts" if data.limited else "The whole city",
    )
    summary = data.quarantine_summary(districts or None)
    reason = c[0].selectbox("Reason", ["", *summary["reasons"]], key="q_reason", format_func=lambda r: r or "any")
    device = c[1].text_input("Device", key="q_device", placeholder="exact device id", max_chars=128)
    if summary["by_reason"]:
        st.caption(
            "Rejected in the last 24 hours (every one is counted; at most 1,000 per device and hour are "
            f"kept with their payload, {summary['stored']:,} kept): "
            + ", ".join(f"{r['reason']} {r['count']:,}" for r in summary["by_reason"])
        )
    rows = data.quarantine(reason=reason or None, device=device or None, districts=districts or None)
    if not rows:
        ui.empty("Nothing in quarantine matches. Every message that fails a check lands here with its reason.")
        st.stop()
    table = [
        {
            "Received": ui.when(r["received_at"], seconds=True),
            "Reason": r["reason"],
            "Device": r["device"] or "-",
            "District": r["district"],
            "Detail": r["detail"],
            "Topic": r["topic"],
            "Payload (start)": r["payload"][:80],
            "Bytes": r["payload_bytes"],
        }
        for r in rows
    ]
    st.caption(f"Newest {len(rows)} kept messages. Select one to see its raw payload.")
    picked = ui.table(table, on_select="rerun", selection_mode="single-row", key="q_table")
    index = picked.selection.rows[0] if picked is not None and picked.selection.rows else 0
    r = rows[index]
    st.subheader("Raw payload")
    st.caption(
        f"{r['reason']} · {r['detail']} · topic `{r['topic']}` · {r['payload_bytes']:,} bytes · received "
        f"{ui.when(r['received_at'], seconds=True)}. Shown as text; bytes that are not UTF-8 appear as \\x.."
    )
    st.code(r["payload"], language=None, wrap_lines=True)
