"""The panels: each turns (field, window) into one bounded SQL query and a small result.

All aggregation happens in the database. Text timestamps are compared as text (ISO text sorts
as time does), so most date work needs no per-row parsing; where a number of seconds is needed
it is computed from the text's digits, which never fails on a well-formed value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
import dataclasses
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from drivendata import settings
from drivendata.database import Source, SourceError, table_sql


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    unit: str | None

    @property
    def is_time(self) -> bool:
        return self.unit is None

    @property
    def axis_title(self) -> str:
        return f"{self.label} ({self.unit})" if self.unit else f"{self.label} (UTC)"


FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("accessed_at", "Accessed at", None),
        Field("session_duration", "Session duration", "s"),
        Field("download_speed", "Download speed", "Mbps"),
        Field("upload_speed", "Upload speed", "Mbps"),
        Field("consumed_traffic", "Consumed traffic", "kB"),
    )
}

WINDOWS: dict[str, timedelta | None] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "all": None,
}
WINDOW_LABELS = {
    "15m": "Last 15 minutes",
    "1h": "Last hour",
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
    "all": "All time",
}

AGE_GROUPS: tuple[tuple[str, int | None], ...] = (
    # label, the age at which the next group starts
    ("under 18", 18),
    ("18-24", 25),
    ("25-34", 35),
    ("35-44", 45),
    ("45-54", 55),
    ("55-64", 65),
    ("65+", None),
)
UNKNOWN_AGE = "unknown"

TOP = 10
# Rows ranked before grouping by person: enough that the top people are found among them.
CANDIDATES = 1000
# Text-prefix buckets for the timeline: characters kept, and the longest bucket in seconds.
BUCKET_STEPS: tuple[tuple[int, int], ...] = (
    (19, 1),
    (18, 10),
    (16, 60),
    (15, 600),
    (13, 3600),
    (10, 86400),
    (7, 31 * 86400),
    (4, 366 * 86400),
)
TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class QueryError(ValueError):
    """A field, window or parameter outside the allowed lists."""


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Query:
    """What the panels are asked for; every value is checked against fixed lists."""

    field: str = "upload_speed"
    versus: str = "consumed_traffic"
    window: str = "all"
    now: datetime = dataclasses.field(default_factory=_utcnow)
    buckets: int = 1000
    bins: int = 30

    def __post_init__(self) -> None:
        for name in ("field", "versus"):
            value = getattr(self, name)
            if value not in FIELDS:
                raise QueryError(
                    f"{value!r} is not a field the panels know; pick one of "
                    f"{', '.join(FIELDS)}."
                )
        if self.window not in WINDOWS:
            raise QueryError(
                f"{self.window!r} is not a time window; pick one of {', '.join(WINDOWS)}."
            )
        if not isinstance(self.buckets, int) or not 2 <= self.buckets <= 10_000:
            raise QueryError("The timeline needs between 2 and 10000 buckets.")
        if not isinstance(self.bins, int) or not 1 <= self.bins <= 1000:
            raise QueryError("The histogram needs between 1 and 1000 bins.")
        if not isinstance(self.now, datetime):
            raise QueryError("The time the panels are computed at must be a datetime.")

    @classmethod
    def from_settings(cls, **overrides: Any) -> Query:
        """Build a query from the settings, with any value given here taking precedence."""
        values: dict[str, Any] = {
            "field": settings.get("field"),
            "window": settings.get("window"),
            "buckets": settings.get_int("timeline_buckets", minimum=2),
            "bins": settings.get_int("histogram_bins"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def since(self) -> datetime | None:
        span = WINDOWS[self.window]
        return None if span is None else self.now - span


def stamp(value: datetime) -> str:
    """Format a time the way the table stores it."""
    return value.strftime(TS_FORMAT)


def birth_cutoff(today: date, years: int) -> date:
    """Return the latest birth date of someone who is ``years`` old or older on ``today``."""
    try:
        return today.replace(year=today.year - years)
    except ValueError:  # 29 February in a year that has none
        return today.replace(year=today.year - years, day=28)


# ---------------------------------------------------------------- dialects


class Dialect:
    """SQL fragments that differ between databases; everything else is shared."""

    name = "sql"
    # The lowest value of a valid number or timestamp, for a threshold that finds nothing.
    lowest_number = "-9223372036854775807"

    def __init__(self, source: Source) -> None:
        self.source = source
        self.table = table_sql(source)

    def text(self, col: str) -> str:
        """A text column as compared byte by byte."""
        return col

    def valid_number(self, col: str) -> str:
        return f"{col} IS NOT NULL"

    def valid_timestamp(self, col: str) -> str:
        raise NotImplementedError

    def valid_date(self, col: str) -> str:
        raise NotImplementedError

    def seconds(self, col: str) -> str:
        """Seconds since 1970 of a well-formed text timestamp."""
        raise NotImplementedError

    least = "LEAST"

    def prefix(self, col: str, length: str) -> str:
        return f"substr({col}, 1, {length})"

    def floor(self, expr: str) -> str:
        """The whole number below a value that is never negative."""
        return f"CAST(FLOOR({expr}) AS BIGINT)"

    def nonempty(self, col: str) -> str:
        return f"({col} IS NOT NULL AND {col} <> '')"

    def top_people_sql(self, value: str, where: str) -> str:
        return f"""SELECT person_name, MAX({value}) AS value
