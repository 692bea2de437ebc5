"""Parking: occupancy by zone over the day, and revenue from issued bills."""

from __future__ import annotations

import datetime as dt

import streamlit as st

from dashboard import charts, ui
from dashboard.data import tariffs
from dashboard.fmt import money
from ledger.clock import now_ms

data = ui.operator()
st.title("Parking")

with ui.guard("parking"):
    tz = ui.tz()
    today = dt.datetime.fromtimestamp(now_ms() / 1000, tz).date()
    c = st.columns([1, 2])
    day = c[0].date_input("Day", value=today, max_value=today, key="park_day")
    districts = c[1].multiselect(
        "Districts",
        data.districts(),
        key="park_districts",
        placeholder="All your districts" if data.limited else "The whole city",
    )
    now = data.parking_now(districts or None)
    m = st.columns(3)
    m[0].metric("Spaces", f"{now['spaces']:,}")
    m[1].metric("Taken now", f"{now['taken']:,}", help="Last report from each space in the past hour.")
    m[2].metric("Reporting (1 h)", f"{now['reporting']:,}")
    if not now["spaces"]:
        ui.empty("No parking spaces in your districts.")
        st.stop()

    st.subheader("Occupancy by zone over the day")
    rows = data.occupancy(day, districts or None)
    if rows:
        day_start = int(dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)
        st.altair_chart(charts.occupancy_chart(rows, tariffs()["timezone"], day_start), width="stretch")
        st.caption(
            "Share of the time spaces were reported taken, per hour: a report holds until the next one "
            "(at most 6 hours). Zone class sets the price (class 1 is the dearest)."
        )
    else:
        ui.empty(f"No parking reports on {day:%Y-%m-%d}.")

    st.subheader("Revenue")
    revenue = data.revenue(districts or None)
    if revenue:
        st.altair_chart(charts.revenue_chart(revenue), width="stretch")
        ui.table(
            [
                {"Month": r["month"], "District": r["district"], "Revenue": money(r["amount"]), "Stays": r["stays"]}
                for r in revenue
            ]
        )
        st.caption(
            "Parking fees on issued bills (the month-end close), by the space's district. The month running "
            "now is counted when it is closed."
        )
    else:
        ui.empty("No bills issued yet: parking revenue is counted from issued bills after the month-end close.")
