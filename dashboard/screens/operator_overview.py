"""City overview: readings per second now, devices online and offline, blocks, audit, quarantine rate,
repeated failed sign-ins."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, fmt, ui
from dashboard.data import tariffs
from ledger.clock import now_ms

data = ui.operator()
st.title("City overview")
REFRESH_SECONDS = 5
SIGN_IN_REFRESH_SECONDS = 30


def audit_line(audit: dict | None) -> tuple[str, str]:
    if audit is None:
        return "not run yet", "The scheduler audits the chain every few minutes; or run one on the Ledger page."
    age = fmt.ago(audit.get("finished_at"), now_ms())
    if audit.get("ok"):
        return f"intact ({age})", f"{audit.get('blocks', 0):,} blocks, {audit.get('readings', 0):,} readings checked"
    return f"FAILED ({age})", str(audit.get("failure", ""))


def operations(status: dict, now: int) -> None:
    """Ingest's lag and last seal, and every background job whose last run failed."""
    ingest = status.get("ingest") or {}
    if not ingest.get("running"):
        st.warning("Ingest is not running: no reading is being ledgered.", icon="⚠️")
    else:
        lag_s = (ingest.get("lag_ms") or 0) / 1000
        line = (
            f"Ingest lag {lag_s:,.1f} s · last seal {fmt.ago(ingest.get('last_seal_at'), now)} · "
            f"{ingest.get('pending') or 0:,} waiting · {ingest.get('workers') or 0} workers"
        )
        if ingest.get("silence_margin_ms", 0) > 60_000:
            st.warning(f"Ingest is behind: {line}. Devices are not reported silent meanwhile.", icon="⏳")
        else:
            st.caption(line)
    for name, job in sorted((status.get("jobs") or {}).items()):
        if job.get("failing"):
            st.error(
                f"Background job **{name}** failed {job['failures']} time(s) in a row, last "
                f"{fmt.ago(job.get('last_finished_at'), now)}: {job.get('last_error') or ''}",
                icon="🛑",
            )


@st.fragment(run_every=REFRESH_SECONDS)
def live() -> None:
    with ui.guard("the overview"):
        picked = st.session_state.get("overview_districts") or None
        o = data.overview(picked)
        alarms = data.witness_reports(kind="alarm", limit=3)
        for alarm in alarms:  # text from outside: shown as code, never rendered
            st.error(f"Witness alarm from `{alarm['witness']}` at {ui.when(alarm['received_at'])}", icon="🚨")
            st.code(alarm["body"], language="json")
        rows = o["districts"]
        total = {
            k: sum(r[k] for r in rows)
            for k in ("devices", "online", "offline", "readings_last_minute", "readings_last_hour", "rejects_last_hour")
        }
        seen = total["readings_last_hour"] + total["rejects_last_hour"]
        audit, audit_help = audit_line(data.last_audit())
        c = st.columns(5)
        c[0].metric(
            "Readings per second now",
            f"{total['readings_last_minute'] / 60:,.1f}",
            help="Readings ledgered in the last 60 seconds (by arrival time), per second.",
        )
        c[1].metric(
            "Devices online",
            f"{total['online']:,} / {total['devices']:,}",
            help=f"{total['offline']:,} offline; the rest have not reported a connection status.",
        )
        c[2].metric(
            "Blocks sealed", f"{o['blocks']:,}", delta=f"{o['blocks_last_hour']:,} in the last hour", delta_color="off"
        )
        c[3].metric("Last audit", audit, help=audit_help)
        c[4].metric(
            "Quarantine rate (1 h)",
            f"{total['rejects_last_hour'] / seen:.2%}" if seen else "-",
            help="Rejected messages / all messages from devices in the last hour.",
        )
        operations(data.status(), o["now"])
        st.caption(
            f"Head block {o['height']} · `{fmt.short(o['head_hash'], 24)}` · last sealed "
            f"{fmt.ago(o['last_sealed_at'], o['now'])} · {o['readings']:,} readings ledgered · "
            f"refreshes every {REFRESH_SECONDS} s"
        )
        if not rows:
            ui.empty("No devices in your districts yet.")
            return
        arrivals = data.arrivals(picked)
        if arrivals:
            st.altair_chart(charts.arrivals_chart(arrivals, tariffs()["timezone"], o["now"]), width="stretch")
        else:
            st.caption("No readings arrived in the last hour.")
        st.subheader("Per district")
        ui.table(
            [
                {
                    "District": r["district"],
                    "Readings/s now": r["readings_per_second"],
                    "Readings (1 h)": r["readings_last_hour"],
                    "Devices": r["devices"],
                    "Online": r["online"],
                    "Offline": r["offline"],
                    "No status": r["no_status"],
                    "Reporting (1 h)": r["reporting_last_hour"],
                    "Revoked": r["revoked"],
                    "Rejected (1 h)": r["rejects_last_hour"],
                    "Quarantine rate": None if r["quarantine_rate"] is None else round(100 * r["quarantine_rate"], 2),
                }
                for r in rows
            ],
            column_config={"Quarantine rate": st.column_config.NumberColumn(format="%.2f %%")},
        )


@st.fragment(run_every=SIGN_IN_REFRESH_SECONDS)
def failed_sign_ins() -> None:
    """Repeated failed sign-ins of the last hour, as far as this operator looks after the logins
    (dashboard.data.OperatorData.failed_sign_ins). Ids and addresses are shown as table cells, never markup."""
    with ui.guard("the failed sign-ins"):
        found = data.failed_sign_ins()
        st.subheader("Failed sign-ins (last hour)")
        if not found["logins"] and not found["sources"]:
            st.caption("No login or address failed to sign in several times in the last hour.")
            return
        st.warning(
            f"{len(found['logins'])} login(s) and {len(found['sources'])} address(es) failed to sign in "
            "several times in the last hour. Throttled attempts were refused without checking a password.",
            icon="🔐",
        )
        if found["logins"]:
            ui.table(
                [
                    {
                        "Role": r["role"],
                        "Id": r["id"],
                        "Failed": r["failures"],
                        "Of them throttled": r["throttled"],
                        "Addresses": r["sources"],
                        "Last": ui.when(r["last_at"], seconds=True),
                    }
                    for r in found["logins"]
                ]
            )
        if found["sources"]:
            ui.table(
                [
                    {
                        "Address": r["source"],
                        "Failed": r["failures"],
                        "Of them throttled": r["throttled"],
                        "Logins tried": r["logins"],
                        "Last": ui.when(r["last_at"], seconds=True),
                    }
                    for r in found["sources"]
                ]
            )
        st.caption(
            "Every failed sign-in is also logged (logger `cityledger.signin`), without the password. "
            "Attempts refused while an address was throttled as a whole count for the address only."
        )


with ui.guard("the overview"):
    st.multiselect(
        "Districts",
        data.districts(),
        key="overview_districts",
        placeholder="All your districts" if data.limited else "The whole city",
    )
live()
failed_sign_ins()