FROM {self.table}
WHERE {where}
  AND {value} >= COALESCE((
    SELECT {value} FROM {self.table} WHERE {where}
    ORDER BY {value} DESC LIMIT 1 OFFSET {CANDIDATES - 1}), {{lowest}})
GROUP BY person_name
ORDER BY value DESC, person_name
LIMIT {TOP}"""

    def quartiles_sql(self, value: str, where: str) -> str:
        def pick(p: float, offset: int) -> str:
            return (
                f"(SELECT {value} FROM {self.table} WHERE {where} ORDER BY {value} "
                f"LIMIT 1 OFFSET (SELECT CAST((n - 1) * {p} AS INTEGER) + {offset} FROM s))"
            )

        picks = ",\n  ".join(
            f"{pick(p, 0)} AS {name}_lo, {pick(p, 1)} AS {name}_hi"
            for name, p in (("q1", 0.25), ("median", 0.5), ("q3", 0.75))
        )
        return f"""WITH s AS (
  SELECT COUNT(*) AS n, MIN({value}) AS min, MAX({value}) AS max, AVG({{number}}) AS mean
  FROM {self.table} WHERE {where})
SELECT n, min, max, mean,
  {picks}
FROM s"""


class SQLiteDialect(Dialect):
    name = "sqlite"
    least = "MIN"

    def floor(self, expr: str) -> str:
        return f"CAST({expr} AS INTEGER)"

    def valid_number(self, col: str) -> str:
        # Text in an INT column sorts after every number in SQLite; a range keeps it out
        # and still lets the column's index answer.
        return f"({col} >= -9223372036854775807 AND {col} <= 9223372036854775807)"

    def valid_timestamp(self, col: str) -> str:
        d = "[0-9]"
        return (
            f"({col} GLOB '{d * 4}-[01]{d}-[0-3]{d} [0-2]{d}:[0-5]{d}:[0-5]{d}*'"
            f" AND substr({col}, 6, 2) BETWEEN '01' AND '12'"
            f" AND substr({col}, 9, 2) BETWEEN '01' AND '31'"
            f" AND substr({col}, 12, 2) <= '23'"
            f" AND (length({col}) = 19 OR (length({col}) BETWEEN 21 AND 26"
            f" AND substr({col}, 20, 1) = '.' AND substr({col}, 21) NOT GLOB '*[^0-9]*')))"
        )

    def valid_date(self, col: str) -> str:
        d = "[0-9]"
        return (
            f"({col} GLOB '{d * 4}-[01]{d}-[0-3]{d}' AND length({col}) = 10"
            f" AND substr({col}, 6, 2) BETWEEN '01' AND '12'"
            f" AND substr({col}, 9, 2) BETWEEN '01' AND '31')"
        )

    def seconds(self, col: str) -> str:
        return (
            f"((julianday(substr({col}, 1, 10)) - 2440587.5) * 86400"
            f" + substr({col}, 12, 2) * 3600 + substr({col}, 15, 2) * 60"
            f" + CAST(substr({col}, 18) AS REAL))"
        )


class PostgresDialect(Dialect):
    name = "postgresql"

    def text(self, col: str) -> str:
        return f'{col} COLLATE "C"'

    def valid_timestamp(self, col: str) -> str:
        return (
            f"({col} ~ '^[0-9]{{4}}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01]) "
            f"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{{1,6}})?$')"
        )

    def valid_date(self, col: str) -> str:
        return f"({col} ~ '^[0-9]{{4}}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$')"

    def seconds(self, col: str) -> str:
        # make_date on the first of the month never fails for a checked month; days past the
        # month's end roll over, as they do on SQLite.
        return (
            f"((make_date(substr({col}, 1, 4)::int, substr({col}, 6, 2)::int, 1)"
            f" - DATE '1970-01-01' + substr({col}, 9, 2)::int - 1) * 86400.0"
            f" + substr({col}, 12, 2)::int * 3600 + substr({col}, 15, 2)::int * 60"
            f" + substr({col}, 18)::numeric)"
        )

    def top_people_sql(self, value: str, where: str) -> str:
        # WITH TIES keeps every row equal to the last candidate: one scan, exact top 10.
        return f"""SELECT person_name, MAX(value) AS value
