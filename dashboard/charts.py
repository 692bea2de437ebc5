"""Charts with units and labelled axes (Altair). Each takes plain rows and returns a chart."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import pandas as pd

from dashboard.fmt import kind_label, unit_label
from dashboard.usage import Tier, tier_label


def _local(ms: Any, tz: str) -> Any:
    """Epoch ms as the city's wall-clock time (naive, so the browser shows it as it is)."""
    return pd.DatetimeIndex(pd.to_datetime(list(ms), unit="ms", utc=True)).tz_convert(tz).tz_localize(None)


TIER_COLOURS = ["#4c9f70", "#e0a526", "#d1495b", "#7b6fb0"]
SERIES_COLOURS = {"Same period last year": "#555555", "Typical household in the district": "#1f77b4"}


def usage_chart(
    rows: Sequence[dict[str, Any]], kind: str, unit: str, tiers: Sequence[Tier], granularity: str, district: str
) -> alt.LayerChart:
    """Bars: use per period, coloured by the tariff tier the year's use had reached by its end.
    Lines: the same period a year earlier, and the district's typical household (median)."""
    u = unit_label(unit)
    df = pd.DataFrame(rows)
    x = alt.X(
        "period:N",
        sort=list(df["period"]),
        title={"Daily": "Day", "Weekly": "Week", "Monthly": "Month"}[granularity],
        axis=alt.Axis(labelAngle=-45),
    )
    y_title = f"{kind_label(kind)} used ({u})"
    domain = [tier_label(t, tiers, u) for t in tiers] + [tier_label(None, tiers, u)]
    colours = TIER_COLOURS[: len(tiers)] + ["#bbbbbb"]
    bars = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=x,
            y=alt.Y("this:Q", title=y_title),
            color=alt.Color(
                "tier:N",
                title="Tariff tier reached (year's use)",
                scale=alt.Scale(domain=domain, range=colours),
                legend=alt.Legend(orient="bottom", columns=1, labelLimit=420),
            ),
            tooltip=[
                alt.Tooltip("period:N", title="Period"),
                alt.Tooltip("this:Q", title=f"Used ({u})", format=",.3f"),
                alt.Tooltip("last_year:Q", title=f"Year before ({u})", format=",.3f"),
                alt.Tooltip("typical:Q", title=f"Typical household ({u})", format=",.3f"),
                alt.Tooltip("year_to_date:Q", title=f"Year so far ({u})", format=",.3f"),
                alt.Tooltip("tier:N", title="Tier"),
            ],
        )
    )
    lines = df.melt(id_vars=["period"], value_vars=["last_year", "typical"], var_name="series", value_name="value")
    lines["series"] = lines["series"].map(
        {"last_year": "Same period last year", "typical": f"Typical household in {district}"}
    )
    names = ["Same period last year", f"Typical household in {district}"]
    comparison = (
        alt.Chart(lines.dropna(subset=["value"]))
        .mark_line(point=True, strokeDash=[5, 3])
        .encode(
            x=x,
            y=alt.Y("value:Q", title=y_title),
            color=alt.Color(
                "series:N",
                title="Compared with",
                scale=alt.Scale(domain=names, range=["#555555", "#1f77b4"]),
                legend=alt.Legend(orient="bottom", labelLimit=300),
            ),
            tooltip=[
                alt.Tooltip("series:N", title="Series"),
                alt.Tooltip("period:N", title="Period"),
                alt.Tooltip("value:Q", title=f"Used ({u})", format=",.3f"),
            ],
        )
    )
    return alt.layer(bars, comparison).resolve_scale(color="independent").properties(height=360)


def year_chart(
    points: Sequence[dict[str, Any]], kind: str, unit: str, tiers: Sequence[Tier], tz: str
) -> alt.LayerChart | alt.FacetChart:
    """The year's cumulative use at each month's end, with the tier thresholds as rules."""
    u = unit_label(unit)
    df = pd.DataFrame(points)
    df["date"] = _local(df["at"], tz)
    line = (
        alt.Chart(df.dropna(subset=["cumulative"]))
        .mark_line(point=True)
        .encode(
            x=alt.X("date:T", title="Date (end of month, or now)", axis=alt.Axis(format="%d %b")),
            y=alt.Y("cumulative:Q", title=f"{kind_label(kind)} used this year ({u})"),
            tooltip=[
                alt.Tooltip("date:T", title="At"),
                alt.Tooltip("cumulative:Q", title=f"Year so far ({u})", format=",.3f"),
            ],
        )
    )
    bounds = [
        {"threshold": t.up_to, "label": f"Tier {t.number + 1} above {t.up_to:g} {u}"}
        for t in tiers
        if t.up_to is not None
    ]
    if not bounds:
        return alt.layer(line).properties(height=260)
    rules = alt.Chart(pd.DataFrame(bounds))
    return alt.layer(
        line,
        rules.mark_rule(strokeDash=[4, 4], color="#d1495b").encode(y="threshold:Q"),
        rules.mark_text(align="left", dx=4, dy=-6, color="#d1495b").encode(y="threshold:Q", text="label:N"),
    ).properties(height=260)


