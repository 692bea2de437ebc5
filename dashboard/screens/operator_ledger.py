"""The ledger: chain status, blocks, witnesses, and an audit run from here with its progress."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st

from dashboard import fmt, ui
from dashboard.audits import RUN
from ledger.clock import now_ms

data = ui.operator()
st.title("Ledger")
REFRESH_SECONDS = 5


@st.fragment(run_every=REFRESH_SECONDS)
def chain() -> None:
    with ui.guard("the chain"):
        s = data.status()
        c = st.columns(4)
        c[0].metric("Head block", f"{s['height']:,}" if s["height"] is not None else "-")
        c[1].metric("Readings ledgered", f"{s['readings']:,}")
        c[2].metric("Quarantined", f"{s['quarantined']:,}")
        c[3].metric("Duplicates collapsed", f"{s['duplicates']:,}")
        st.caption(f"Head hash `{s['last_block_hash']}` · signing key `{s['ledger_key']}`")


def audit_report(report: dict | None, where: str) -> None:
    if report is None:
        st.info("No audit has run yet. The scheduler runs one every few minutes.")
        return
    when = ui.when(report.get("finished_at"), seconds=True)
    if report.get("ok"):
        st.success(
            f"Chain intact ({where}, {when}): {report['blocks']:,} blocks and {report['readings']:,} readings "
            f"checked from the first ledger key in {report['seconds']:.1f} s.",
            icon=":material/verified:",
        )
    else:
        st.error(f"Audit FAILED ({where}, {when}): {report.get('failure')}", icon=":material/gpp_bad:")


@st.fragment(run_every=1)
def audit_progress() -> None:
    state = RUN.snapshot()
    if state.get("running"):
        done, total = state.get("done") or 0, state.get("total") or 0
        st.progress(
            done / total if total else 0.0,
            text=f"Auditing: block {done:,} of {total:,}" if total else "Auditing: starting…",
        )
    elif state.get("error"):
        st.error("The audit could not run to the end. It has been logged; please try again.")
    elif state.get("report"):
        audit_report(state["report"], f"run here by {state.get('by')}")
    else:
        audit_report(data.last_audit(), "latest")


chain()

st.subheader("Audit")
st.caption(
    "Recomputes every reading's leaf, every block's Merkle root, every link and header signature, from the "
    "city's first ledger key. It runs inside the ledger service on its own thread and does not stop ingest."
)
if st.button(
    "Run an audit now", key="run_audit", icon=":material/play_arrow:", disabled=bool(RUN.snapshot().get("running"))
):
    if not RUN.start(data.operator):
        st.info("An audit is already running.")
audit_progress()

with ui.guard("the district chains"):
    districts = data.district_chains()
    if districts:  # a city of district chains: this chain anchors theirs
        st.subheader("District chains")
        st.caption(
            "Each district seals its own chain; this city chain anchors their heads every few seconds. "
            "`cityledger verify --districts` checks every chain and every anchor from the city's first key."
        )
        now = now_ms()
        ui.table(
            [
                {
                    "District": d["district"],
                    "Anchored height": d["anchored_height"] if d["anchored_height"] is not None else "-",
                    "Anchored block": fmt.short(d["anchored_block"], 20),
                    "Anchored": fmt.ago(d["anchored_at"], now),
                    "First key": fmt.short(d["ledger_key"], 16),
                }
                for d in districts
            ]
        )

with ui.guard("the witnesses"):
    st.subheader("Witnesses")
    reports = data.witness_reports(limit=200)
    if not reports:
        ui.empty(
            "No witness has reported yet. Witnesses keep their own copy of every block header "
            "(`cityledger witnesses add NAME`)."
        )
    else:
        latest: dict[str, Mapping[str, Any]] = {}
        for r in reports:
            latest.setdefault(r["witness"], r)
        now = now_ms()
        ui.table(
            [
                {
                    "Witness": w,
                    "Last report": r["kind"],
                    "When": fmt.ago(r["received_at"], now),
                    "Alarm": "ALARM" if r["kind"] == "alarm" else "",
                }
                for w, r in sorted(latest.items())
            ]
        )
        for r in reports:
            if r["kind"] == "alarm":  # text from outside: shown as code, never rendered
                st.error(f"Alarm from `{r['witness']}` at {ui.when(r['received_at'])}", icon="🚨")
                st.code(r["body"], language="json")

with ui.guard("the blocks"):
    st.subheader("Blocks")
    before = st.session_state.get("blocks_before")
    blocks = data.blocks(before=before, limit=50)
    if not blocks:
        ui.empty("No blocks yet.")
    else:
        ui.table(
            [
                {
                    "Height": b["height"],
                    "Readings and entries": b["size"],
                    "Sealed": ui.when(b["sealed_at"], seconds=True),
                    "Hash": fmt.short(b["hash"], 20),
                    "Previous": fmt.short(b["prev"], 20),
                    "Entries": b["entries"] or "",
                    "Key rotation": "yes" if b["rotates_key"] else "",
                }
                for b in blocks
            ]
        )
        c = st.columns(3)
        if c[0].button("Newest", key="blocks_newest", disabled=before is None):
            st.session_state["blocks_before"] = None
            st.rerun()
        if c[1].button("Older", key="blocks_older", disabled=blocks[-1]["height"] == 0):
            st.session_state["blocks_before"] = blocks[-1]["height"]
            st.rerun()