FROM (
  SELECT person_name, {value} AS value FROM {self.table}
  WHERE {where}
  ORDER BY {value} DESC
  FETCH FIRST {CANDIDATES} ROWS WITH TIES) AS candidates
GROUP BY person_name
ORDER BY value DESC, person_name COLLATE "C"
LIMIT {TOP}"""

    def quartiles_sql(self, value: str, where: str) -> str:
        return f"""SELECT COUNT(*) AS n, MIN({value}) AS min, MAX({value}) AS max,
  AVG({{number}}) AS mean,
  percentile_cont(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY {{number}}) AS quartiles
FROM {self.table} WHERE {where}"""


def dialect_for(source: Source) -> Dialect:
    """Return the SQL dialect of a source."""
    if source.kind == "sqlite":
        return SQLiteDialect(source)
    if source.kind == "postgresql":
        return PostgresDialect(source)
    from drivendata.athena import AthenaDialect

    return AthenaDialect(source)


# ---------------------------------------------------------------- statements


@dataclass
class Statement:
    """One SQL statement with its bind parameters (only values this module made)."""

    sql: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def literal(self) -> str:
        """The statement with its parameters written in, for people to read and run."""

        def render(match: re.Match[str]) -> str:
            value = self.params[match.group(1)]
            if isinstance(value, int | float):
                return repr(value)
            return "'" + str(value).replace("'", "''") + "'"

        return re.sub(r"(?<![:\w]):(\w+)", render, self.sql)


class Builder:
    """Predicates shared by the panels of one query on one dialect."""

    def __init__(self, dialect: Dialect, q: Query) -> None:
        self.d = dialect
        self.q = q
        self.params: dict[str, Any] = {"now": stamp(q.now)}
        if q.since is not None:
            self.params["since"] = stamp(q.since)

    def valid(self, name: str) -> str:
        """The predicate that a row's value of a field can be used."""
        if FIELDS[name].is_time:
            at = self.d.text(name)
            return f"({self.d.valid_timestamp(name)} AND {at} <= :now)"
        return self.d.valid_number(name)

    def window(self) -> list[str]:
        if self.q.since is None:
            return []
        at = self.d.text("accessed_at")
        return [f"{at} >= :since", self.valid("accessed_at")]

    def where(self, *parts: str) -> str:
        terms = self.window() + [p for p in parts if p]
        return "\n  AND ".join(terms) if terms else "1 = 1"

    def number(self, name: str) -> str:
        """A field as a number: seconds since 1970 for a time."""
        return self.d.seconds(name) if FIELDS[name].is_time else name

    def value(self, name: str) -> str:
        """A field as compared and ranked: text for a time (ISO text sorts as time does)."""
        return self.d.text(name) if FIELDS[name].is_time else name

    def statement(self, sql: str) -> Statement:
        used = set(re.findall(r"(?<![:\w]):(\w+)", sql))
        return Statement(sql, {k: v for k, v in self.params.items() if k in used})


