"""The naive approach many dashboards take, as the benchmark's baseline.

``SELECT *`` into pandas, the seven panels computed in pandas, and plotly express figures
built from the raw rows. The panels follow the same rules as :mod:`drivendata.panels` (which
rows are valid, tie order, bucket widths, bin edges, quartile interpolation), so the
benchmark also uses them as an independent oracle for the query module's numbers.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
import sqlalchemy as sa

from drivendata.panels import AGE_GROUPS, BUCKET_STEPS, TOP, UNKNOWN_AGE, birth_cutoff, stamp

TABLE = "streaming_layer.streaming_data"
TIME = r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]) ([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?$"
DATE = r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"
# Bucket widths of the timeline as pandas frequencies, matching BUCKET_STEPS' prefixes.
FREQS = {19: "s", 18: "10s", 16: "min", 15: "10min", 13: "h", 10: "D", 7: "MS", 4: "YS"}


def load(conn: sa.Connection, table: str = TABLE) -> pd.DataFrame:
    """Read every row of the table into pandas, as a dashboard without a query layer does."""
    return pd.read_sql(sa.text(f"SELECT * FROM {table}"), conn)


def panels(
    df: pd.DataFrame,
    field: str,
    now: datetime,
    versus: str = "consumed_traffic",
    buckets: int = 1000,
    bins: int = 30,
) -> dict[str, Any]:
    """Compute the seven panels from all rows in pandas; field is a numeric field."""
    at_ok = df["accessed_at"].fillna("").str.match(TIME) & (df["accessed_at"] <= stamp(now))
    ok = df[field].notna()
    vs_ok = df[versus].notna()
    person = df["person_name"].fillna("") != ""
    user = df["user_name"].fillna("") != ""

    top = df.loc[ok & vs_ok, ["person_name", field, versus]]
    top = top.sort_values([versus, field, "person_name"], ascending=[False, False, True])
    top_traffic = top.head(TOP).reset_index(drop=True)

    best = df.loc[ok & person].groupby("person_name")[field].max().rename("value").reset_index()
    best = best.sort_values(["value", "person_name"], ascending=[False, True])
    top_people = best.head(TOP).reset_index(drop=True)

    timeline = _timeline(df.loc[at_ok & ok, ["accessed_at", field]], field, buckets)

    values = df.loc[ok, field].to_numpy(dtype="int64")
    if len(values):
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        distribution: dict[str, Any] = {
            "count": len(values),
            "min": float(values.min()),
            "q1": float(q1),
            "median": float(median),
            "q3": float(q3),
            "max": float(values.max()),
            "mean": float(values.mean()),
        }
    else:
        distribution = dict.fromkeys(("min", "q1", "median", "q3", "max", "mean")) | {"count": 0}

    histogram = _histogram(values, bins)

    today = now.date()
    bd = df["birth_date"].where(
        df["birth_date"].fillna("").str.match(DATE) & (df["birth_date"] <= today.isoformat())
    )
    born = bd[user].groupby(df.loc[user, "user_name"]).max()
    group = pd.Series(AGE_GROUPS[-1][0], index=born.index)
    for label, upper in reversed(AGE_GROUPS):
        if upper is not None:
            group[born > birth_cutoff(today, upper).isoformat()] = label
    group[born.isna()] = UNKNOWN_AGE
    labels = [label for label, _ in AGE_GROUPS] + [UNKNOWN_AGE]
    users = group.value_counts().reindex(labels, fill_value=0)
    total = int(users.sum())
    age_groups = pd.DataFrame(
        {
            "age_group": labels,
            "users": users.to_numpy(dtype="int64"),
            "share": (100.0 * users / total if total else users * 0.0).to_numpy(),
        }
    )

    newest = df.loc[at_ok, "accessed_at"].max()
    recent = stamp(now - timedelta(minutes=5))
    summary = {
        "rows": len(df),
        "users": int(df.loc[user, "user_name"].nunique()),
        "newest": None if pd.isna(newest) else newest,
        "last_5_minutes": int((at_ok & (df["accessed_at"] >= recent)).sum()),
        "skipped": {
            "top_traffic": int((~(ok & vs_ok)).sum()),
            "top_people": int((~(ok & person)).sum()),
            "timeline": int((~(at_ok & ok)).sum()),
            "distribution": int((~ok).sum()),
            "histogram": int((~ok).sum()),
            "age_groups": int((~user).sum()),
        },
    }
    return {
        "top_traffic": top_traffic,
        "top_people": top_people,
        "timeline": timeline,
        "distribution": distribution,
        "histogram": histogram,
        "age_groups": age_groups,
        "summary": summary,
    }


def _timeline(rows: pd.DataFrame, field: str, buckets: int) -> pd.DataFrame:
    at = pd.to_datetime(rows["accessed_at"], format="ISO8601")
    if at.empty:
        return pd.DataFrame(columns=["bucket", "sessions", "min", "mean", "max"])
    span = (at.max() - at.min()) / timedelta(seconds=1)
    chars = next((n for n, width in BUCKET_STEPS if span / width + 2 <= buckets), 4)
    freq = FREQS[chars]
    if freq in ("MS", "YS"):
        start = at.dt.to_period("M" if freq == "MS" else "Y").dt.to_timestamp()
    else:
        start = at.dt.floor(freq)
    grouped = rows[field].groupby(start.to_numpy())
    out = grouped.agg(["size", "min", "mean", "max"]).rename(columns={"size": "sessions"})
    out = out.rename_axis("bucket").reset_index()
    for col in ("min", "mean", "max"):
        out[col] = out[col].astype("float64")
    return out


def _histogram(values: np.ndarray, bins: int) -> pd.DataFrame:
    if not len(values):
        return pd.DataFrame({"lo": [], "hi": [], "count": []})
    lo, hi = int(values.min()), int(values.max())
    if hi == lo:
        return pd.DataFrame({"lo": [float(lo)], "hi": [float(hi)], "count": [len(values)]})
    index = np.minimum((values - lo) * bins // (hi - lo), bins - 1)
    counts = np.bincount(index, minlength=bins)
    width = (hi - lo) / bins
    edges = [lo + i * width for i in range(bins + 1)]
    edges[-1] = hi
    return pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "count": counts})


def figures(df: pd.DataFrame, results: dict[str, Any], field: str) -> dict[str, Any]:
    """Build the six plotly figures the way many dashboards do: from the raw rows."""
    top = results["top_traffic"]
    timeline = results["timeline"]
    return {
        "top_traffic": px.scatter(top, x=field, y="consumed_traffic", text="person_name"),
        "top_people": px.bar(results["top_people"], x="value", y="person_name", orientation="h"),
        "timeline": px.line(timeline, x="bucket", y="mean"),
        "distribution": px.box(df, y=field),
        "histogram": px.histogram(df, x=field, nbins=30),
        "age_groups": px.pie(results["age_groups"], names="age_group", values="users"),
    }
