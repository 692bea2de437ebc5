"""The bill as it stands and the bills issued: every line with its tiers, readings, flags and total."""

from __future__ import annotations

import streamlit as st

from dashboard import bills, ui
from dashboard.fmt import money, month_label, unit_label

data = ui.citizen()
st.title("Bill")

with ui.guard("your bill"):
    months = data.bill_months()
    options = [m["month"] for m in months]
    wanted = ui.query_param("month")
    if wanted in options and st.session_state.get("bill_month") is None:
        st.session_state["bill_month"] = wanted
    labels = {
        m["month"]: f"{month_label(m['month'])} · "
        + (f"issued, {money(m['total'])}" if m["issued"] else "as it stands")
        for m in months
    }
    month = st.selectbox("Month", options, key="bill_month", format_func=lambda m: labels.get(m, m))
    bill = data.bill(month)

    head = st.columns([2, 1, 1])
    head[0].markdown(
        f"**{bill['name']}** · account `{bill['account']}` · {bill['customer_class']}  \n"
        f"{month_label(bill['month'])}, {bills.status_text(bill)} · tariff version "
        f"{bill['tariff_version']}"
    )
    head[1].metric("Total", money(bill["total"]))
    with head[2]:
        st.download_button(
            "Download CSV",
            bills.csv_text(bill),
            file_name=f"bill-{bill['account']}-{month}.csv",
            mime="text/csv",
            key="csv",
            icon=":material/download:",
        )
        st.download_button(
            "Printable page",
            bills.printable_html(bill),
            key="html",
            file_name=f"bill-{bill['account']}-{month}.html",
            mime="text/html",
            icon=":material/print:",
            help="Open the file and print it from your browser.",
        )
    if bill.get("status") != "issued":
        st.info(
            "This bill is not issued yet: it shows what the ledger holds now and changes as readings "
            "arrive. It is issued, and then never changes, at the month-end close."
        )

    if not bill["lines"]:
        ui.empty("Nothing to bill this month: no meters, parking or adjustments on your account.")
    for i, line in enumerate(bill["lines"]):
        with st.container(border=True):
            st.markdown(f"**{i + 1}. {bills.line_title(line)}**")
            for flag in line.get("flags", []):
                st.warning(flag, icon=":material/flag:")
            if line["type"] == "utility":
                st.caption(
                    f"Used earlier this year: {line['used_this_year_before']} {unit_label(line['unit'])} "
                    f"(where this month starts on the tiers) · tariff in force from {line['tariff_from']}"
                )
                if line["tiers"]:
                    ui.table(bills.tier_rows(line))
                else:
                    st.caption("No consumption to charge.")
            elif line["type"] == "parking":
                ui.table(bills.session_rows(line))
            else:
                st.caption(
                    f"Correction recorded by operator {line['operator']} on {ui.when(line['created_at'])}, "
                    f"sealed in block {line['block']}."
                )
            readings = bills.readings_of(line)
            if readings:
                with st.expander(f"Readings this line rests on ({len(readings)})"):
                    st.caption("Each can be proven: pick it on the Proof page to see and check its receipt.")
                    ui.table([{"Device": d, "Seq": s} for d, s in readings])
                    if st.button("Prove these readings", key=f"prove_{i}", icon=":material/verified:"):
                        st.switch_page(
                            "screens/citizen_proof.py",
                            query_params={"month": month, "device": readings[0][0], "seq": str(readings[0][1])},
                        )
    st.markdown(f"### Total {money(bill['total'])}")

    issued = [m for m in months if m["issued"]]
    st.subheader("Bill history")
    if issued:
        ui.table([{"Month": month_label(m["month"]), "Total": money(m["total"])} for m in issued])
        st.caption(
            "Issued bills never change; corrections appear on the bill of the month they are made in. "
            "Pick a month above to see its lines."
        )
    else:
        ui.empty("No bill has been issued yet. Bills are issued at the month-end close, on the 1st.")