def top_traffic_sql(b: Builder) -> Statement:
    x, y = b.q.field, b.q.versus
    sql = f"""SELECT person_name, {x} AS x, {y} AS y
FROM {b.d.table}
WHERE {b.where(b.valid(x), b.valid(y))}
ORDER BY {b.value(y)} DESC, {b.value(x)} DESC, {b.d.text('person_name')}
LIMIT {TOP}"""
    return b.statement(sql)


def top_people_sql(b: Builder) -> Statement:
    f = b.q.field
    sql = b.d.top_people_sql(b.value(f), b.where(b.valid(f), b.d.nonempty("person_name")))
    lowest = "'0000'" if FIELDS[f].is_time else b.d.lowest_number
    return b.statement(sql.replace("{lowest}", lowest))


def timeline_sql(b: Builder) -> Statement:
    f = b.q.field
    at = "accessed_at"
    need = [b.valid(at)] + ([] if FIELDS[f].is_time else [b.valid(f)])
    where = b.where(*need)
    span = f"({b.d.seconds('hi')} - {b.d.seconds('lo')})"
    choice = "\n      ".join(
        f"WHEN {span} / {width} + 2 <= {b.q.buckets} THEN {length}"
        for length, width in BUCKET_STEPS
    )
    values = (
        "NULL AS min, NULL AS mean, NULL AS max"
        if FIELDS[f].is_time
        else f"MIN({f}) AS min, AVG({f}) AS mean, MAX({f}) AS max"
    )
    sql = f"""WITH span AS (
  SELECT MIN({b.d.text(at)}) AS lo, MAX({b.d.text(at)}) AS hi
  FROM {b.d.table} WHERE {where}),
width AS (
  SELECT CASE
      {choice}
      ELSE 4 END AS chars
  FROM span)
SELECT {b.d.prefix(at, '(SELECT chars FROM width)')} AS bucket, COUNT(*) AS sessions,
  {values}
FROM {b.d.table}
WHERE {where}
GROUP BY 1
ORDER BY 1"""
    return b.statement(sql)


def distribution_sql(b: Builder) -> Statement:
    f = b.q.field
    sql = b.d.quartiles_sql(b.value(f), b.where(b.valid(f)))
    return b.statement(sql.replace("{number}", b.number(f)))


def histogram_sql(b: Builder) -> Statement:
    f = b.q.field
    where = b.where(b.valid(f))
    num = b.number(f)
    # Integer fields bin by exact integer arithmetic; times by seconds.
    if FIELDS[f].is_time:
        index = b.d.floor(f"({num} - r.lo) * {b.q.bins} / (r.hi - r.lo)")
    else:
        index = f"((CAST({num} AS BIGINT) - r.lo) * {b.q.bins}) / (r.hi - r.lo)"
    sql = f"""WITH r AS (
  SELECT MIN({num}) AS lo, MAX({num}) AS hi FROM {b.d.table} WHERE {where})
SELECT CASE WHEN r.hi = r.lo THEN 0
       ELSE MIN(bin_index, {b.q.bins - 1}) END AS bin,
  COUNT(*) AS count, MIN(r.lo) AS lo, MIN(r.hi) AS hi
FROM {b.d.table}, r
WHERE {where}
GROUP BY 1
ORDER BY 1"""
    sql = sql.replace("MIN(bin_index", b.d.least + "(" + index)
    return b.statement(sql)


