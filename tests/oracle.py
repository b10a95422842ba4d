"""An independent oracle: the panels computed in pandas from the same rows, by their definitions."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from drivendata.database import COLUMN_NAMES, COLUMNS

# ASCII digits only: \d alone would also take other scripts' digits, which no database check does
TS = re.compile(
    r"(?!0000)\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]) "  # no year 0
    r"([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?",
    re.ASCII,
)
DAY = re.compile(r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])", re.ASCII)
WINDOWS = {"15m": 15 * 60, "1h": 3600, "24h": 86400, "7d": 7 * 86400, "all": None}
STEPS = [(19, 1), (18, 10), (16, 60), (15, 600), (13, 3600), (10, 86400), (7, 31 * 86400)]
GROUPS = [("under 18", 0, 18), ("18-24", 18, 25), ("25-34", 25, 35), ("35-44", 35, 45)]
GROUPS += [("45-54", 45, 55), ("55-64", 55, 65), ("65+", 65, 10_000)]


def text(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")


def real_day(s: str) -> bool:
    """The month has the day (no 2026-02-30)."""
    try:
        date.fromisoformat(s[:10])
    except ValueError:
        return False
    return True


def parse(s: str) -> datetime:
    """A day past its month's end rolls over into the next month, as the databases read it."""
    y, m, d = int(s[:4]), int(s[5:7]), int(s[8:10])
    clock = datetime.strptime(s[11:], "%H:%M:%S.%f" if "." in s else "%H:%M:%S")
    return datetime(y, m, 1) + timedelta(days=d - 1) + (clock - datetime(1900, 1, 1))


