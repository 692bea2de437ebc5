"""Usage per meter: days, weeks or months, against a year earlier and the district's typical household."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, fmt, ui
from dashboard.data import tariffs
from dashboard.fmt import kind_label, quantity, unit_label
from dashboard.usage import GRANULARITIES

data = ui.citizen()
st.title("Usage")

with ui.guard("your usage"):
    tz = fmt.zone(tariffs()["timezone"])
    for alert in data.alerts():
        title = "Possible leak" if alert["type"] == "leak" else "Unusually high use"
        since = fmt.when(alert["window_start"], tz) if alert["window_start"] else "recently"
        st.warning(
            f"**{title}** on {kind_label(data.meter(alert['device'])['kind']).lower()} meter {alert['device']} "
            f"since {since}: {alert['detail']}. The city's operators see it too; if it is a leak, please check "
            "taps, toilets and pipes, or call a plumber.",
            icon="⚠️",
        )
        evidence = ", ".join(f"#{seq}" for _, seq in alert["evidence"])
        st.caption(
            f"It rests on these readings of {alert['device']}: {evidence}. Each can be checked on the Proof page."
        )
    meters = data.meters()
    if not meters:
        ui.empty(
            "No meters are registered to your account yet. Once a meter is installed and enrolled, "
            "its readings appear here."
        )
        st.stop()
    ids = [m["device"] for m in meters]
    wanted = ui.query_param("meter")
    if wanted in ids and st.session_state.get("meter") is None:
        st.session_state["meter"] = wanted
    left, right = st.columns([2, 3])
    device = left.selectbox(
        "Meter", ids, key="meter", format_func=lambda d: f"{kind_label(data.meter(d)['kind'])} · {d}" if d in ids else d
    )
    granularity = right.segmented_control("Period", GRANULARITIES, default="Daily", key="granularity") or "Daily"
    u = data.usage(device, granularity)  # the data layer refuses a meter that is not this account's
    unit, meter, rows = unit_label(u["unit"]), u["meter"], u["rows"]
    current = rows[-1]
    what = {"Daily": "Today so far", "Weekly": "This week so far", "Monthly": "This month so far"}[granularity]
    c = st.columns(4)
    c[0].metric(what, quantity(current["this"], unit))
    delta = None
    if current["this"] is not None and current["last_year"] is not None:
        delta = f"{current['this'] - current['last_year']:+,.3f} {unit} vs a year earlier"
    c[1].metric("Same period last year", quantity(current["last_year"], unit), delta=delta, delta_color="inverse")
    c[2].metric(f"Typical household in {meter['district']}", quantity(current["typical"], unit))
    c[3].metric("Used this year", quantity(current["year_to_date"], unit), help=current["tier"])

    if all(r["this"] is None for r in rows):
        ui.empty(f"No readings from {device} in these {granularity.lower()} periods yet.")
    else:
        st.altair_chart(
            charts.usage_chart(rows, meter["kind"], u["unit"], u["tiers"], granularity, meter["district"]),
            width="stretch",
        )
        st.caption(
            f"{kind_label(meter['kind'])} in {unit}, from the meter's register at each period's boundaries "
            "(interpolated between the nearest readings, as on your bill). The typical household is the "
            f"median of residential meters in {meter['district']}; it is shown only when at least five "
            "households contribute. Bar colours: the tariff tier your year's use had reached."
        )
    if u["tiers"] and any(p["cumulative"] is not None for p in u["year_to_date"]):
        st.subheader("This year against the tariff tiers")
        st.altair_chart(
            charts.year_chart(u["year_to_date"], meter["kind"], u["unit"], u["tiers"], u["timezone"]), width="stretch"
        )
        prices = ", ".join(
            f"tier {t.number}: ¥{t.price}/{unit}" + (f" up to {t.up_to:g} {unit}" if t.up_to else "")
            for t in u["tiers"]
        )
        st.caption(f"Prices are per {unit} on the year's cumulative use ({prices}).")
    with st.expander("The numbers behind the chart"):
        ui.table(
            [
                {
                    "Period": r["period"],
                    f"Used ({unit})": r["this"],
                    f"Year before ({unit})": r["last_year"],
                    f"Typical household ({unit})": r["typical"],
                    "Tier reached": r["tier"],
                    "Still running": "yes" if r["partial"] else "",
                    "Note": "counted from the meter's first reading in the period" if r["from_first_reading"] else "",
                }
                for r in rows
            ]
        )