def age_groups_sql(b: Builder) -> Statement:
    today = b.q.now.date()
    for label, upper in AGE_GROUPS:
        if upper is not None:
            b.params[f"born_{upper}"] = birth_cutoff(today, upper).isoformat()
    b.params["today"] = today.isoformat()
    bd = b.d.text("birth_date")
    cases = "\n    ".join(
        f"WHEN bd > :born_{upper} THEN '{label}'"
        for label, upper in AGE_GROUPS
        if upper is not None
    )
    sql = f"""SELECT CASE WHEN bd IS NULL THEN '{UNKNOWN_AGE}'
    {cases}
    ELSE '{AGE_GROUPS[-1][0]}' END AS age_group,
  COUNT(*) AS users
FROM (
  SELECT user_name,
    MAX(CASE WHEN {b.d.valid_date('birth_date')} AND {bd} <= :today THEN {bd} END) AS bd
  FROM {b.d.table}
  WHERE {b.where(b.d.nonempty('user_name'))}
  GROUP BY user_name) AS users
GROUP BY 1"""
    return b.statement(sql)


def summary_sql(b: Builder) -> Statement:
    f, v = b.q.field, b.q.versus
    b.params["recent"] = stamp(b.q.now - timedelta(minutes=5))
    ok_f, ok_v, ok_at = b.valid(f), b.valid(v), b.valid("accessed_at")
    person, user = b.d.nonempty("person_name"), b.d.nonempty("user_name")
    at = b.d.text("accessed_at")

    def bad(cond: str) -> str:
        return f"SUM(CASE WHEN {cond} THEN 0 ELSE 1 END)"

    sql = f"""SELECT COUNT(*) AS rows,
  COUNT(DISTINCT CASE WHEN {user} THEN user_name END) AS users,
  MAX(CASE WHEN {ok_at} THEN {at} END) AS newest,
  SUM(CASE WHEN {ok_at} AND {at} >= :recent THEN 1 ELSE 0 END) AS last_5_minutes,
  {bad(f"{ok_f} AND {ok_v}")} AS skipped_top_traffic,
  {bad(f"{ok_f} AND {person}")} AS skipped_top_people,
  {bad(f"{ok_at} AND {ok_f}")} AS skipped_timeline,
  {bad(ok_f)} AS skipped_distribution,
  {bad(ok_f)} AS skipped_histogram,
  {bad(user)} AS skipped_age_groups
FROM {b.d.table}
WHERE {b.where()}"""
    return b.statement(sql)


def version_sql(dialect: Dialect) -> Statement:
    """A cheap value that changes when rows arrive."""
    if dialect.name == "sqlite":
        return Statement(f"SELECT MAX(rowid) AS version FROM {dialect.table}")
    if dialect.name == "postgresql":
        t = dialect.source.table
        return Statement(
            "SELECT COALESCE(s.n_tup_ins, 0) || '.' || COALESCE(s.n_tup_del, 0) || '.' || "
            "COALESCE(s.n_tup_upd, 0) || '.' || pg_relation_size(c.oid) AS version "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
            "WHERE n.nspname = :schema AND c.relname = :name",
            {"schema": t.schema or "public", "name": t.name},
        )
    return dialect.version_sql()  # type: ignore[attr-defined,no-any-return]


# ---------------------------------------------------------------- shaping results


def _time(value: Any) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, datetime):
        return value
    text = str(value)
    return datetime.strptime(text, TS_FORMAT if "." in text else "%Y-%m-%d %H:%M:%S")


def _field_values(frame: pd.DataFrame, column: str, name: str) -> None:
    if FIELDS[name].is_time:
        frame[column] = pd.to_datetime(frame[column].map(_time))
    else:
        frame[column] = pd.to_numeric(frame[column])


