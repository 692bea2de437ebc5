"""The cityledger dashboard (first page): ledger status, recent blocks and readings, devices.

Reads through the ledger API only: while ingest runs, over its local socket;
otherwise the file is opened for one call and released, so the dashboard never
holds the database away from ingest.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
import streamlit as st

from ledger.home import Home
from ledger.rpc import open_ledger

REFRESH_SECONDS = 3

st.set_page_config(page_title="cityledger", page_icon="📒", layout="wide")


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fetch() -> dict[str, Any]:
    ledger = open_ledger(Home.from_env())
    return {
        "status": ledger.status(),
        "blocks": ledger.recent_blocks(limit=15),
        "readings": ledger.recent_readings(limit=25),
        "devices": ledger.devices(),
        "alarms": ledger.witness_reports(kind="alarm", limit=5),
        "flagged": ledger.flagged_devices(minutes=60, threshold=60),
    }


@st.fragment(run_every=REFRESH_SECONDS)
def live() -> None:
    try:
        data = _fetch()
    except Exception as exc:  # shown as a message, never as a trace
        st.warning(f"The ledger is not reachable right now ({type(exc).__name__}). Is `cityledger ingest` running?")
        return
    s = data["status"]
    for alarm in data["alarms"]:  # text from outside: shown as code, never rendered
        st.error(f"Witness alarm from `{alarm['witness']}` at {_time(alarm['received_at'])}", icon="🚨")
        st.code(alarm["body"], language="json")
    devices = pd.DataFrame(data["devices"])
    online = int((devices["online"] == "online").sum()) if len(devices) else 0
    cols = st.columns(5)
    cols[0].metric("Blocks", f"{s['blocks']:,}")
    cols[1].metric("Readings ledgered", f"{s['readings']:,}")
    cols[2].metric("Devices online", f"{online:,} / {len(devices):,}")
    cols[3].metric("Quarantined", f"{s['quarantined']:,}")
    cols[4].metric("Duplicates collapsed", f"{s['duplicates']:,}")
    st.caption(f"Head block {s['height']} · `{s['last_block_hash']}` · ledger key `{s['ledger_key']}`")

    left, right = st.columns(2)
    with left:
        st.subheader("Recent blocks")
        blocks = pd.DataFrame(data["blocks"])
        if blocks.empty:
            st.info("No blocks yet.")
        else:
            blocks["sealed"] = blocks["sealed_at"].map(_time)
            blocks["hash"] = blocks["hash"].str[:16] + "…"
            st.dataframe(blocks[["height", "size", "sealed", "hash"]], hide_index=True, width="stretch")
    with right:
        st.subheader("Recent readings")
        readings = pd.DataFrame(data["readings"])
        if readings.empty:
            st.info("No readings yet: start a fleet with `cityledger fleet`.")
        else:
            readings["measured"] = readings["ts"].map(_time)
            st.dataframe(readings[["device", "kind", "district", "seq", "value", "measured", "height"]],
                         hide_index=True, width="stretch")

    if data["flagged"]:
        st.subheader("Flagged devices (many rejected messages in the last hour)")
        st.dataframe(pd.DataFrame(data["flagged"])[["device", "peak_rejects_per_minute", "rejects", "reasons"]],
                     hide_index=True, width="stretch")

    st.subheader("Devices")
    if devices.empty:
        st.info("No devices enrolled.")
    else:
        summary = devices.groupby(["district", "kind"]).agg(
            enrolled=("device", "count"), online=("online", lambda x: int((x == "online").sum()))).reset_index()
        st.dataframe(summary, hide_index=True, width="stretch")


st.title("cityledger")
st.caption("Signed meter and parking readings in a tamper-evident city ledger.")
live()
