"""Parking: the stays at spaces on the account (leased, or checked in to), with duration and fee."""

from __future__ import annotations

from decimal import Decimal

import streamlit as st

from dashboard import bills, ui
from dashboard.fmt import minutes, money, month_label

data = ui.citizen()
st.title("Parking")

with ui.guard("your parking"):
    months = [m["month"] for m in data.bill_months()]
    month = st.selectbox("Month", months, key="parking_month", format_func=month_label)
    lines = data.parking(month)
    stays = [(line, s) for line in lines for s in line["sessions"]]
    if not stays:
        ui.empty(
            f"No parking stays billed to your account in {month_label(month)}. Stays at a space you lease, "
            "or at a space you checked in to, appear here with their fee."
        )
        st.stop()
    total = sum((Decimal(line["amount"]) for line in lines), Decimal("0.00"))
    parked = sum(s.get("minutes") or 0 for _, s in stays)
    c = st.columns(3)
    c[0].metric("Stays", len(stays))
    c[1].metric("Time parked", minutes(parked))
    c[2].metric("Fees", money(total))
    rows = [row for line in lines for row in bills.session_rows(line)]
    ui.table(rows)
    st.caption(
        "Daytime (07:00-21:00) is charged per started 15 minutes, the first hour at the lower price; "
        "night per started 2 hours. A stay belongs to the month it starts in. Notes say when reports "
        "from the sensor were missing and how the stay was repaired in your favour."
    )
