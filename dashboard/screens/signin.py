"""Sign in: a citizen with their account id, an operator with their operator id."""

from __future__ import annotations

import streamlit as st

from dashboard import session, ui
from dashboard.data import Principal
from ledger.people.signin import Throttled, throttle_message

st.title("cityledger")
st.caption("Signed meter and parking readings in a tamper-evident city ledger.")

left, _ = st.columns([2, 3])
with left:
    with st.form("sign_in", border=True):
        st.subheader("Sign in")
        role = st.radio(
            "I am",
            ["citizen", "operator"],
            key="role",
            horizontal=True,
            format_func=lambda r: {"citizen": "a resident (account holder)", "operator": "a city operator"}[r],
        )
        principal = st.text_input("Account id or operator id", key="principal", max_chars=64)
        password = st.text_input("Password", type="password", key="password", max_chars=256)
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        found = None
        with ui.guard("the sign-in"):
            found = session.sign_in(role, principal, password)
            if isinstance(found, Throttled):
                st.error(throttle_message(found.scope, found.retry_after_s))
            elif not isinstance(found, Principal):
                st.error(
                    "That id and password do not match. After a few failed attempts, each further "
                    "attempt has to wait a little longer."
                )
        if isinstance(found, Principal):
            st.rerun()
    st.caption(
        "Your account id is on your bill. Operators get their id and districts from the city's "
        "administrator. Everything works offline: no outside sign-in service is used."
    )
