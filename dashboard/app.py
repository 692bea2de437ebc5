"""The cityledger dashboard: sign in, then the pages of your role (citizen or operator).

`cityledger dashboard` runs this file with Streamlit. The pages are in
`dashboard/screens/`; they read the ledger only through `dashboard.data`, which
applies the signed-in principal's scope. A page that is not your role's is not
registered in your session at all, so its URL leads back to your first page.
"""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from dashboard import session

SCREENS = Path(__file__).with_name("screens")

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
st.set_page_config(page_title="cityledger", page_icon="📒", layout="wide")


def page(file: str, title: str, icon: str, url: str, **kw: object) -> st.Page:
    return st.Page(SCREENS / file, title=title, icon=icon, url_path=url, **kw)  # type: ignore[arg-type]


CITIZEN = {
    "Your account": [
        page("citizen_usage.py", "Usage", ":material/water_drop:", "usage", default=True),
        page("citizen_bill.py", "Bill", ":material/receipt_long:", "bill"),
        page("citizen_parking.py", "Parking", ":material/local_parking:", "parking"),
        page("citizen_proof.py", "Proof", ":material/verified:", "proof"),
        page("citizen_disputes.py", "Disputes", ":material/forum:", "disputes"),
    ],
}
OPERATOR = {
    "City": [
        page("operator_overview.py", "City overview", ":material/monitoring:", "overview", default=True),
        page("operator_anomalies.py", "Anomalies", ":material/warning:", "anomalies"),
        page("operator_anomaly.py", "Anomaly", ":material/troubleshoot:", "anomaly", visibility="hidden"),
        page("operator_devices.py", "Devices", ":material/sensors:", "devices"),
        page("operator_quarantine.py", "Quarantine", ":material/block:", "quarantine"),
        page("operator_ledger.py", "Ledger", ":material/link:", "ledger"),
        page("operator_disputes.py", "Disputes", ":material/forum:", "inbox"),
        page("operator_parking.py", "Parking", ":material/local_parking:", "parking"),
    ],
}

who = session.current()
if who is None:
    nav = st.navigation([page("signin.py", "Sign in", ":material/login:", "signin", default=True)], position="hidden")
else:
    nav = st.navigation(CITIZEN if who.role == "citizen" else OPERATOR)
    with st.sidebar:
        if who.role == "citizen":
            st.caption(f"Signed in as **{who.name}** · account `{who.id}`")
        else:
            scope = "the whole city" if who.whole_city else ", ".join(who.districts)
            st.caption(f"Signed in as operator **{who.name}** (`{who.id}`) · {scope}")
        if st.button("Sign out", key="sign_out", icon=":material/logout:"):
            session.sign_out()
            st.rerun()
nav.run()