def shape_top_traffic(rows: pd.DataFrame, q: Query) -> pd.DataFrame:
    out = rows.rename(columns={"x": q.field, "y": q.versus}).copy()
    if q.field == q.versus:
        out = out.loc[:, ~out.columns.duplicated()]
    for name in {q.field, q.versus}:
        _field_values(out, name, name)
    return out.reset_index(drop=True)


def shape_top_people(rows: pd.DataFrame, q: Query) -> pd.DataFrame:
    out = rows.copy()
    _field_values(out, "value", q.field)
    return out.reset_index(drop=True)


def shape_timeline(rows: pd.DataFrame, q: Query) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "bucket": pd.to_datetime(rows["bucket"].map(_bucket_start)),
            "sessions": pd.to_numeric(rows["sessions"]).astype("int64"),
        }
    )
    if not FIELDS[q.field].is_time:
        for col in ("min", "mean", "max"):
            out[col] = pd.to_numeric(rows[col]).astype("float64")
    return out


def _bucket_start(prefix: str) -> datetime:
    full = "0000-01-01 00:00:00"
    text = str(prefix)
    if len(text) in (4, 7):  # a year or a month: the first day
        text = text + "-01-01"[len(text) - 4 :] if len(text) == 4 else text + "-01"
    return datetime.strptime(text + full[len(text) :], "%Y-%m-%d %H:%M:%S")


def shape_distribution(rows: pd.DataFrame, q: Query) -> dict[str, Any]:
    row = rows.iloc[0].to_dict() if len(rows) else {}
    n = int(row.get("n") or 0)
    out: dict[str, Any] = {"count": n}
    if n == 0:
        return out | dict.fromkeys(("min", "q1", "median", "q3", "max", "mean"))
    time = FIELDS[q.field].is_time
    if "quartiles" in row:
        q1, median, q3 = (float(v) for v in row["quartiles"])
    else:
        q1, median, q3 = (
            _interpolate(row[f"{k}_lo"], row[f"{k}_hi"], (n - 1) * p, time)
            for k, p in (("q1", 0.25), ("median", 0.5), ("q3", 0.75))
        )
    lo, hi = row["min"], row["max"]
    if time:
        lo, hi = _seconds(lo), _seconds(hi)
    out.update(min=float(lo), q1=q1, median=median, q3=q3, max=float(hi), mean=float(row["mean"]))
    if time:
        for key in ("min", "q1", "median", "q3", "max", "mean"):
            out[key] = _from_seconds(out[key])
    return out


def _seconds(value: Any) -> float:
    moment = _time(value)
    return float((moment - datetime(1970, 1, 1)) / timedelta(microseconds=1)) / 1e6


def _from_seconds(value: float) -> datetime:
    return datetime(1970, 1, 1) + timedelta(microseconds=round(value * 1e6))


def _interpolate(lo: Any, hi: Any, position: float, time: bool) -> float:
    a, b = (_seconds(lo), _seconds(hi if hi is not None else lo)) if time else (
        float(lo),
        float(hi if hi is not None else lo),
    )
    frac = position - int(position)
    return a + (b - a) * frac


def shape_histogram(rows: pd.DataFrame, q: Query) -> pd.DataFrame:
    counts = {int(r.bin): int(r.count) for r in rows.itertuples()}
    if not counts:
        return pd.DataFrame({"lo": [], "hi": [], "count": []})
    lo, hi = float(rows["lo"].iloc[0]), float(rows["hi"].iloc[0])
    width = (hi - lo) / q.bins if hi > lo else 1.0
    bins = q.bins if hi > lo else 1
    edges = [lo + i * width for i in range(bins + 1)]
    if hi > lo:
        edges[-1] = hi
    frame = pd.DataFrame(
        {"lo": edges[:-1], "hi": edges[1:], "count": [counts.get(i, 0) for i in range(bins)]}
    )
    if FIELDS[q.field].is_time:
        frame["lo"] = frame["lo"].map(_from_seconds)
        frame["hi"] = frame["hi"].map(_from_seconds)
    return frame


