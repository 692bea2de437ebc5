"""Who is signed in to this browser session: the principal `authenticate` returned, nothing else.

The principal lives in Streamlit's session state, which stays on the server; the
browser holds no token that could be edited to become someone else.
"""

from __future__ import annotations

import logging
import os

import streamlit as st

from dashboard import data
from dashboard.data import Principal
from ledger.people.signin import LOCAL, Throttled, Wrong

KEY = "_cityledger_principal"
PROXY_ENV = "CITYLEDGER_DASHBOARD_PROXY"  # "1": a reverse proxy on this machine sets X-Forwarded-For
log = logging.getLogger("cityledger.dashboard")


def current() -> Principal | None:
    raw = st.session_state.get(KEY)
    if not isinstance(raw, dict):
        return None
    try:
        return Principal.from_dict(raw)
    except (KeyError, TypeError):
        return None


def sign_in(role: str, principal: str, password: str) -> Principal | Wrong | Throttled:
    """Ask the ledger, from this browser's address; only a principal is kept in the session."""
    found = data.authenticate(role, principal, password, client_source())
    if isinstance(found, Principal):
        st.session_state.clear()  # nothing from before the sign-in carries over
        st.session_state[KEY] = {
            "role": found.role,
            "id": found.id,
            "name": found.name,
            "districts": list(found.districts),
        }
        log.info("%s %s signed in", found.role, found.id)
    return found


def client_source() -> str:
    """The browser's address, which sign-in throttling counts failures against (ledger/people/signin.py)."""
    try:
        ip = st.context.ip_address
        forwarded = st.context.headers.get("X-Forwarded-For") if ip is None else None
    except Exception:  # no browser connection behind this run (a bare script): a caller on this machine
        return LOCAL
    # Only text counts: a run without a browser (Streamlit's AppTest) answers with stand-in objects.
    return source_from(
        ip if isinstance(ip, str) else None,
        forwarded if isinstance(forwarded, str) else None,
        os.environ.get(PROXY_ENV, "") == "1",
    )


def source_from(ip: str | None, forwarded: str | None, behind_proxy: bool) -> str:
    """Streamlit gives the TCP peer's address, or None when it is this machine. Only when the
    operator says a reverse proxy on this machine fronts the dashboard (PROXY_ENV=1) is the last
    X-Forwarded-For entry used: the one that proxy appended. Earlier entries, and the header from
    anyone else, are the client's own words, and a stranger would pick a fresh one per attempt."""
    if ip:
        return ip
    if behind_proxy and forwarded:
        last = forwarded.split(",")[-1].strip()
        if last:
            return last[:64]
    return LOCAL


def sign_out() -> None:
    who = current()
    st.session_state.clear()
    if who is not None:
        log.info("%s %s signed out", who.role, who.id)
