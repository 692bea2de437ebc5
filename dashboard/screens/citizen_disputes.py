"""Disputes: question a bill line or report a meter problem; follow the operator's answer."""

from __future__ import annotations

import streamlit as st

from dashboard import bills, ui
from dashboard.fmt import month_label

data = ui.citizen()
st.title("Disputes")

STATUS = {"open": "🟠 open: waiting for the city", "answered": "🔵 answered", "closed": "⚪ closed"}

with ui.guard("your disputes"):
    with st.expander("Open a dispute", expanded=not data.disputes()):
        kind = st.radio(
            "About",
            ["A line on a bill", "A problem with a meter", "Something else"],
            key="new_kind",
            horizontal=True,
            index=None,
        )
        subject = "General question"
        if kind == "A line on a bill":
            months = [m["month"] for m in sorted(data.bill_months(), key=lambda m: not m["issued"])]
            month = st.selectbox("Bill", months, key="new_month", format_func=month_label)
            lines = data.bill(month)["lines"]
            if lines:
                i = st.selectbox(
                    "Line",
                    list(range(len(lines))),
                    key="new_line",
                    format_func=lambda i: f"{i + 1}. {bills.line_title(lines[i])}",
                )
                subject = f"Bill {month}, {bills.line_key(i, lines[i])}"
            else:
                st.caption("That bill has no lines.")
                subject = f"Bill {month}"
        elif kind == "A problem with a meter":
            meters = [m["device"] for m in data.meters()]
            if meters:
                meter = st.selectbox("Meter", meters, key="new_meter")
                subject = f"Meter {meter}"
            else:
                st.caption("No meters are registered to your account.")
        with st.form("new_dispute", clear_on_submit=True):
            message = st.text_area(
                "What is wrong?",
                key="new_message",
                max_chars=4000,
                placeholder="For example: the meter was replaced on 3 March; the reading after that looks too high.",
            )
            sent = st.form_submit_button("Send", type="primary")
        if sent:
            created = data.open_dispute(subject, message)
            st.success(f"Sent. Your dispute is {created['id']}; an operator will answer here.")

    disputes = data.disputes()
    if not disputes:
        ui.empty("You have no disputes. If a bill line or a meter looks wrong, open one above.")
        st.stop()
    for d in disputes:
        with st.container(border=True):
            st.markdown(f"**{d['subject'] or 'Dispute'}** · `{d['id']}` · {STATUS.get(d['status'], d['status'])}")
            st.caption(f"Opened {ui.when(d['opened_at'])}")
            for m in d["messages"]:
                who = "You" if m["author"] == data.account else f"City operator {m['author']}"
                st.markdown(f"*{who}, {ui.when(m['at'])}:*")
                st.text(m["message"])  # as plain text: never rendered as markup
            if d["status"] != "closed":
                with st.form(f"reply_{d['id']}", clear_on_submit=True):
                    reply = st.text_area("Add a message", key=f"reply_text_{d['id']}", max_chars=4000)
                    if st.form_submit_button("Send"):
                        data.reply(d["id"], reply)
                        st.rerun()
