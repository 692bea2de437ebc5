"""Who is signed in to this browser session: the principal `authenticate` returned, nothing else.

The principal lives in Streamlit's session state, which stays on the server; the
browser holds no token that could be edited to become someone else.
"""

from __future__ import annotations

import logging

import streamlit as st

from dashboard import data
from dashboard.data import Principal

KEY = "_cityledger_principal"
log = logging.getLogger("cityledger.dashboard")


def current() -> Principal | None:
    raw = st.session_state.get(KEY)
    if not isinstance(raw, dict):
        return None
    try:
        return Principal.from_dict(raw)
    except (KeyError, TypeError):
        return None


def sign_in(role: str, principal: str, password: str) -> Principal | None:
    found = data.authenticate(role, principal, password)
    if found is not None:
        st.session_state.clear()  # nothing from before the sign-in carries over
        st.session_state[KEY] = {"role": found.role, "id": found.id, "name": found.name,
                                 "districts": list(found.districts)}
        log.info("%s %s signed in", found.role, found.id)
    return found


def sign_out() -> None:
    who = current()
    st.session_state.clear()
    if who is not None:
        log.info("%s %s signed out", who.role, who.id)
