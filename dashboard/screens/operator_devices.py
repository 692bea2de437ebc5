"""Devices: search, status, last reading, key history, revoke."""

from __future__ import annotations

import streamlit as st

from dashboard import fmt, ui
from ledger.clock import now_ms

data = ui.operator()
st.title("Devices")
ui.show_flash()

with ui.guard("the devices"):
    c = st.columns([2, 1, 1, 2])
    text = c[0].text_input("Search", key="dev_text", placeholder="device or account id", max_chars=64)
    kind = c[1].selectbox(
        "Kind", ["", "water", "electricity", "gas", "parking"], key="dev_kind", format_func=lambda k: k or "any"
    )
    status = c[2].selectbox(
        "Status",
        ["", "online", "offline", "active", "suspended", "revoked"],
        key="dev_status",
        format_func=lambda s: s or "any",
    )
    districts = c[3].multiselect(
        "Districts",
        data.districts(),
        key="dev_districts",
        placeholder="All your districts" if data.limited else "The whole city",
    )
    found = data.devices(text=text, kind=kind, status=status, districts=districts or None)
    now = now_ms()
    if not found["devices"]:
        ui.empty("No devices match.")
    else:
        st.caption(
            f"{found['total']:,} devices match"
            + (f"; the first {len(found['devices'])} are shown" if found["total"] > len(found["devices"]) else "")
        )
        rows = [
            {
                "Device": d["device"],
                "Kind": d["kind"],
                "District": d["district"],
                "Account": d["account"] or "-",
                "Status": d["status"],
                "Connection": d["online"] or "unknown",
                "Last reading (1 h)": ui.when(d["last_ts"]) if d["last_ts"] else "none in the last hour",
                "Value": d["last_value"],
            }
            for d in found["devices"]
        ]
        picked = ui.table(rows, on_select="rerun", selection_mode="single-row", key="dev_table")
        if picked is not None and picked.selection.rows:
            st.session_state["dev_open"] = found["devices"][picked.selection.rows[0]]["device"]

    if "dev_open" not in st.session_state and ui.query_param("device"):
        st.session_state["dev_open"] = ui.query_param("device")
    device_id = st.text_input("Open device", key="dev_open", placeholder="exact device id", max_chars=128).strip()
    if device_id:
        d = data.device(device_id)
        st.query_params["device"] = d["device"]
        st.subheader(d["device"])
        cols = st.columns(4)
        cols[0].metric("Status", d["status"])
        cols[1].metric("Connection", d["online"] or "unknown", help=f"since {ui.when(d['status_changed_at'])}")
        last = d["last"]
        cols[2].metric(
            "Last reading",
            fmt.ago(last["received_at"], now) if last else "never",
            help=None if last is None else f"#{last['seq']} = {last['value']:,} measured {ui.when(last['ts'])}",
        )
        cols[3].metric(
            "Readings (24 h)",
            f"{d['readings_last_day']:,}",
            delta=f"{d['rejects_last_day']:,} rejected",
            delta_color="off",
        )
        st.caption(
            f"{d['kind']} in {d['district']} · account {d['account'] or '-'} · enrolled "
            f"{ui.when(d['enrolled_at'])}" + (f" · revoked {ui.when(d['revoked_at'])}" if d["revoked_at"] else "")
        )
        s = d.get("suspension")
        if s:  # over its message budget for too long (docs/security.md)
            rule = s["rule"] or {}
            text = (
                f"over budget ({rule.get('rate')} messages/s, burst {rule.get('burst')}) for "
                f"{rule.get('suspend_after_min')} min; suspended {ui.when(s['at'])}"
            )
            if s["status"] == "suspended":
                st.warning(f"Suspended until {ui.when(s['until'])}: {text}. The broker refuses it until then.")
            else:
                st.caption(f"Last suspension: {text}, reinstated {ui.when(s['reinstated_at'])}.")
        st.markdown("**Key history** (readings signed under an earlier key stay verifiable)")
        ui.table(
            [
                {"Public key": k["public_key"], "Signs from block": k["from_height"], "Since": ui.when(k["since"])}
                for k in data.key_history(d["device"])
            ]
        )
        if d["status"] != "revoked":
            with st.form("revoke"):
                st.markdown(
                    "**Revoke this device.** Its broker login stops at once and its messages are "
                    "quarantined from now on. Readings already in the ledger stay. This cannot be undone."
                )
                sure = st.checkbox(f"Yes, revoke {d['device']}", key="revoke_sure")
                if st.form_submit_button("Revoke", type="primary"):
                    if not sure:
                        st.warning("Tick the box to confirm.")
                    else:
                        data.revoke(d["device"])
                        ui.flash(f"{d['device']} is revoked.")
                        st.rerun()