def shape_age_groups(rows: pd.DataFrame, q: Query) -> pd.DataFrame:
    counts = {str(r.age_group): int(r.users) for r in rows.itertuples()}
    labels = [label for label, _ in AGE_GROUPS] + [UNKNOWN_AGE]
    users = [counts.get(label, 0) for label in labels]
    total = sum(users)
    share = [100.0 * u / total if total else 0.0 for u in users]
    return pd.DataFrame({"age_group": labels, "users": users, "share": share})


def shape_summary(rows: pd.DataFrame, q: Query) -> dict[str, Any]:
    row = rows.iloc[0].to_dict()
    out: dict[str, Any] = {
        "rows": int(row["rows"] or 0),
        "users": int(row["users"] or 0),
        "newest": _time(row["newest"]),
        "last_5_minutes": int(row["last_5_minutes"] or 0),
        "skipped": {
            name: int(row[f"skipped_{name}"] or 0)
            for name in ("top_traffic", "top_people", "timeline", "distribution", "histogram", "age_groups")
        },
    }
    return out


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Panel:
    """One named unit: a statement builder and a function shaping its small result."""

    name: str
    build: Callable[[Builder], Statement]
    shape: Callable[[pd.DataFrame, Query], Any]


PANELS: dict[str, Panel] = {
    p.name: p
    for p in (
        Panel("top_traffic", top_traffic_sql, shape_top_traffic),
        Panel("top_people", top_people_sql, shape_top_people),
        Panel("timeline", timeline_sql, shape_timeline),
        Panel("distribution", distribution_sql, shape_distribution),
        Panel("histogram", histogram_sql, shape_histogram),
        Panel("age_groups", age_groups_sql, shape_age_groups),
        Panel("summary", summary_sql, shape_summary),
    )
}


def statements(source: Source, q: Query) -> dict[str, Statement]:
    """Return the statement each panel runs for a query, keyed by panel name."""
    d = dialect_for(source)
    return {name: panel.build(Builder(d, q)) for name, panel in PANELS.items()}


def run(conn: sa.Connection, source: Source, name: str, q: Query) -> Any:
    """Run one panel and return its small result."""
    if name not in PANELS:
        raise QueryError(f"{name!r} is not a panel; pick one of {', '.join(PANELS)}.")
    panel = PANELS[name]
    stmt = panel.build(Builder(dialect_for(source), q))
    rows = _fetch(conn, stmt)
    if name == "top_people" and len(rows) < TOP:
        # Fewer than ten people among the top rows: rank everyone (small or odd tables only).
        full = Builder(dialect_for(source), q)
        f = q.field
        where = full.where(full.valid(f), full.d.nonempty("person_name"))
        sql = f"""SELECT person_name, MAX({full.value(f)}) AS value FROM {full.d.table}
WHERE {where} GROUP BY person_name ORDER BY value DESC, {full.d.text('person_name')} LIMIT {TOP}"""
        rows = _fetch(conn, full.statement(sql))
    return panel.shape(rows, q)


def _fetch(conn: sa.Connection, stmt: Statement) -> pd.DataFrame:
    result = conn.execute(sa.text(stmt.sql), stmt.params)
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def data_version(conn: sa.Connection, source: Source) -> str:
    """Return a value that changes when rows arrive; far cheaper than the panels."""
    stmt = version_sql(dialect_for(source))
    row = conn.execute(sa.text(stmt.sql), stmt.params).first()
    if row is None:
        raise SourceError(
            f"The table {source.table} does not exist at {source.display}; create it, or set "
            "DRIVENDATA_TABLE to the table that holds the sessions."
        )
    return str(row[0])


def compute(
    conn: sa.Connection, source: Source, q: Query, names: Mapping[str, Panel] | None = None
) -> dict[str, Any]:
    """Run every panel (or those named) on one connection and return their results."""
    return {name: run(conn, source, name, q) for name in (names or PANELS)}
