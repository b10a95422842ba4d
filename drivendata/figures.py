"""The figures: pure functions turning panel results into plain plotly data.

Each function returns ``{"data": [trace, ...], "layout": {...}}`` made of plain dicts and
lists. A figure always has the same number and types of traces, whatever the field, so that
the dashboard can update a live figure in place; every trace dict names every property that
any variant of that trace uses. Applying them to a widget is the dashboard's job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from drivendata.panels import FIELDS, FIGURE_PANELS, WINDOW_LABELS, Field, Query

Figure = dict[str, Any]

NAMES: tuple[str, ...] = FIGURE_PANELS
EMPTY = "No sessions yet"
HEIGHT = 380

FONT = (
    'Inter, "Segoe UI", Roboto, "Helvetica Neue", "Noto Sans", "Liberation Sans", Arial, sans-serif'
)
BLUE = "#1f5fbf"
TITLE_BLUE = "#1a4d99"
LIGHT_BLUE = "#a9c4ec"
ACCENT = "#f08c2e"
INK = "#2b3442"
MUTED = "#6b778a"
GRID = "#e9edf3"
AGE_COLORS = (
    "#0b3d91",
    "#1f5fbf",
    "#3f7fd9",
    "#6b9fe6",
    "#98bff0",
    "#2a9d8f",
    "#7cc5b8",
    "#c8ced8",
)


def template() -> dict[str, Any]:
    """Return the plotly template that gives every panel the same finished look."""
    axis = {
        "gridcolor": GRID,
        "linecolor": "#cfd6e0",
        "zerolinecolor": GRID,
        "ticks": "",
        "title": {"font": {"size": 13, "color": MUTED}, "standoff": 10},
        "tickfont": {"size": 12, "color": MUTED},
        "automargin": True,
    }
    return {
        "layout": {
            "font": {"family": FONT, "size": 13, "color": INK},
            "title": {
                "x": 0.5,
                "xanchor": "center",
                "y": 0.96,
                "yanchor": "top",
                "font": {"size": 17, "color": TITLE_BLUE},
            },
            "paper_bgcolor": "#ffffff",
            "plot_bgcolor": "#ffffff",
            "colorway": [BLUE, ACCENT, "#2a9d8f", "#8e6bbf", "#e76f51"],
            "margin": {"l": 64, "r": 28, "t": 64, "b": 56},
            "xaxis": axis,
            "yaxis": axis,
            "hoverlabel": {"font": {"family": FONT, "size": 13}, "bgcolor": "#ffffff"},
            "legend": {"orientation": "h", "y": -0.18, "x": 0.5, "xanchor": "center"},
            "separators": ".,",
        }
    }


def figures(results: Mapping[str, Any], q: Query) -> dict[str, Figure]:
    """Return all six figures for the results of :func:`drivendata.panels.compute`.

    :param results: panel results keyed by panel name.
    :param q: the query the results were computed for (fields and window).
    """
    return {name: BUILDERS[name](results[name], q) for name in NAMES}


def placeholder(name: str, q: Query, message: str = "Loading…") -> Figure:
    """Return a figure with no data and a message in the middle, for before the first query."""
    fig = BUILDERS[name](None, q)
    fig["layout"]["annotations"] = [_message(message)]
    return fig


# ---------------------------------------------------------------- the six figures


def top_traffic(frame: pd.DataFrame | None, q: Query) -> Figure:
    """Scatter of the ten rows with the highest "versus" value against the field."""
    fx, fy = FIELDS[q.field], FIELDS[q.versus]
    title = f"{fy.label} vs {fx.label} (top 10)"
    empty = frame is None or frame.empty
    names = [str(n) for n in _col(frame, "person_name")]
    xs = _col(frame, q.field)
    ys = _col(frame, q.versus)
    trace = {
        "type": "scatter",
        "name": "Sessions",
        "x": xs,
        "y": ys,
        # Names of the three highest only: ten labels would overlap.
        "text": [n if i < 3 else "" for i, n in enumerate(names)],
        "customdata": names,
        "mode": "markers+text",
        "textposition": "top center",
        "textfont": {"size": 11, "color": MUTED},
        "marker": {
            "size": 13,
            "color": [ACCENT if i == 0 else BLUE for i in range(len(xs))],
            "opacity": 0.9,
            "line": {"width": 1.5, "color": "#ffffff"},
        },
        "hovertemplate": (
            f"<b>%{{customdata}}</b><br>{fx.label}: {_hover('x', fx)}<br>"
            f"{fy.label}: {_hover('y', fy)}<extra></extra>"
        ),
        "cliponaxis": False,
        "showlegend": False,
    }
    layout = _layout(title, empty, f"{q.field}|{q.versus}|{q.window}")
    # The ten highest sit far from zero: let the axes close in on them.
    layout["xaxis"] = _axis(fx) | {"rangemode": "normal"}
    layout["yaxis"] = _axis(fy) | {"rangemode": "normal"}
    return {"data": [trace], "layout": layout}


def top_people(frame: pd.DataFrame | None, q: Query) -> Figure:
    """Horizontal bars of the ten people with the highest value, the top person highlighted."""
    f = FIELDS[q.field]
    title = f"Top 10 people by {f.label}"
    empty = frame is None or frame.empty
    names = [str(n) for n in _col(frame, "person_name")]
    values = _col(frame, "value")
    colors = [ACCENT if i == 0 else LIGHT_BLUE for i in range(len(values))]
    # Plotly draws the first category at the bottom: reverse so the best is on top.
    names, values, colors = names[::-1], values[::-1], colors[::-1]
    base: Any = None
    lengths: list[Any] = values
    if f.is_time and values:
        # A time has no zero: bars start a little before the earliest of the ten.
        lo, hi = min(values), max(values)
        start = lo - max((hi - lo) * 0.15, timedelta(minutes=1))
        base = start
        lengths = [(v - start) / timedelta(milliseconds=1) for v in values]
    trace = {
        "type": "bar",
        "name": f.label,
        "orientation": "h",
        "x": lengths,
        "y": names,
        "base": base,
        "customdata": values,
        "marker": {"color": colors, "line": {"width": 0}},
        "text": [_format(v, f) for v in values],
        "textposition": "auto",
        "insidetextanchor": "end",
        "textfont": {"size": 12},
        "hovertemplate": f"<b>%{{y}}</b><br>{f.label}: {_hover('customdata', f)}<extra></extra>",
        "showlegend": False,
    }
    layout = _layout(title, empty, f"{q.field}|{q.window}")
    layout["xaxis"] = _axis(f)
    layout["yaxis"] = {
        "title": {"text": None},
        "type": "category",
        "visible": not empty,
        "showgrid": False,
    }
    layout["bargap"] = 0.28
    layout["margin"] = {"l": 20}
    return {"data": [trace], "layout": layout}


def timeline(frame: pd.DataFrame | None, q: Query) -> Figure:
    """The mean per time bucket inside a shaded min-max band; sessions per bucket for a time."""
    f = FIELDS[q.field]
    title = f"{f.label} over time"
    empty = frame is None or frame.empty
    # Bucket starts as milliseconds since 1970 (a date axis reads them as times): eight bytes
    # shorter than ISO text, and each is sent three times, once per trace.
    at = [round(_epoch_ms(v)) for v in _col(frame, "bucket")]
    band = not f.is_time
    lo = _compact(_col(frame, "min")) if band else []
    hi = _compact(_col(frame, "max")) if band else []
    if f.is_time:
        mid = _col(frame, "sessions")
        mid_name, mid_hover = "Sessions", "%{y:,} sessions"
    else:
        mid = _compact(_col(frame, "mean"))
        mid_name, mid_hover = "Mean", _hover("y", f, decimals=1)
    common = {"type": "scatter", "mode": "lines", "hoverinfo": None, "showlegend": band}
    upper = common | {
        "name": "Max",
        "x": at if band else [],
        "y": hi,
        "line": {"width": 0, "color": LIGHT_BLUE, "shape": "linear"},
        "fill": None,
        "fillcolor": None,
        "hovertemplate": f"Max: {_hover('y', f)}<extra></extra>",
        "showlegend": False,
    }
    lower = common | {
        "name": "Min-max range",
        "x": at if band else [],
        "y": lo,
        "line": {"width": 0, "color": LIGHT_BLUE, "shape": "linear"},
        "fill": "tonexty",
        "fillcolor": "rgba(31, 95, 191, 0.16)",
        "hovertemplate": f"Min: {_hover('y', f)}<extra></extra>",
    }
    middle = common | {
        "name": mid_name,
        "x": at,
        "y": mid,
        "line": {"width": 2.2, "color": BLUE, "shape": "hv" if f.is_time else "linear"},
        "fill": "tozeroy" if f.is_time else None,
        "fillcolor": "rgba(31, 95, 191, 0.16)" if f.is_time else None,
        "hovertemplate": f"%{{x|%Y-%m-%d %H:%M}}<br>{mid_name}: {mid_hover}<extra></extra>",
    }
    layout = _layout(title, empty, f"{q.field}|{q.window}")
    layout["xaxis"] = _axis(FIELDS["accessed_at"])
    if f.is_time:
        layout["yaxis"] = _plain_axis("Sessions per interval", empty)
    else:
        layout["yaxis"] = _axis(f)
    layout["hovermode"] = "x unified"
    layout["legend"] = {"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02}
    layout["legend"]["yanchor"] = "bottom"
    layout["margin"] = {"t": 72}
    return {"data": [upper, lower, middle], "layout": layout}


def distribution(stats: Mapping[str, Any] | None, q: Query) -> Figure:
    """A box plot drawn from the precomputed quartiles, fences at the minimum and maximum."""
    f = FIELDS[q.field]
    title = f"Distribution of {f.label}"
    count = int(stats["count"]) if stats else 0
    empty = count == 0 or stats is None

    def one(key: str) -> list[Any]:
        if empty or stats is None:
            return []
        value = _plain(stats[key])
        # plotly.js reads precomputed box numbers as numbers only: a time goes in as
        # milliseconds since 1970, which a date axis shows as that time.
        return [_epoch_ms(value) if f.is_time else value]

    trace = {
        "type": "box",
        "name": f.label,
        "orientation": "h",
        "y": [] if empty else [f.label],
        "q1": one("q1"),
        "median": one("median"),
        "q3": one("q3"),
        "lowerfence": one("min"),
        "upperfence": one("max"),
        "mean": one("mean"),
        "boxmean": True,
        "width": 0.4,
        "fillcolor": "rgba(31, 95, 191, 0.18)",
        "line": {"color": BLUE, "width": 2},
        "hoverinfo": "skip" if f.is_time else "x",
        "showlegend": False,
    }
    layout = _layout(title, empty, f"{q.field}|{q.window}")
    layout["xaxis"] = _axis(f) | {"tickvals": None, "ticktext": None}
    if f.is_time:
        # plotly.js draws a precomputed box on a number axis only: the five numbers
        # become ticks labelled with their times.
        ticks = [one(k)[0] for k in ("min", "q1", "median", "q3", "max")] if not empty else []
        keys = ("min", "q1", "median", "q3", "max")
        labels = [_plain(stats[k]) for k in keys] if ticks and stats is not None else []
        layout["xaxis"] |= {
            "type": "linear",
            "tickvals": ticks,
            "ticktext": [f"{v:%b %d<br>%H:%M}" for v in labels],
        }
    layout["yaxis"] = {"visible": False, "type": "category", "title": {"text": None}}
    if not empty and stats is not None:
        parts = [f"{count:,} sessions", f"median {_format(stats['median'], f)}"]
        parts.append(f"mean {_format(stats['mean'], f)}")
        if stats.get("approximate"):  # Athena's approx_percentile
            parts.append("approximate quartiles")
        layout["annotations"] = [
            {
                "text": " · ".join(parts),
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 1.0,
                "yanchor": "bottom",
                "font": {"size": 12, "color": MUTED},
            }
        ]
    return {"data": [trace], "layout": layout}


def histogram(frame: pd.DataFrame | None, q: Query) -> Figure:
    """Bars from the precomputed equal-width bins."""
    f = FIELDS[q.field]
    title = f"Histogram of {f.label}"
    empty = sum(_col(frame, "count")) == 0
    lo = _col(frame, "lo")
    hi = _col(frame, "hi")
    counts = [int(c) for c in _col(frame, "count")]
    if f.is_time:
        mids = [a + (b - a) / 2 for a, b in zip(lo, hi, strict=True)]
        widths: list[float] = [
            (b - a) / timedelta(milliseconds=1) for a, b in zip(lo, hi, strict=True)
        ]
    else:
        mids = [(a + b) / 2 for a, b in zip(lo, hi, strict=True)]
        widths = [b - a for a, b in zip(lo, hi, strict=True)]
    trace = {
        "type": "bar",
        "name": "Sessions",
        "x": mids,
        "y": counts,
        "width": widths,
        "customdata": [[a, b] for a, b in zip(lo, hi, strict=True)],
        "marker": {"color": BLUE, "line": {"width": 1, "color": "#ffffff"}, "opacity": 0.88},
        "hovertemplate": (
            f"{_hover('customdata[0]', f)} to {_hover('customdata[1]', f)}"
            "<br>%{y:,} sessions<extra></extra>"
        ),
        "showlegend": False,
    }
    layout = _layout(title, empty, f"{q.field}|{q.window}")
    layout["xaxis"] = _axis(f)
    layout["yaxis"] = _plain_axis("Sessions", empty)
    layout["bargap"] = 0
    return {"data": [trace], "layout": layout}


def age_groups(frame: pd.DataFrame | None, q: Query) -> Figure:
    """A donut of the share of users in each age group."""
    title = "Users by age group"
    empty = sum(_col(frame, "users")) == 0
    labels = [str(a) for a in _col(frame, "age_group")]
    shares = [float(s) for s in _col(frame, "share")]
    users = [int(u) for u in _col(frame, "users")]
    trace = {
        "type": "pie",
        "name": "Age group",
        "labels": labels,
        "values": shares,
        "customdata": users,
        "sort": False,
        "direction": "clockwise",
        "hole": 0.5,
        "marker": {
            "colors": list(AGE_COLORS[: len(labels)]),
            "line": {"color": "#ffffff", "width": 2},
        },
        "textinfo": "percent",
        "textposition": "inside",
        "insidetextorientation": "horizontal",
        "hovertemplate": (
            "<b>%{label}</b><br>%{customdata:,} users<br>%{value:.1f}%<extra></extra>"
        ),
        "showlegend": True,
    }
    layout = _layout(title, empty, f"age|{q.window}")
    layout["legend"] = {
        "orientation": "v",
        "x": 1.0,
        "xanchor": "left",
        "y": 0.5,
        "yanchor": "middle",
        "font": {"size": 12},
    }
    layout["showlegend"] = not empty
    return {"data": [trace], "layout": layout}


BUILDERS: dict[str, Callable[[Any, Query], Figure]] = {
    "top_traffic": top_traffic,
    "top_people": top_people,
    "timeline": timeline,
    "distribution": distribution,
    "histogram": histogram,
    "age_groups": age_groups,
}


# ---------------------------------------------------------------- helpers


def _layout(title: str, empty: bool, revision: str) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "annotations": [_message(EMPTY)] if empty else [],
        # The user's zoom survives data updates and resets when what the axes mean changes.
        "uirevision": revision,
        "showlegend": False,
        "height": HEIGHT,
    }


def _message(text: str) -> dict[str, Any]:
    return {
        "text": text,
        "showarrow": False,
        "xref": "paper",
        "yref": "paper",
        "x": 0.5,
        "y": 0.5,
        "font": {"size": 16, "color": MUTED},
    }


def _axis(f: Field) -> dict[str, Any]:
    return {
        "title": {"text": f.axis_title},
        "type": "date" if f.is_time else "linear",
        "tickformat": None if f.is_time else ",~r",
        "hoverformat": None,
        "visible": True,
        "rangemode": "normal" if f.is_time else "tozero",
    }


def _plain_axis(title: str, empty: bool) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "type": "linear",
        "tickformat": ",~r",
        "visible": not empty,
        "rangemode": "tozero",
    }


def _col(frame: pd.DataFrame | None, name: str) -> list[Any]:
    """A column as plain Python values; empty when there is no frame or no such column."""
    if frame is None or frame.empty or name not in frame.columns:
        return []
    return _values(frame[name])


def _compact(values: list[Any]) -> list[Any]:
    """Numbers as short as the hover needs (it shows one decimal): up to 1,000 buckets of three
    series are most of a refresh's payload."""
    out: list[Any] = []
    for v in values:
        if isinstance(v, float) and v == v:
            out.append(int(v) if v.is_integer() else round(v, 2))
        else:
            out.append(v)
    return out


def _values(series: pd.Series) -> list[Any]:
    return [_plain(v) for v in series.tolist()]


def _plain(value: Any) -> Any:
    """A value as plain Python: datetimes, ints and floats (NaN becomes None)."""
    if value is None:
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, datetime):
        return value
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def _epoch_ms(value: datetime) -> float:
    return (value - datetime(1970, 1, 1)) / timedelta(milliseconds=1)


def _hover(ref: str, f: Field, decimals: int = 0) -> str:
    if f.is_time:
        return f"%{{{ref}|%Y-%m-%d %H:%M:%S}} UTC"
    return f"%{{{ref}:,.{decimals}f}} {f.unit}"


def _format(value: Any, f: Field) -> str:
    """A value for people to read: a time to the second, a number with its unit."""
    value = _plain(value)
    if value is None:
        return "–"
    if f.is_time:
        return f"{value:%Y-%m-%d %H:%M:%S}"
    number = float(value)
    text = f"{number:,.0f}" if number == int(number) or abs(number) >= 100 else f"{number:,.1f}"
    return f"{text} {f.unit}"


def describe_window(window: str) -> str:
    """Return the readable name of a time window, e.g. "Last hour"."""
    return WINDOW_LABELS.get(window, window)
