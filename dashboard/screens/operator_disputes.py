"""Disputes inbox: read, answer, append a correction to the bill, close."""

from __future__ import annotations

import streamlit as st

from dashboard import bills, ui
from dashboard.fmt import money

data = ui.operator()
st.title("Disputes")
ui.show_flash()

with ui.guard("the corrections waiting for approval"):
    waiting = data.pending_adjustments()
    if waiting:
        st.subheader("Corrections waiting for a second operator")
        st.caption("Above the approval limit a correction is sealed only once another operator approves it.")
        for r in waiting:
            cols = st.columns([5, 1, 1])
            cols[0].markdown(
                f"`{r['id']}` · account `{r['account']}` · **{money(r['amount'])}** · "
                f"requested by {r['operator']} {ui.when(r['at'])}  \n{r['reason']}"
            )
            mine = r["operator"] == data.operator
            if cols[1].button(
                "Approve",
                key=f"adj_ok_{r['id']}",
                disabled=mine,
                help="You requested it: another operator must approve it" if mine else None,
            ):
                data.decide_adjustment(r["id"], approve=True)
                ui.flash(f"Correction {r['id']} approved and sealed.")
                st.rerun()
            if cols[2].button("Withdraw" if mine else "Reject", key=f"adj_no_{r['id']}"):
                data.decide_adjustment(r["id"], approve=False)
                ui.flash(f"Correction {r['id']} {'withdrawn' if mine else 'rejected'}.")
                st.rerun()

with ui.guard("the disputes"):
    status = st.segmented_control("Show", ["open", "answered", "closed", "all"], default="open", key="dsp_status")
    found = data.disputes(None if status in (None, "all") else status)
    ids = [d["id"] for d in found]
    clicked = None
    if found:
        rows = [
            {
                "Id": d["id"],
                "Account": d["account"],
                "About": d["subject"] or "-",
                "Status": d["status"],
                "Opened": ui.when(d["opened_at"]),
                "Last message": ui.when(d["messages"][-1]["at"]),
                "Messages": len(d["messages"]),
            }
            for d in found
        ]
        picked = ui.table(rows, on_select="rerun", selection_mode="single-row", key="dsp_table")
        if picked is not None and picked.selection.rows:
            clicked = ids[picked.selection.rows[0]]
    else:
        ui.empty(
            f"No {status if status not in (None, 'all') else ''} disputes. Citizens open them about a bill "
            "line or a meter.".replace("No  ", "No ")
        )
    choice = clicked or ui.query_param("id") or (ids[0] if ids else None)  # the URL keeps the one open
    if choice is None:
        st.stop()
    d = data.dispute(choice)  # in this operator's districts, or not found
    st.query_params["id"] = d["id"]

    st.subheader(f"{d['subject'] or 'Dispute'}")
    st.caption(f"`{d['id']}` · account `{d['account']}` · {d['status']} · opened {ui.when(d['opened_at'])}")
    for m in d["messages"]:
        who = "Citizen" if m["author"] == d["account"] else f"Operator {m['author']}"
        st.markdown(f"*{who}, {ui.when(m['at'])} ({m['status']}):*")
        st.text(m["message"])  # as plain text: never rendered as markup

    month = (d["subject"] or "")[5:12] if (d["subject"] or "").startswith("Bill ") else None
    if month and st.toggle(f"Show {d['account']}'s bill for {month}", key="dsp_bill"):
        bill = data.bill(d["account"], month)
        st.caption(f"{bills.status_text(bill)} · total {money(bill['total'])}")
        ui.table(
            [
                {
                    "Line": i + 1,
                    "What": bills.line_title(line),
                    "Amount": money(line["amount"]),
                    "Flags": "; ".join(line.get("flags", [])),
                }
                for i, line in enumerate(bill["lines"])
            ]
        )

    if d["status"] == "closed":
        st.info("This dispute is closed. If the citizen writes again it reopens.")
        st.stop()
    left, right = st.columns(2)
    with left, st.form("answer", clear_on_submit=True):
        st.markdown("**Answer**")
        text = st.text_area("Message to the citizen", key="dsp_answer", max_chars=4000)
        close = st.checkbox("Close the dispute with this answer", key="dsp_close")
        if st.form_submit_button("Send answer", type="primary"):
            data.answer(d["id"], text, close=close)
            ui.flash("Answer sent" + (" and dispute closed." if close else "."))
            st.rerun()
    with right, st.form("adjust", clear_on_submit=True):
        st.markdown("**Adjust the bill** (an appended correction: nothing issued is changed)")
        amount = st.text_input(
            "Amount in CNY (negative for a refund or credit)", key="dsp_amount", placeholder="-12.50", max_chars=20
        )
        reason = st.text_input("Reason (shown on the bill)", key="dsp_reason", max_chars=200)
        if st.form_submit_button("Append correction"):
            out = data.adjust(d["id"], amount, reason)
            if out["status"] == "sealed":
                ui.flash(
                    f"Correction {out['id']} of {money(out['amount'])} appended to {d['account']}'s bill; "
                    "the citizen was told in the dispute."
                )
            else:
                ui.flash(
                    f"Correction {out['id']} of {money(out['amount'])} is above the approval limit of "
                    f"{money(out['limit'])}: it waits for a second operator. The citizen was told."
                )
            st.rerun()
    if st.button("Close without answer", key="dsp_close_now"):
        data.close(d["id"])
        ui.flash("Dispute closed.")
        st.rerun()