class Oracle:
    def __init__(self, rows: list[tuple[Any, ...]], now: datetime, window: str) -> None:
        frame = pd.DataFrame(rows, columns=list(COLUMN_NAMES))
        for i, (name, kind) in enumerate(COLUMNS):
            if kind in ("INT", "BIGINT"):  # as Python ints: exact to 64 bits, NULL as None
                frame[name] = pd.Series([row[i] for row in rows], index=frame.index, dtype=object)
        self.now = now
        now_text = text(now)
        frame["at_ok"] = (
            frame["accessed_at"]
            .map(
                lambda s: (
                    isinstance(s, str) and bool(TS.fullmatch(s)) and real_day(s) and s <= now_text
                )
            )
            .astype(bool)
        )
        span = WINDOWS[window]
        if span is not None:
            since = text(now - timedelta(seconds=span))
            frame = frame[frame["at_ok"] & (frame["accessed_at"] >= since)]
        self.frame = frame

    def ok(self, field: str) -> pd.Series:
        f = self.frame
        if field == "accessed_at":
            return f["at_ok"]
        return f[field].notna()

    def key(self, field: str) -> pd.Series:
        """Values as ranked: text for times (ISO text orders as time), numbers otherwise."""
        return self.frame[field]

    def number(self, field: str, values: pd.Series) -> pd.Series:
        if field == "accessed_at":
            return values.map(lambda s: (parse(s) - datetime(1970, 1, 1)).total_seconds())
        return values.astype(float)

    def top_traffic(self, field: str, versus: str) -> list[tuple[str, Any, Any]]:
        f = self.frame[self.ok(field) & self.ok(versus)]
        rows = sorted(
            zip(f["person_name"], f[field], f[versus], strict=True),
            key=lambda r: (_desc(r[2]), _desc(r[1]), r[0] or ""),
        )
        return rows[:10]

    def top_people(self, field: str) -> list[tuple[str, Any]]:
        f = self.frame[self.ok(field) & texts(self.frame["person_name"])]
        best = f.groupby("person_name")[field].max()
        ranked = sorted(best.items(), key=lambda kv: (_desc(kv[1]), kv[0]))
        return ranked[:10]

    def timeline(self, field: str, buckets: int = 1000) -> pd.DataFrame:
        need = self.frame["at_ok"] & (self.ok(field))
        f = self.frame[need]
        if f.empty:
            return pd.DataFrame(columns=["bucket", "sessions"])
        lo, hi = parse(f["accessed_at"].min()), parse(f["accessed_at"].max())
        seconds = (hi - lo).total_seconds()
        chars = next((c for c, w in STEPS if seconds / w + 2 <= buckets), 4)
        key = f["accessed_at"].str[:chars]
        if field == "accessed_at":
            counts = key.value_counts().sort_index()
            return pd.DataFrame({"bucket": counts.index, "sessions": counts.to_numpy()})
        g = f[field].astype(float).groupby(key)
        return pd.DataFrame(
            {"sessions": g.size(), "min": g.min(), "mean": g.mean(), "max": g.max()}
        ).reset_index(names="bucket")

    def values(self, field: str) -> np.ndarray:
        """The field's valid values as numbers (seconds for a time), sorted."""
        return np.sort(self.number(field, self.frame.loc[self.ok(field), field]).to_numpy())

    def distribution(self, field: str) -> dict[str, float]:
        values = self.values(field)
        if len(values) == 0:
            return {"count": 0}
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        return {
            "count": len(values),
            "min": values.min(),
            "q1": q1,
            "median": median,
            "q3": q3,
            "max": values.max(),
            "mean": values.mean(),
        }

    def histogram(self, field: str, bins: int = 30) -> list[int]:
        raw = self.frame.loc[self.ok(field), field]
        if raw.empty:
            return []
        if field == "accessed_at":
            values = self.number(field, raw).to_numpy()
            lo, hi = values.min(), values.max()
            if hi == lo:
                return [len(values)]
            index = np.minimum(np.floor((values - lo) * bins / (hi - lo)).astype(int), bins - 1)
        else:
            ints = [int(v) for v in raw]
            lo, hi = min(ints), max(ints)
            if hi == lo:
                return [len(ints)]
            index = np.array([min((v - lo) * bins // (hi - lo), bins - 1) for v in ints])
        return np.bincount(index, minlength=bins).tolist()

    def age_groups(self) -> dict[str, int]:
        today = self.now.date()
        f = self.frame[texts(self.frame["user_name"])]
        born: dict[str, date | None] = {}
        for user, value in zip(f["user_name"], f["birth_date"], strict=True):
            day = None
            if isinstance(value, str) and DAY.fullmatch(value):
                try:
                    day = date.fromisoformat(value)
                except ValueError:
                    day = None
                if day is not None and day > today:
                    day = None
            known = born.get(user)
            born[user] = max(filter(None, [known, day]), default=None)
        counts = {label: 0 for label, _, _ in GROUPS} | {"unknown": 0}
        for day in born.values():
            if day is None:
                counts["unknown"] += 1
                continue
            age = today.year - day.year - ((today.month, today.day) < (day.month, day.day))
            label = next(lbl for lbl, lo, hi in GROUPS if lo <= age < hi)
            counts[label] += 1
        return counts

    def summary(self, field: str, versus: str) -> dict[str, Any]:
        f = self.frame
        person = texts(f["person_name"])
        user = texts(f["user_name"])
        ok_at = f["at_ok"]
        recent = text(self.now - timedelta(minutes=5))
        return {
            "rows": len(f),
            "users": f.loc[user, "user_name"].nunique(),
            "newest": parse(f.loc[ok_at, "accessed_at"].max()) if ok_at.any() else None,
            "last_5_minutes": int((ok_at & (f["accessed_at"] >= recent)).sum()),
            "skipped": {
                "top_traffic": int((~(self.ok(field) & self.ok(versus))).sum()),
                "top_people": int((~(self.ok(field) & person)).sum()),
                "timeline": int((~(ok_at & self.ok(field))).sum()),
                "distribution": int((~self.ok(field)).sum()),
                "histogram": int((~self.ok(field)).sum()),
                "age_groups": int((~user).sum()),
            },
        }


def bool_text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def texts(column: pd.Series) -> pd.Series:
    """Which values are non-empty text, as booleans even when the column is empty."""
    return column.map(bool_text).astype(bool)


class _desc:  # noqa: N801 - a sort key that reverses the order of any comparable value
    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _desc) -> bool:
        return bool(self.value > other.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _desc) and bool(self.value == other.value)