def readings_chart(
    points: Sequence[dict[str, Any]],
    unit: str,
    window: tuple[int | None, int | None],
    tz: str,
    evidence: Sequence[int] = (),
) -> alt.LayerChart | alt.FacetChart:
    """A device's register over time around an anomaly, its window shaded, evidence readings marked."""
    df = pd.DataFrame(points)
    df["time"] = _local(df["ts"], tz)
    df["evidence"] = df["seq"].isin(list(evidence))
    title = f"Register ({unit})"
    base = alt.Chart(df).encode(x=alt.X("time:T", title=f"Time ({tz})"))
    layers: list[Any] = []
    if window[0] is not None and window[1] is not None:
        band = pd.DataFrame({"from": _local([window[0]], tz), "to": _local([window[1]], tz)})
        layers.append(alt.Chart(band).mark_rect(opacity=0.15, color="#d1495b").encode(x="from:T", x2="to:T"))
    layers.append(
        base.mark_line().encode(
            y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False)),
            tooltip=[
                alt.Tooltip("time:T", title="Measured"),
                alt.Tooltip("value:Q", title=title, format=","),
                alt.Tooltip("seq:Q", title="Seq"),
            ],
        )
    )
    marked = df[df["evidence"]]
    if len(marked):
        layers.append(
            alt.Chart(marked)
            .mark_point(size=90, color="#d1495b", filled=True)
            .encode(x="time:T", y="value:Q", tooltip=[alt.Tooltip("seq:Q", title="Evidence seq")])
        )
    return alt.layer(*layers).properties(height=320)


def occupancy_chart(rows: Sequence[dict[str, Any]], tz: str, day_start: int) -> alt.Chart:
    df = pd.DataFrame(rows)
    day = _local([day_start, day_start + 86_400_000], tz)
    df["hour"] = _local(df["start"], tz)
    df["zone"] = "Zone class " + df["zone_class"].astype(str)
    df["percent"] = df["occupied"] * 100
    return (
        alt.Chart(df)
        .mark_line(point=True)
        .encode(
            x=alt.X(
                "hour:T",
                title=f"Hour of the day ({tz})",
                axis=alt.Axis(format="%H:%M"),
                scale=alt.Scale(domain=[day[0].isoformat(), day[1].isoformat()]),
            ),
            y=alt.Y("percent:Q", title="Spaces occupied (% of time)", scale=alt.Scale(domain=[0, 100])),
            color=alt.Color("zone:N", title="Zone"),
            tooltip=[
                alt.Tooltip("zone:N", title="Zone"),
                alt.Tooltip("hour:T", title="Hour", format="%H:%M"),
                alt.Tooltip("percent:Q", title="Occupied (%)", format=".1f"),
                alt.Tooltip("reporting:Q", title="Spaces reporting"),
            ],
        )
        .properties(height=320)
    )


def revenue_chart(rows: Sequence[dict[str, Any]]) -> alt.Chart:
    df = pd.DataFrame(rows)
    df["yuan"] = df["amount"].astype(float)
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("month:N", title="Month billed", sort="ascending"),
            y=alt.Y("yuan:Q", title="Parking revenue (CNY)"),
            color=alt.Color("district:N", title="District"),
            tooltip=[
                alt.Tooltip("month:N", title="Month"),
                alt.Tooltip("district:N", title="District"),
                alt.Tooltip("yuan:Q", title="Revenue (CNY)", format=",.2f"),
                alt.Tooltip("stays:Q", title="Stays"),
            ],
        )
        .properties(height=300)
    )


def arrivals_chart(rows: Sequence[dict[str, Any]], tz: str, now: int, minutes: int = 60) -> alt.Chart:
    """Readings ledgered per second, minute by minute, per district (by arrival time);
    minutes without any reading count as zero."""
    last = now // 60_000 * 60_000
    seen = {(r["district"], r["minute_ms"]): r["readings"] for r in rows}
    districts = sorted({r["district"] for r in rows})
    df = pd.DataFrame(
        [
            {"district": d, "minute_ms": m, "readings": seen.get((d, m), 0)}
            for d in districts
            for m in range(last - (minutes - 1) * 60_000, last + 1, 60_000)
        ]
    )
    df["minute"] = _local(df["minute_ms"], tz)
    df["per_second"] = df["readings"] / 60
    return (
        alt.Chart(df)
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("minute:T", title=f"Arrival time ({tz})", axis=alt.Axis(format="%H:%M", tickCount=12)),
            y=alt.Y("per_second:Q", title="Readings per second"),
            color=alt.Color("district:N", title="District"),
            tooltip=[
                alt.Tooltip("district:N", title="District"),
                alt.Tooltip("minute:T", title="Minute", format="%H:%M"),
                alt.Tooltip("per_second:Q", title="Readings/s", format=",.1f"),
            ],
        )
        .properties(height=220)
    )
