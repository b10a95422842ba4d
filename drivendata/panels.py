"""The panels: each turns (field, window) into one bounded SQL query and a small result.

All aggregation happens in the database. Text timestamps are compared as text (ISO text sorts
as time does), so most date work needs no per-row parsing; where a number of seconds is needed
it is computed from the text's digits, which never fails on a well-formed value.
"""

from __future__ import annotations

import calendar
import dataclasses
import functools
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from drivendata import settings
from drivendata.database import Source, SourceError, limit_parallel_workers, table_sql
from drivendata.people import PEOPLE, shower


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

# The panels drawn as figures; the summary counts the rows each of them skipped.
FIGURE_PANELS = ("top_traffic", "top_people", "timeline", "distribution", "histogram", "age_groups")
TOP = 10
# Rows ranked before grouping by person: enough that the top people are found among them.
CANDIDATES = 1000
# A window of at most this many rows has its top sessions and people ranked among its rows,
# read by their time, on SQLite (see SQLiteDialect.within_few).
FEW_WINDOW_ROWS = 10_000
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
# A bind parameter in a statement's SQL: a colon and a name, the colon not part of a '::' cast.
# (The colon is matched first: a pattern that starts with the look-behind tries it at every
# character, 50 times slower on the timeline's 270 KB of SQL.)
BIND = re.compile(r":(?<![:\w]:)(\w+)")
# PostgreSQL's timeline groups rows by their text up to the hour, the minute or the second, and
# by the second from the start in windows this short (at most 86,400 groups).
KEY_HOUR, KEY_MINUTE, KEY_SECOND = 13, 16, 19
SECOND_KEYS_WITHIN = timedelta(hours=24)
# The share of the table's pages (in percent) whose rows tell PostgreSQL's timeline whether
# its span is long enough for a pass by the hour, and its top sessions and people where to cut
# (see CUT_RANK): about a thousand rows of a million.
SAMPLE_PERCENT = 0.1
# PostgreSQL's top sessions and people: the rank, among a sample's rows, of the value that cuts
# the rows worth ranking (see PostgresDialect.cuts_sql).
CUT_RANK = 3
# Fields of at most 36,001 distinct whole numbers, whose distribution and histogram PostgreSQL
# computes from a count of each value.
FEW_VALUES = ("session_duration", "download_speed", "upload_speed")
# The panels whose skipped rows that values pass counts besides its own (the distribution's and
# the histogram's: rows whose value is NULL).
COUNTED_BY_VALUES = ("top_traffic", "top_people", "age_groups")


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
    people: str = "names"

    def __post_init__(self) -> None:
        for name in ("field", "versus"):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in FIELDS:
                raise QueryError(
                    f"{value!r} is not a field the panels know; pick one of {', '.join(FIELDS)}."
                )
        if not isinstance(self.window, str) or self.window not in WINDOWS:
            raise QueryError(
                f"{self.window!r} is not a time window; pick one of {', '.join(WINDOWS)}."
            )
        if not isinstance(self.buckets, int) or not 2 <= self.buckets <= 10_000:
            raise QueryError("The timeline needs between 2 and 10000 buckets.")
        if not isinstance(self.bins, int) or not 1 <= self.bins <= 1000:
            raise QueryError("The histogram needs between 1 and 1000 bins.")
        if not isinstance(self.now, datetime):
            raise QueryError("The time the panels are computed at must be a datetime.")
        if not isinstance(self.people, str) or self.people not in PEOPLE:
            raise QueryError(
                f"{self.people!r} is not a way of showing people; pick one of {', '.join(PEOPLE)}."
            )

    @classmethod
    def from_settings(cls, **overrides: Any) -> Query:
        """Build a query from the settings, with any value given here taking precedence."""
        values: dict[str, Any] = {
            "field": settings.get("field"),
            "window": settings.get("window"),
            "buckets": settings.get_int("timeline_buckets", minimum=2),
            "bins": settings.get_int("histogram_bins"),
            "people": settings.get("people"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def since(self) -> datetime | None:
        span = WINDOWS[self.window]
        return None if span is None else self.now - span


def two_digits(count: int, suffix: str = "") -> str:
    """The SQL list '00', '01', ... of the first ``count`` whole numbers as two digits."""
    return ", ".join(f"'{n:02d}{suffix}'" for n in range(count))


def two_bytes(count: int, suffix: str = "", prefix: str = "") -> str:
    """:func:`two_digits` as PostgreSQL bytea literals, to compare with a text's bytes."""
    return byte_list(f"{prefix}{n:02d}{suffix}" for n in range(count))


def _clock_parts(count: int) -> list[tuple[str, ...]]:
    """Every combination of ``count`` two-digit parts below 60 ('00' to '59')."""
    parts: list[tuple[str, ...]] = [()]
    for _ in range(count):
        parts = [(*head, f"{n:02d}") for head in parts for n in range(60)]
    return parts


@functools.cache
def clock_rests(count: int, suffix: str = "") -> tuple[str, ...]:
    """The rests of a clock of ``count`` parts, each after a colon (':00:00' to ':59:59' for
    two), with ``suffix`` after each: made once, as every statement's time checks ask for
    them (thousands of texts; building them each time cost a refresh 0.1 s of Python)."""
    return tuple("".join(f":{part}" for part in parts) + suffix for parts in _clock_parts(count))


@functools.cache
def bytea_array(texts: tuple[str, ...]) -> str:
    """ASCII texts as one PostgreSQL bytea[] constant, in hex (a colon in the SQL would read as
    a bind parameter): one literal parses far faster than thousands of them, and ``= ANY`` of
    a constant array is a hashed lookup."""
    return "'{" + ",".join(f"\\\\x{text.encode().hex()}" for text in texts) + "}'::bytea[]"


def byte_list(texts: Iterable[str]) -> str:
    """ASCII texts as a list of PostgreSQL bytea literals, to compare with a text's bytes."""
    return ", ".join(f"'\\x{text.encode().hex()}'::bytea" for text in texts)


def bin_start(i: str, lo: str, hi: str, bins: int) -> str:
    """SQL of where histogram bin ``i`` (1 to bins - 1) starts among whole numbers from ``lo``
    to ``hi``: lo + ceil(i * (hi - lo) / bins), exactly, for any 64-bit integers.

    SQLite's INT holds 64 bits, so hi - lo can overflow, and SQLite then goes on in floating
    point without a word. Here each end is split as bins * q + r (0 <= r < bins), so that the
    start is (bins - i) * q_lo + i * q_hi + ceil(((bins - i) * r_lo + i * r_hi) / bins): no
    part overflows for i from 1 to bins - 1."""

    def q(x: str) -> str:
        return f"({x} / {bins} - ({x} % {bins} < 0))"

    def r(x: str) -> str:
        return f"((({x} % {bins}) + {bins}) % {bins})"

    return (
        f"(({bins} - {i}) * {q(lo)} + {i} * {q(hi)}"
        f" + (({bins} - {i}) * {r(lo)} + {i} * {r(hi)} + {bins - 1}) / {bins})"
    )


# Every month and day of a leap year but 02-29, as MM-DD.
MONTH_DAYS = [
    f"{month:02d}-{day:02d}"
    for month in range(1, 13)
    for day in range(1, calendar.monthrange(2000, month)[1] + 1)
    if (month, day) != (2, 29)
]
# The ten digits' bytes, as PostgreSQL's rtrim() takes the bytes to strip from a bytea.
DIGIT_BYTES = "'\\x30313233343536373839'::bytea"


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

    def valid_number(self, col: str, seek: bool = True) -> str:
        return f"{col} IS NOT NULL"

    def ranged(self, col: str, seek: bool) -> str:
        """A column in a range term; ``seek=False`` keeps the term from steering the plan."""
        return col

    def valid_timestamp(self, col: str) -> str:
        raise NotImplementedError

    def few_valid_timestamp(self, col: str) -> str:
        """valid_timestamp, for a statement that applies it to a few rows only."""
        return self.valid_timestamp(col)

    def valid_date(self, col: str) -> str:
        raise NotImplementedError

    def real_day(self, col: str) -> str:
        """The day of a well-formed text date or time is one its month has (no 2026-02-30).

        Plain text tests, the same on every database: most rows stop at the first one."""
        days = [
            f"'{m}-{d}'" for m in ("01", "03", "05", "07", "08", "10", "12") for d in (29, 30, 31)
        ]
        days += [f"'{m}-{d}'" for m in ("04", "06", "09", "11") for d in (29, 30)]
        leap = ", ".join(f"'{y:02d}'" for y in range(4, 100, 4))
        centuries = ", ".join(f"'{y:04d}'" for y in range(400, 10000, 400))
        return (
            f"(substr({col}, 9, 2) <= '28' OR substr({col}, 6, 5) IN ({', '.join(days)})"
            f" OR (substr({col}, 6, 5) = '02-29' AND (substr({col}, 3, 2) IN ({leap})"
            f" OR substr({col}, 1, 4) IN ({centuries}))))"
        )

    def seconds(self, col: str) -> str:
        """Seconds since 1970 of a well-formed text timestamp."""
        raise NotImplementedError

    def micros(self, col: str) -> str:
        """Microseconds since 1970 of a well-formed text timestamp, as an exact integer."""
        raise NotImplementedError

    def row_seconds(self, col: str) -> str:
        """seconds(), for a statement that computes it for every row it reads (a row whose
        timestamp is valid: the caller checks)."""
        return self.seconds(col)

    def time_quartiles_sql(self, value: str, where: str) -> str:
        """quartiles_sql of a time field, ``value`` its text as compared (see Builder.value)."""
        return self.quartiles_sql(value, where)

    def time_histogram_sql(self, value: str, where: str, bins: int) -> str:
        """The histogram of a time field, ``value`` its text as compared (see Builder.value)."""
        num = self.row_seconds(value)
        index = self.floor(f"({num} - r.lo) * {bins} / (r.hi - r.lo)")
        # The first and last times are the least and greatest texts (ISO text sorts as time
        # does): seconds of two values, not of every row.
        bounds = (
            f"SELECT {self.seconds('lo')} AS lo, {self.seconds('hi')} AS hi"
            f" FROM (SELECT MIN({value}) AS lo, MAX({value}) AS hi FROM {self.table}"
            f" WHERE {where}) AS ends"
        )
        return self.histogram_by_expression(num, index, where, bins, bounds)

    least = "LEAST"
    double = "DOUBLE PRECISION"
    # Whether top_people_sql ranks every person, or only the people of the top rows.
    ranks_everyone = False
    # Whether top_people and age_groups share one statement (people_sql).
    fuses_people = False

    def people_sql(self, b: Builder, group: str) -> str:
        raise NotImplementedError

    def values_panels(self, q: Query) -> bool:
        """Whether the distribution, the histogram and the summary's counts of rows share one
        statement (values_sql) for this query."""
        return False

    def values_sql(self, b: Builder) -> str:
        raise NotImplementedError

    def prefix(self, col: str, length: str) -> str:
        return f"substr({col}, 1, {length})"

    def floor(self, expr: str) -> str:
        """The whole number below a value that is never negative."""
        return f"CAST(FLOOR({expr}) AS BIGINT)"

    def nonempty(self, col: str) -> str:
        return f"length({col}) > 0"

    def top_people_sql(self, b: Builder, limit: str = str(TOP)) -> str:
        f = b.q.field
        value = b.value(f)
        where = b.where(b.valid(f), self.nonempty("person_name"))
        # the outer ranges must not steer the plan away from the threshold's range
        outer = b.scan().where(b.scan().valid(f), self.nonempty("person_name"))
        return f"""WITH candidates AS MATERIALIZED (
  SELECT person_name, {value} AS value
  FROM {self.table}
  WHERE {outer}
    AND {value} >= COALESCE((
      SELECT {value} FROM {self.table} WHERE {where}
      ORDER BY {value} DESC LIMIT 1 OFFSET {CANDIDATES - 1}), {{lowest}}))
SELECT person_name, MAX(value) AS value
FROM candidates
GROUP BY person_name
ORDER BY value DESC, person_name
LIMIT {limit}"""

    def within_few(
        self, b: Builder, sql: Callable[[str], str], few: Callable[[str], str], order: str
    ) -> str:
        """A top's statement ``sql(limit)``, or where the window holds few rows, ``few(limit)``:
        the same ranking among the window's rows, as read by their time; ``order`` the
        ranking's."""
        return sql(str(TOP))

    def quartile_picks(self, sep: str) -> str:
        """The two values around each quartile's rank (numpy's linear interpolation), found in
        the running totals ``c(v, upto)`` of ``n`` values."""
        return sep.join(
            f"(SELECT MIN(v) FROM c WHERE upto > {self.floor(f'(n - 1) * {p}')} + {k})"
            f" AS {name}_{'hi' if k else 'lo'}"
            for name, p in (("q1", 0.25), ("median", 0.5), ("q3", 0.75))
            for k in (0, 1)
        )

    def quartiles_sql(self, value: str, where: str) -> str:
        # Count each distinct value once through the index, then find the quartiles' ranks
        # in the running totals: one pass, no sort. The mean sums REALs: SQLite's SUM() of
        # integers fails with "integer overflow" past 64 bits.
        picks = self.quartile_picks(",\n  ")
        return f"""WITH {self.counted_values(value, where)}
SELECT n, min, max, mean,
  {picks}
FROM s"""

    def counted_values(self, value: str, where: str) -> str:
        """CTEs counting each distinct value once: ``g(v, c)``, its running totals ``c(v, upto)``
        and ``s(n, min, max, mean)``."""
        return f"""g AS (
  SELECT {value} AS v, COUNT(*) AS c FROM {self.table} WHERE {where} GROUP BY {value}),
c AS (SELECT v, SUM(c) OVER (ORDER BY v ROWS UNBOUNDED PRECEDING) AS upto FROM g),
s AS (SELECT SUM(c) AS n, MIN(v) AS min, MAX(v) AS max,
  SUM(CAST({{number_v}} AS REAL) * c) / SUM(c) AS mean FROM g)"""

    def counts_values(self, q: Query) -> bool:
        """Whether the distribution and the histogram share one statement (counts_sql): on
        SQLite, one that counts each value of a field of few values once; on PostgreSQL, a time
        field's (whose histogram needs the distribution's range)."""
        return False

    def counted_stats(self) -> str:
        """CTE ``stats``: the distribution's numbers, from ``s`` and the running totals ``c``."""
        picks = self.quartile_picks(",\n    ")
        return f"""stats AS MATERIALIZED (SELECT n, min, max, mean,
    {picks}
  FROM s)"""

    def counted_bins(self, bins: int) -> str:
        """CTE ``bins``: each bin's count, adding up the counts ``g(v, c)`` of its whole-number
        values (bin i holds x where i <= (x - lo) * bins / (hi - lo) < i + 1, as histogram_sql's
        bins do; hi - lo of an INT column can overflow INT: it is taken as BIGINT)."""
        index = f"((CAST(v AS BIGINT) - s.min) * {bins}) / (CAST(s.max AS BIGINT) - s.min)"
        return f"""bins AS MATERIALIZED (
  SELECT CASE WHEN s.max = s.min THEN 0 ELSE {self.least}({index}, {bins - 1}) END AS bin,
    SUM(c) AS count
  FROM g, s
  GROUP BY 1)"""

    def counts_sql(self, value: str, where: str, bins: int) -> str:
        """The distribution's numbers and the histogram's bins of a whole-number field, from one
        count of each distinct value: the quartiles from its running totals, each bin by adding
        up the counts of its values."""
        return f"""WITH {self.counted_values(value, where)},
{self.counted_stats()},
{self.counted_bins(bins)}
SELECT bins.bin, bins.count, stats.min AS lo, stats.max AS hi, stats.*
FROM stats LEFT JOIN bins ON 1 = 1
ORDER BY bins.bin"""

    def timeline_sql(self, b: Builder, value: str | None, chars: str) -> str:
        raise NotImplementedError

    def histogram_by_expression(
        self, num: str, index: str, where: str, bins: int, bounds: str | None = None
    ) -> str:
        """Bins of ``index`` over the rows of ``where``; ``bounds`` is a one-row query of the
        range (lo, hi) of ``num``, by default its least and greatest."""
        bounds = (
            bounds or f"SELECT MIN({num}) AS lo, MAX({num}) AS hi FROM {self.table} WHERE {where}"
        )
        return f"""WITH r AS MATERIALIZED (
  {bounds})
SELECT CASE WHEN r.hi = r.lo THEN 0 ELSE {self.least}({index}, {bins - 1}) END AS bin,
  COUNT(*) AS count, MIN(r.lo) AS lo, MIN(r.hi) AS hi
FROM {self.table}, r
WHERE {where}
GROUP BY 1
ORDER BY 1"""

    def histogram_sql(self, value: str, where: str, bins: int, inner: str) -> str:
        # Whole numbers: bin i holds x where i <= (x - lo) * bins / (hi - lo) < i + 1, exactly.
        # (hi - lo of an INT column can overflow INT: the difference is taken as BIGINT)
        index = f"((CAST({value} AS BIGINT) - r.lo) * {bins}) / (CAST(r.hi AS BIGINT) - r.lo)"
        return self.histogram_by_expression(value, index, where, bins)

    # The summary leaves the timeline's skipped rows to the timeline's own count of the rows it
    # used, and the distinct users to the age groups' count of them (see complete_summary):
    # checking every row's text timestamp is most of a panel's cost here, and counting distinct
    # users another full pass, and those panels make both anyway.
    summary_from_panels = True

    def summary_sql(self, b: Builder) -> str:
        # The rows of the window and, among them, those each panel cannot use: one pass of
        # cheap checks. The rest is left to panels that find it anyway (complete_summary); when
        # the values' pass counts the rows too, all of it is, and this is the data version.
        needs = {k: v for k, v in needs_flags(b).items() if k != "timeline"}
        if self.values_panels(b.q):
            names = ["rows", "users", "newest", "last_5_minutes"]
            names += [f"skipped_{name}" for name in needs]
            told = "/* the timeline, the values pass and the age groups count these */ "
            return "SELECT " + told + ", ".join(f"NULL AS {name}" for name in names)
        # Each check once a row, in a subquery that OFFSET 0 keeps apart: merged into the
        # counts, a check would run once for each count that needs it (a time field's, four
        # times: 1.3 s of a refresh's 6 s at a million rows).
        checks = row_checks(b)
        used = list(dict.fromkeys(name for names in needs.values() for name in names))
        columns = ",\n    ".join(f"{checks[name]} AS {name}" for name in used)
        skipped = skipped_counts(b, needs, ",\n  ", {name: name for name in used})
        return f"""SELECT COUNT(*) AS rows, NULL AS users, NULL AS newest, NULL AS last_5_minutes,
  {skipped}
FROM (
  SELECT {columns}
  FROM {self.table}
  WHERE {b.where()}
  OFFSET 0) AS checked"""

    def age_groups_sql(self, b: Builder, group: str) -> str:
        # A user's birth date is the latest well-formed, past one among their rows.
        bd = self.text("birth_date")
        # Distinct (user, birth date) pairs first: each text is checked once, not once a row.
        return f"""SELECT {group} AS age_group, COUNT(*) AS users
FROM (
  SELECT user_name,
    MAX(CASE WHEN {self.valid_date("birth_date")} AND {bd} <= :today THEN {bd} END) AS bd
  FROM (
    SELECT user_name, birth_date FROM {self.table}
    WHERE {b.where(self.nonempty("user_name"))}
    GROUP BY user_name, birth_date) AS pairs
  GROUP BY user_name) AS users
GROUP BY 1"""


class SQLiteDialect(Dialect):
    name = "sqlite"
    least = "MIN"

    def within_few(
        self, b: Builder, sql: Callable[[str], str], few: Callable[[str], str], order: str
    ) -> str:
        # A top's statement reads the value's index from the best down until it has found
        # enough rows within the window: a few index entries for a window of many rows, every
        # row of the table for a window of none (7 s at a million rows). A window of few rows
        # is ranked among its rows instead, read from the time index; counting up to the
        # limit costs a few milliseconds. (A LIMIT of 0 ends a branch before it reads a row.)
        if b.q.since is None:
            return sql(str(TOP))
        few_limit = f"(SELECT CASE WHEN n <= {FEW_WINDOW_ROWS} THEN {TOP} ELSE 0 END FROM counted)"
        any_limit = f"(SELECT CASE WHEN n > {FEW_WINDOW_ROWS} THEN {TOP} ELSE 0 END FROM counted)"
        return f"""WITH counted AS MATERIALIZED (
  SELECT COUNT(*) AS n FROM (
    SELECT 1 FROM {self.table} WHERE {b.where()} LIMIT {FEW_WINDOW_ROWS + 1}))
SELECT * FROM (
{few(few_limit)})
UNION ALL
SELECT * FROM (
{sql(any_limit)})
ORDER BY {order}"""

    def counts_values(self, q: Query) -> bool:
        # The distribution counts each value through its index anyway; adding up those counts
        # saves the histogram's second reading of the index, one range per bin. Within a
        # window, a number's values are counted among the window's rows, read from the time
        # index (see distribution_sql), a field of many values too: each bin's range of the
        # value's index would read every row's time from the table (2 s at a million rows).
        return q.field in FEW_VALUES or (q.since is not None and not FIELDS[q.field].is_time)

    def counted_bins(self, bins: int) -> str:
        # An INT of SQLite holds 64 bits: (v - lo) * bins can overflow, and SQLite would go
        # on in floating point (a bin of 6.9e-09). Within (2**63 - 1) / bins of each other the
        # plain quotient is exact; further apart, a value's bin is the count of bin starts
        # (bin_start) at or below it.
        fits = (2**63 - 1) // bins - 1
        plain = f"((v - s.min) * {bins}) / (s.max - s.min)"
        start = bin_start("steps.i", "s.min", "s.max", bins)
        return f"""steps(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM steps WHERE i < {bins - 1}),
bins AS MATERIALIZED (
  SELECT CASE WHEN s.max = s.min THEN 0
    WHEN s.max - s.min BETWEEN 1 AND {fits} THEN MIN({plain}, {bins - 1})
    ELSE MIN((SELECT COUNT(*) FROM steps WHERE {start} <= v), {bins - 1}) END AS bin,
    SUM(c) AS count
  FROM g, s
  GROUP BY 1)"""

    def floor(self, expr: str) -> str:
        return f"CAST({expr} AS INTEGER)"

    def valid_number(self, col: str, seek: bool = True) -> str:
        # Text in an INT column sorts after every number in SQLite; a range keeps it out
        # and still lets the column's index answer.
        c = self.ranged(col, seek)
        return f"({c} >= -9223372036854775807 AND {c} <= 9223372036854775807)"

    def ranged(self, col: str, seek: bool) -> str:
        # unary plus: the same comparison, but not one SQLite may answer from an index
        return col if seek else f"+{col}"

    def valid_timestamp(self, col: str) -> str:
        d = "[0-9]"
        return (
            f"({col} GLOB '{d * 4}-[01]{d}-[0-3]{d} [0-2]{d}:[0-5]{d}:[0-5]{d}*'"
            f" AND substr({col}, 6, 2) BETWEEN '01' AND '12'"
            f" AND substr({col}, 9, 2) BETWEEN '01' AND '31'"
            f" AND substr({col}, 12, 2) <= '23'"
            f" AND (length({col}) = 19 OR (length({col}) BETWEEN 21 AND 26"
            f" AND substr({col}, 20, 1) = '.' AND substr({col}, 21) NOT GLOB '*[^0-9]*'))"
            f" AND {col} NOT GLOB '0000*' AND {self.real_day(col)})"
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

    def micros(self, col: str) -> str:
        days = f"CAST(julianday(substr({col}, 1, 10)) - 2440587.5 AS INTEGER)"
        clock = " + ".join(
            f"CAST(substr({col}, {start}, 2) AS INTEGER) * {unit}"
            for start, unit in ((12, 3600), (15, 60), (18, 1))
        )
        fraction = f"CAST(substr(substr({col}, 21) || '000000', 1, 6) AS INTEGER)"
        return f"(({days} * 86400 + {clock}) * 1000000 + {fraction})"

    def time_quartiles_sql(self, value: str, where: str) -> str:
        # The time index holds the valid times in order: the values at each quartile's two
        # ranks are found by an OFFSET along it, not by counting each distinct time (a
        # million groups); only the mean reads every row's seconds.
        def at(rank: str) -> str:
            return (
                f"(SELECT {value} FROM {self.table} WHERE {where}"
                f" ORDER BY {value} LIMIT 1 OFFSET {rank})"
            )

        picks = ",\n  ".join(
            f"{at(f'(SELECT CAST((n - 1) * {p} AS INTEGER) + {k} FROM s)')}"
            f" AS {name}_{'hi' if k else 'lo'}"
            for name, p in (("q1", 0.25), ("median", 0.5), ("q3", 0.75))
            for k in (0, 1)
        )
        return f"""WITH s AS MATERIALIZED (
  SELECT COUNT(*) AS n, MIN({value}) AS min, MAX({value}) AS max, AVG({{number}}) AS mean
  FROM {self.table} WHERE {where})
SELECT n, min, max, mean,
  {picks}
FROM s"""

    def time_histogram_sql(self, value: str, where: str, bins: int) -> str:
        # Each bin is a range of the time index, counted there: bin i starts at the first
        # microsecond s with (s - lo) * bins >= i * (hi - lo) (bin_start, on exact INTs of
        # microseconds), written as its shortest text (no trailing zeros in the fraction, no
        # fraction for a whole second), which every text of a time at or after it sorts at or
        # after, and every text of an earlier time before. No row's seconds are computed.
        # (The range first: after the partial index's own terms, SQLite checks each row's
        # time in full, 15 times the cost.)
        us = f"{bin_start('steps.i', 'r.lo_us', 'r.hi_us', bins)}"
        frac = "(((s % 1000000) + 1000000) % 1000000)"
        text = (
            f"rtrim(rtrim(strftime('%Y-%m-%d %H:%M:%S', (s - {frac}) / 1000000, 'unixepoch')"
            f" || '.' || substr('000000' || {frac}, -6), '0'), '.')"
        )
        # (after the greatest text, '~': above every digit)
        return f"""WITH RECURSIVE ends AS MATERIALIZED (
  SELECT (SELECT MIN({value}) FROM {self.table} WHERE {where}) AS min,
    (SELECT MAX({value}) FROM {self.table} WHERE {where}) AS max),
r AS MATERIALIZED (
  SELECT min, max, {self.seconds("min")} AS lo, {self.seconds("max")} AS hi,
    {self.micros("min")} AS lo_us, {self.micros("max")} AS hi_us
  FROM ends),
steps(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM steps WHERE i < {bins - 1}),
cuts(i, at) AS MATERIALIZED (
  SELECT 0, min FROM r
  UNION ALL
  SELECT i, {text} FROM (SELECT steps.i AS i, {us} AS s FROM steps, r WHERE {bins} > 1)
  UNION ALL
  SELECT {bins}, max || '~' FROM r),
edges AS MATERIALIZED (
  SELECT i AS bin, at AS start, LEAD(at) OVER (ORDER BY i) AS next FROM cuts)
SELECT bin, (SELECT COUNT(*) FROM {self.table} WHERE {value} >= start AND {value} < next
    AND {where}) AS count,
  r.lo AS lo, r.hi AS hi
FROM edges, r
WHERE r.hi > r.lo AND bin < {bins}
UNION ALL
SELECT 0, (SELECT COUNT(*) FROM {self.table} WHERE {where}), lo, hi FROM r WHERE hi = lo
ORDER BY 1"""

    def store_indexes(self) -> list[str]:
        """Indexes of the embedded store, shaped after the panels' predicates.

        The partial index holds only rows with a well-formed accessed_at, so a query with the
        same predicate reads it without checking each row again.
        """
        t = self.source.table
        prefix = f"{t.schema}." if t.schema else ""
        fields = "session_duration, download_speed, upload_speed, consumed_traffic"
        specs = [
            ("ix_time", f"accessed_at, {fields}", self.valid_timestamp("accessed_at")),
            ("ix_numbers", fields, None),
            ("ix_person", "person_name", None),
            ("ix_user", "user_name", None),
            ("ix_user_birth", "user_name, birth_date", self.valid_date("birth_date")),
        ] + [
            (f"ix_{name}", f"{name}, person_name", None)
            for name in ("session_duration", "download_speed", "upload_speed", "consumed_traffic")
        ]
        return [
            f"CREATE INDEX IF NOT EXISTS {prefix}{t.name}_{name} ON {t.name} ({cols})"
            + (f" WHERE {cond}" if cond else "")
            for name, cols, cond in specs
        ]

    def timeline_sql(self, b: Builder, value: str | None, chars: str) -> str:
        # One index range per bucket: SQLite walks the time index in order and never sorts.
        at = "accessed_at"
        steps = " ".join(f"WHEN {length} THEN {width}" for length, width in BUCKET_STEPS[:-2])
        values = "" if value is None else f", MIN({value}), AVG({value}), MAX({value})"
        scan = b.scan()
        span_where = b.where(b.valid(at), *([scan.valid(value)] if value else []))
        # Within [lo, hi] every row meets the window and the time limit already.
        inner = " AND ".join([self.valid_timestamp(at)] + ([scan.valid(value)] if value else []))
        # ORDER BY ... LIMIT 1 stops at the first row that qualifies; MIN() with a condition
        # the index cannot answer would read the whole index.
        return f"""WITH RECURSIVE span AS (
  SELECT lo, hi, {self.seconds("hi")} - {self.seconds("lo")} AS seconds
  FROM (SELECT
    (SELECT {at} FROM {self.table} WHERE {span_where} ORDER BY {at} LIMIT 1) AS lo,
    (SELECT {at} FROM {self.table} WHERE {span_where} ORDER BY {at} DESC LIMIT 1) AS hi
  ) AS bounds),
width AS MATERIALIZED (SELECT lo, hi, {chars} AS chars FROM span),
step AS MATERIALIZED (SELECT chars, seconds,
  CASE
    WHEN chars = 7 THEN strftime('%Y-%m-01 00:00:00', lo)
    WHEN chars = 4 THEN strftime('%Y-01-01 00:00:00', lo)
    ELSE strftime('%Y-%m-%d %H:%M:%S', whole - ((whole % seconds) + seconds) % seconds,
      'unixepoch') END AS first, hi
  -- (whole: the second of lo, rounded down also before 1970, where CAST rounds up; the
  -- bucket's start rounded down the same way)
  FROM (SELECT chars, CASE chars {steps} END AS seconds, lo, hi,
      CAST(s AS INTEGER) - (s < CAST(s AS INTEGER)) AS whole
    FROM (SELECT chars, lo, hi, {self.seconds("lo")} AS s FROM width WHERE lo IS NOT NULL))),
buckets(start, stop) AS (
  SELECT first, CASE
    WHEN chars = 7 THEN datetime(first, '+1 month')
    WHEN chars = 4 THEN datetime(first, '+1 year')
    ELSE datetime(first, '+' || seconds || ' seconds') END FROM step
  UNION ALL
  SELECT stop, CASE
    WHEN chars = 7 THEN datetime(stop, '+1 month')
    WHEN chars = 4 THEN datetime(stop, '+1 year')
    ELSE datetime(stop, '+' || seconds || ' seconds') END
  FROM buckets, step WHERE stop <= step.hi)
SELECT substr(start, 1, (SELECT chars FROM width)) AS bucket, stats
FROM (SELECT start, (SELECT json_array(COUNT(*){values}) FROM {self.table}
        WHERE accessed_at >= MAX(start, w.lo) AND accessed_at < MIN(stop, w.hi || char(1))
          AND {inner}) AS stats
      FROM buckets, width AS w)
ORDER BY 1"""

    def histogram_sql(self, value: str, where: str, bins: int, inner: str) -> str:
        # Bin i holds the whole numbers from lo + ceil(i * (hi - lo) / bins) on: one index range
        # count per bin instead of sorting every row.
        # (SQLite answers MIN() or MAX() from an index alone, not both in one query.)
        # Each bin's last number is the next one's start less one (bin_start: exact where
        # hi - lo overflows a 64-bit INT), the last bin's hi.
        first_last = "hi" if bins == 1 else f"{bin_start('1', 'lo', 'hi', bins)} - 1"
        return f"""WITH RECURSIVE r AS MATERIALIZED (
  SELECT (SELECT MIN({value}) FROM {self.table} WHERE {where}) AS lo,
    (SELECT MAX({value}) FROM {self.table} WHERE {where}) AS hi),
edges(bin, start, last) AS (
  SELECT 0, lo, {first_last} FROM r WHERE hi > lo
  UNION ALL
  SELECT bin + 1, last + 1,
    CASE WHEN bin + 2 = {bins} THEN hi ELSE {bin_start("(bin + 2)", "lo", "hi", bins)} - 1 END
  FROM edges, r WHERE bin + 1 < {bins})
SELECT bin, (SELECT COUNT(*) FROM {self.table} WHERE {inner} AND {value} >= start
    AND {value} <= last) AS count,
  r.lo AS lo, r.hi AS hi
FROM edges, r
UNION ALL
SELECT 0, (SELECT COUNT(*) FROM {self.table} WHERE {where}), lo, hi FROM r WHERE hi = lo
ORDER BY 1"""

    def age_groups_sql(self, b: Builder, group: str) -> str:
        # Users with a well-formed birth date come from the partial index that holds only
        # those; the rest are counted, not read, as unknown.
        user = self.nonempty("user_name")
        valid = self.valid_date("birth_date")
        # DISTINCT on the index's leading columns lets SQLite skip from pair to pair.
        return f"""WITH pairs AS MATERIALIZED (
  SELECT DISTINCT user_name, birth_date FROM {self.table} WHERE {b.where(valid)}),
known AS (
  SELECT user_name, MAX(birth_date) AS bd FROM pairs
  WHERE {user} AND birth_date <= :today
  GROUP BY user_name)
SELECT {group} AS age_group, COUNT(*) AS users FROM known GROUP BY 1
UNION ALL
SELECT '{UNKNOWN_AGE}', (SELECT COUNT(DISTINCT user_name) FROM {self.table}
  WHERE {b.where("user_name > ''")}) - (SELECT COUNT(*) FROM known)"""

    def summary_sql(self, b: Builder) -> str:
        # Bad values are rare: count them through index seeks (NULLs sort first and text
        # after every number), and count the good timestamps from the partial index.
        at = self.text("accessed_at")
        ok_at = b.valid("accessed_at")
        f, v = b.q.field, b.q.versus
        scan = b.scan()

        def bad(name: str) -> str:
            if FIELDS[name].is_time:
                return f"NOT ({scan.valid(name)})"
            return (
                f"({name} IS NULL OR {name} < -9223372036854775807 OR {name} > 9223372036854775807)"
            )

        def count(*terms: str) -> str:
            return f"(SELECT COUNT(*) FROM {self.table} WHERE {b.where(*terms)})"

        def count_few(seek: str, *terms: str) -> str:
            """Count rows found by an index seek on a rare condition, checking the rest."""
            found = f"rowid IN (SELECT rowid FROM {self.table} WHERE {seek})"
            return count(found, *terms)

        person = "(person_name IS NULL OR person_name = '')"
        user = "(user_name IS NULL OR user_name = '')"
        bad_at = f"(rows - {count(ok_at)})"
        if FIELDS[f].is_time:
            skipped = {
                "top_traffic": f"{bad_at} + {count(scan.valid(f), bad(v))}",
                "top_people": f"{bad_at} + {count(scan.valid(f), person)}",
                "timeline": bad_at,
                "distribution": bad_at,
                "histogram": bad_at,
            }
        else:
            # A good timestamp checked row by row (+ keeps the partial index out), for the
            # few rows an index seek on a bad number finds.
            at_checked = f"({self.valid_timestamp('+accessed_at')} AND +accessed_at <= :now)"
            # The timeline's skipped rows are those of the window it did not count: counting
            # the good timestamps here would read the time index a second time.
            skipped = {
                "top_traffic": f"{count(bad(f))} + {count_few(bad(v), scan.valid(f))}"
                if not FIELDS[v].is_time
                else f"{bad_at} + {count_few(bad(f), at_checked)}",
                "top_people": count(f"({bad(f)} OR {person})"),
                "timeline": "NULL",
                "distribution": count(bad(f)),
                "histogram": count(bad(f)),
            }
        skipped["age_groups"] = count(user)
        columns = ",\n  ".join(f"{sql} AS skipped_{name}" for name, sql in skipped.items())
        # A count with no condition at all is SQLite's quick count of the smallest index's pages.
        rows = f"SELECT COUNT(*) AS rows FROM {self.table}"
        if b.window():
            rows += f" WHERE {b.where()}"
        # The distinct users are those of the age groups (see complete_summary).
        return f"""SELECT rows, NULL AS users,
  (SELECT MAX({at}) FROM {self.table} WHERE {b.where(ok_at)}) AS newest,
  (SELECT COUNT(*) FROM {self.table} WHERE {ok_at} AND {at} >= :recent) AS last_5_minutes,
  {columns}
FROM ({rows}) AS w"""


class PostgresDialect(Dialect):
    name = "postgresql"

    def text(self, col: str) -> str:
        return f'{col} COLLATE "C"'

    def valid_timestamp(self, col: str) -> str:
        # Exactly YYYY-MM-DD HH:MM:SS[.f{1,6}], a real day, checked on the text's bytes (see
        # clock_from): the shape fixes the separators, and each part is looked up in the list
        # of its values (month and day together, 365 of them), which also says it is digits.
        # A full regular expression costs about 2 s per million rows here; these 0.3 s.
        data = f"textsend({col})"
        return (
            f"({col} LIKE '____-__-__ __:__:__%' AND {col} NOT LIKE '0000%'"
            f" AND octet_length(rtrim(substr({data}, 1, 4), {DIGIT_BYTES})) = 0"
            f" AND (substr({data}, 6, 5) IN ({byte_list(MONTH_DAYS)})"
            f" OR (substr({col}, 6, 5) = '02-29' AND {self.real_day(col)}))"
            f" AND substr({data}, 12, 2) IN ({two_bytes(24)})"
            f" AND {self.clock_from(col, KEY_HOUR + 1)})"
        )

    def few_valid_timestamp(self, col: str) -> str:
        """valid_timestamp's test for statements that apply it to a few rows (a sample, the rows
        of two groups): a regular expression, about ten times the cost a row of those lookups,
        but 100 characters of SQL where they take 130,000, which PostgreSQL parses and plans
        at each refresh."""
        col = self.text(col)
        clock = "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
        day = "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
        return (
            f"({col} ~ '^{day} {clock}(\\.[0-9]{{1,6}})?$' AND {col} NOT LIKE '0000%'"
            f" AND {self.real_day(col)})"
        )

    def clock_from(self, col: str, start: int) -> str:
        """A timestamp's bytes from ``start`` on (14: after the hour, 17: after the minute, 20:
        after the second) end it rightly: the clock's rest, each part two digits below 60, then
        nothing, or a point and one to six digits.

        One lookup a row: the rest of the clock is looked up among its values, and with a
        fraction, what is left of the text once rtrim() has stripped its trailing digits is
        (a point must then follow the seconds, and a junk byte among the digits stays in what
        is looked up). Lengths and positions are in bytes, which PostgreSQL keeps (length()
        and substr() count characters, reading the text from its start): a byte of a character
        of more than one byte is no digit, and the lookups refuse it. textsend() gives the
        text's bytes."""
        data = f"textsend({col})"
        count = (KEY_SECOND + 1 - start) // 3
        whole = f"substr({data}, {start}) = ANY ({bytea_array(clock_rests(count))})"
        point = (
            f"substr(rtrim({data}, {DIGIT_BYTES}), {start})"
            f" = ANY ({bytea_array(clock_rests(count, '.'))})"
        )
        return (
            f"CASE octet_length({col}) WHEN 19 THEN {whole if count else 'TRUE'}"
            f"\n      ELSE octet_length({col}) BETWEEN 21 AND 26 AND {point} END"
        )

    def nonempty(self, col: str) -> str:
        # (not length(): the planner estimates this from the column's statistics)
        return f"{col} <> ''"

    def prefix(self, col: str, length: str) -> str:
        # A cast to varchar(n) cuts the text as substr does, at half the cost per row.
        return f"({col})::varchar({length})"

    def unestimated(self, columns: list[str]) -> str:
        """The table's ``columns`` as a union with an empty branch, which the planner drops.

        Grouped by a part of a column's text, the table is taken to have as many groups as the
        column has values (a million timestamps, for some forty thousand minutes): the planner
        then sorts every row, spilling to disk, instead of hashing. A column of a union has no
        statistics, so the planner assumes a modest count of groups and each worker hashes its
        share of the rows (a quarter faster here). Only the plan changes, never the result."""
        picked = ", ".join(columns)
        return (
            f"(SELECT {picked} FROM {self.table}"
            f" UNION ALL SELECT {picked} FROM {self.table} WHERE FALSE) AS sessions"
        )

    def valid_date(self, col: str) -> str:
        return (
            f"({col} LIKE '____-__-__' AND translate({col}, '0123456789', '') = '--'"
            f" AND substr({col}, 6, 2) BETWEEN '01' AND '12'"
            f" AND substr({col}, 9, 2) BETWEEN '01' AND '31')"
        )

    def seconds(self, col: str) -> str:
        # make_date on the first of the month never fails for a checked month; days past the
        # month's end roll over, as they do on SQLite.
        return (
            f"((make_date(substr({col}, 1, 4)::int, substr({col}, 6, 2)::int, 1)"
            f" - DATE '1970-01-01' + substr({col}, 9, 2)::int - 1) * 86400.0"
            f" + substr({col}, 12, 2)::int * 3600 + substr({col}, 15, 2)::int * 60"
            f" + substr({col}, 18)::numeric)"
        )

    def row_seconds(self, col: str) -> str:
        # The text read as a timestamp (a C parser): 0.6 s per million rows where seconds()'
        # substr() and numeric arithmetic take 1.2 s. Never of an invalid text: the cast would
        # fail the statement.
        return f"EXTRACT(EPOCH FROM ({col})::timestamp)"

    def micros(self, col: str) -> str:
        return f"(EXTRACT(EPOCH FROM ({col})::timestamp) * 1000000)::bigint"

    def counts_values(self, q: Query) -> bool:
        # A time field: the distribution's pass finds the histogram's range too.
        return FIELDS[q.field].is_time

    def counts_sql(self, value: str, where: str, bins: int) -> str:
        # The distribution's numbers in one pass, then the bins in a second (the quartiles
        # sort every row by its seconds: there is no values' pass for a field of many values).
        return f"""WITH stats AS MATERIALIZED (
  SELECT COUNT(*) AS n, MIN({value}) AS min, MAX({value}) AS max, AVG({{number}}) AS mean,
    percentile_cont(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY {{number}}) AS quartiles
  FROM {self.table}
  WHERE {where}),
{self._time_bins(value, where, bins, "stats")}
SELECT bins.bin, bins.count, r.lo, r.hi, stats.*
FROM stats CROSS JOIN r LEFT JOIN bins ON TRUE
ORDER BY bins.bin"""

    def _time_bins(self, value: str, where: str, bins: int, ends: str) -> str:
        """CTEs ending in ``bins(bin, count)``: the histogram of a time field, ``value`` its
        text as compared, between the least and greatest texts of ``ends(min, max)``, with
        ``r(lo, hi)`` their seconds."""

        # A row's bin is the count of bins' starts at or before its time, found by comparing
        # its text with the starts' texts (width_bucket, a binary search): no row's seconds.
        # Bin i starts at the first microsecond s with (s - lo) * bins >= i * (hi - lo), so a
        # row is in the bin floor((s - lo) * bins / (hi - lo)) says, exactly. A start's text is
        # its shortest (no trailing zeros in the fraction, no fraction for a whole second):
        # every text of a time at or after it compares at or after it, every text of an
        # earlier time before it.
        day = 86_400_000_000
        start = f"r.lo_us + div(i * (r.hi_us - r.lo_us)::numeric + {bins - 1}, {bins})::bigint"
        # (days and microseconds apart: a product of an interval is taken in floating point)
        time = (
            f"TIMESTAMP '1970-01-01' + (s - m) / {day} * INTERVAL '1 day'"
            " + m * INTERVAL '1 microsecond'"
        )
        text = f"regexp_replace(to_char({time}, 'YYYY-MM-DD HH24:MI:SS.US'), '\\.?0+$', '')"
        return f"""r AS MATERIALIZED (
  SELECT {self.seconds("min")} AS lo, {self.seconds("max")} AS hi,
    {self.micros("min")} AS lo_us, {self.micros("max")} AS hi_us
  FROM {ends}),
starts AS MATERIALIZED (
  SELECT ARRAY(
    SELECT {text} FROM (
      SELECT i, s, mod(mod(s, {day}) + {day}, {day}) AS m FROM (
        SELECT i, {start} AS s FROM r, generate_series(1, {bins - 1}) AS steps (i)) AS at) AS parts
    ORDER BY i) AS texts),
bins AS (
  SELECT CASE WHEN r.hi = r.lo THEN 0 ELSE width_bucket({value}, starts.texts) END AS bin,
    COUNT(*) AS count
  FROM {self.table}, r, starts
  WHERE {where}
  GROUP BY 1)"""

    def timeline_sql(self, b: Builder, value: str | None, chars: str) -> str:
        # Rows are grouped by their text up to the hour, the minute or the second, with only
        # the checks the group's key cannot make; each key, a few thousand at most, is then
        # checked in full, once. Checking each row's text in full costs three times the rest of
        # the panel. The span, from the first and last valid groups' keys (see _width), picks
        # the bucket width; the groups add up into buckets of it.
        # Without a short window, a sample of the table's pages tells whether the span is long
        # enough for buckets of an hour or more: its rows are some of the panel's, so their span
        # is never longer than the panel's, and then one pass by the hour does (a third of the
        # cost of one by the minute, whose groups are sixty times as many). Otherwise the pass
        # is by the minute, and buckets finer than a minute (a span of hours) come from a
        # second pass by the second, made only then.
        # The same pass finds the summary's newest row and its rows of the last five minutes
        # (see complete_summary): a last row, of no bucket, holds them.
        at = self.text("accessed_at")
        span = WINDOWS[b.q.window]
        if span is not None and span <= SECOND_KEYS_WITHIN:
            gates = {KEY_SECOND: ""}
            first = f"SELECT * FROM g{KEY_SECOND}"
        else:
            # (should the hint be wrong, the minute's pass runs after the hour's: the width from
            # the hour's groups, right whatever the hint, then asks for it)
            gates = {
                KEY_HOUR: "(SELECT hourly FROM hint)",
                KEY_MINUTE: f"(NOT (SELECT hourly FROM hint) OR (SELECT chars FROM hour_width)"
                f" > {KEY_HOUR})",
                KEY_SECOND: f"(SELECT chars FROM width) > {KEY_MINUTE}",
            }
            first = (
                f"SELECT * FROM g{KEY_HOUR}"
                f" UNION ALL SELECT * FROM g{KEY_MINUTE} WHERE NOT (SELECT hourly FROM hint)"
            )
        # Each group keeps only its newest row (the summary's): the span comes from the keys
        # (see _width), where a first and a last row with a value per group cost a tenth more.
        if value is None:
            vals = (
                "COUNT(*) AS n, NULL::bigint AS lo_v, NULL::numeric AS sum_v, NULL::bigint AS hi_v"
            )
        else:
            vals = (
                f"COUNT({value}) AS n, MIN({value}) AS lo_v, SUM({value}) AS sum_v,"
                f" MAX({value}) AS hi_v"
            )
        ends = f"MAX({at}) AS newest"
        widths = self._width(b, value, "", "firsts", chars, exact=True)
        width = f"firsts AS MATERIALIZED ({first}),\n{widths}"
        ctes = []
        if KEY_HOUR in gates:
            ctes.append(f"hint AS MATERIALIZED (\n  {self.hourly_sql(b, value, chars)})")
        for key, gate in gates.items():
            if key == KEY_SECOND and len(gates) > 1:
                ctes.append(width)  # which the second's pass asks for
            # (a CTE of its own: a condition on a grouped key would be checked on every row)
            ctes.append(
                f"""m{key} AS MATERIALIZED (
  SELECT {self.prefix(at, str(key))} AS key, {vals},
    {ends}, COUNT(*) FILTER (WHERE {at} >= :recent) AS recent
  FROM {self.unestimated(["accessed_at", *([value] if value else [])])}
  WHERE {gate + chr(10) + "    AND " if gate else ""}{self._row_terms(b, key)}
  GROUP BY 1),
d{key} AS MATERIALIZED (SELECT DISTINCT substr(key, 1, 10) AS day FROM m{key}),
g{key} AS MATERIALIZED (SELECT * FROM m{key} WHERE {self.valid_key(key, f"d{key}")})"""
            )
            if key == KEY_HOUR:
                # (only whether a pass by the minute is needed: when unsure, it is)
                ctes.append(self._width(b, value, "hour_", f"g{KEY_HOUR}", chars, exact=False))
        if len(gates) == 1:
            ctes.append(width)
        levels = list(gates)
        # The buckets come from one pass's groups: the coarsest that ran and is fine enough.
        # (The minute's pass may run after the hour's though the hour's groups do: see
        # hour_width.)
        hourly = f"(SELECT chars FROM width) <= {KEY_HOUR} AND (SELECT hourly FROM hint)"

        def chosen(key: int) -> str:
            """Where the buckets come from the pass by ``key``: its keys are fine enough and the
            hour's groups, where they ran, are not (the last pass runs only when needed)."""
            if key == levels[-1]:
                return ""
            unless = f" AND NOT ({hourly})" if key == KEY_MINUTE and KEY_HOUR in levels else ""
            return f" WHERE (SELECT chars FROM width) <= {key}{unless}"

        groups = "\n  UNION ALL ".join(f"SELECT * FROM g{key}{chosen(key)}" for key in levels)
        with_ = ",\n".join(ctes)
        return f"""WITH {with_}
SELECT * FROM (
  SELECT substr(key, 1, (SELECT chars FROM width)) AS bucket, SUM(n)::bigint AS sessions,
    MIN(lo_v)::bigint AS min, SUM(sum_v) / SUM(n) AS mean, MAX(hi_v)::bigint AS max,
    NULL::text AS newest, NULL::bigint AS last_5_minutes
  FROM ({groups}) AS groups
  GROUP BY 1
  HAVING SUM(n) > 0
  ORDER BY 1) AS buckets
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, MAX(newest), SUM(recent)::bigint
FROM firsts"""

    def _few_used(self, b: Builder, value: str | None) -> str:
        """Builder.where() of the rows the timeline uses, with the time's test for few rows."""
        few = b.few()
        return few.where(few.valid("accessed_at"), *([b.valid(value)] if value else []))

    def _width(
        self, b: Builder, value: str | None, prefix: str, groups: str, chars: str, exact: bool
    ) -> str:
        """CTEs ending in ``{prefix}width``: the bucket width of the span from the first to the
        last row with a value among the timeline's ``groups`` (of keys of one length).

        The first and the last group with a value hold those rows: the span is within one
        key's length of time (an hour, a minute, a second) of the span between those keys.
        The width at both ends of that range is almost always the same, and then it is the
        width. Where a step between widths lies in the range (a span within an hour of about
        6.9 or 41.6 days, or within a minute of 16.6 minutes or 2.8 hours), it is the finer
        of the two unless ``exact``; if ``exact``, one more pass finds the two rows among the
        rows of those two groups (checked in full only when of one of them)."""
        at = self.text("accessed_at")
        full = "0000-00-00 00:00:00"

        def seconds(key: str) -> str:
            return self.seconds(f"({key} || substr('{full}', length({key}) + 1))")

        def width_of(span: str) -> str:
            return f"(SELECT {chars} FROM (SELECT {span} AS seconds) AS span)"

        ctes = f"""{prefix}bounds AS MATERIALIZED (
  SELECT MIN(key) AS lo, MAX(key) AS hi FROM {groups} WHERE n > 0),
{prefix}keys AS MATERIALIZED (
  SELECT lo, hi, {seconds("hi")} - {seconds("lo")} AS seconds,
    CASE length(hi) WHEN {KEY_HOUR} THEN 3600 WHEN {KEY_MINUTE} THEN 60 ELSE 1 END AS unit
  FROM {prefix}bounds),
{prefix}range AS MATERIALIZED (
  SELECT lo, hi, {width_of("seconds - unit")} AS fine, {width_of("seconds + unit")} AS coarse
  FROM {prefix}keys),
"""
        if not exact:
            return f"{ctes}{prefix}width AS MATERIALIZED (SELECT fine AS chars FROM {prefix}range)"
        # (CASE: the prefix first, so that the full test reads only the two groups' rows)
        ends = f"(SELECT {self.seconds('hi')} - {self.seconds('lo')} FROM {prefix}ends)"
        return f"""{ctes}{prefix}ends AS MATERIALIZED (
  SELECT MIN({at}) AS lo, MAX({at}) AS hi
  FROM {self.table}, {prefix}range AS k
  WHERE k.fine <> k.coarse
    AND CASE WHEN left({at}, length(k.lo)) IN (k.lo, k.hi)
      THEN {self._few_used(b, value)} ELSE FALSE END),
{prefix}width AS MATERIALIZED (
  SELECT CASE WHEN fine = coarse THEN fine ELSE {width_of(ends)} END AS chars
  FROM {prefix}range)"""

    def sample(self) -> str:
        """The table's sampled pages: SAMPLE_PERCENT of them, the same each time."""
        return f"{self.table} TABLESAMPLE SYSTEM ({SAMPLE_PERCENT}) REPEATABLE (0)"

    def hourly_sql(self, b: Builder, value: str | None, chars: str) -> str:
        """Whether the rows of a sample of the table's pages (SAMPLE_PERCENT of them, the same
        each time) that the timeline would use span enough for buckets of an hour or more. The
        timeline's span is never shorter than theirs, so its buckets are then an hour or more
        too. A sample that cannot tell (too few pages, or a shorter span) leaves the pass by the
        minute."""
        at = self.text("accessed_at")
        used = self._few_used(b, value)
        # (no row: no span, and no hint)
        return f"""SELECT seconds IS NOT NULL AND ({chars}) <= {KEY_HOUR} AS hourly
  FROM (SELECT {self.seconds("hi")} - {self.seconds("lo")} AS seconds
    FROM (SELECT MIN({at}) AS lo, MAX({at}) AS hi FROM {self.sample()}
      WHERE {used}) AS ends) AS span"""

    def _row_terms(self, b: Builder, key: int) -> str:
        """What a row's time must pass besides its key's check (see valid_key): the clock after
        the key and the fraction (clock_from), the window and the present. A key that passes
        its check is ASCII, one byte a character."""
        text = self.text("accessed_at")
        terms = [f"{text} >= :since"] if b.q.since is not None else []
        terms.append(f"{text} <= :now")
        terms.append(self.clock_from("accessed_at", key + 1))
        return "\n      AND ".join(terms)

    def valid_key(self, key: int, days: str) -> str:
        """A timeline group's key, the first ``key`` characters of a row's text, is the start
        of a real time: its separators are in place, its day is one of the groups' distinct
        ``days`` that is real (a few, checked in full), and its clock's parts are two digits in
        range. Such a key is all ASCII."""
        parts = [(12, 24), (15, 60), (18, 60)][: (key - 10) // 3]
        clock = " AND ".join(
            f"substr(key, {start}, 2) IN ({two_digits(count)})" for start, count in parts
        )
        shape = "____-__-__ __:__:__"[:key]
        # (IS TRUE keeps the days a hashed list: taking the groups to be few, the planner would
        # otherwise join them to the days in a loop over every day for every group)
        return f"""key LIKE '{shape}' AND (substr(key, 1, 10) IN (SELECT day FROM {days}
    WHERE {self.valid_date("day")} AND day NOT LIKE '0000%' AND {self.real_day("day")})) IS TRUE
  AND {clock}"""

    ranks_everyone = True
    fuses_people = True

    def people_sql(self, b: Builder, group: str) -> str:
        # One hashed pass by user for the age groups, and by (user, person) when the top people
        # come from it too (a field whose values' pass does not find them): a user is one
        # person, so there are about as many pairs as users, and each panel adds its pairs up.
        # A person's value is their best; a user's birth date the latest well-formed, past one
        # among their rows. The pass groups by birth date too, so that each distinct date is
        # checked in full once, not once a row: a user has one birth date (or a few, with junk),
        # so the groups stay about as many as users. At 1,000,000 rows here this pass takes
        # 0.41 s where a latest date of the right shape per user, each row shape-tested, took
        # 0.49 s.
        f = b.q.field
        bd = self.text("birth_date")
        user = self.nonempty("user_name")
        ranks = not self.values_panels(b.q)
        keys = ["user_name", "person_name"] if ranks else ["user_name"]
        columns = [*keys, "birth_date", *([f] if ranks else [])]
        if b.q.since is not None:
            columns.append("accessed_at")
        usable = f"{b.valid(f)} AND {self.nonempty('person_name')}"
        best = f"\n    MAX({b.value(f)}) FILTER (WHERE {usable}) AS best," if ranks else ""
        top = (
            f"""best AS MATERIALIZED (
  SELECT person_name, MAX(best) AS value FROM pairs WHERE best IS NOT NULL
  GROUP BY person_name
  ORDER BY value DESC, {self.text("person_name")}
  LIMIT {TOP}),
"""
            if ranks
            else ""
        )
        people = (
            """  SELECT 'top_people' AS panel, person_name, value, NULL AS age_group,
    NULL::bigint AS users
  FROM best
  UNION ALL
"""
            if ranks
            else ""
        )
        return f"""WITH pairs AS MATERIALIZED (
  SELECT {", ".join(keys)},{best} birth_date
  FROM {self.unestimated(list(dict.fromkeys(columns)))}
  WHERE {b.where()}
  GROUP BY {", ".join(keys)}, birth_date),
{top}users AS MATERIALIZED (
  SELECT MAX(CASE WHEN {self.valid_date("birth_date")} AND {bd} <= :today THEN {bd} END) AS bd
  FROM pairs WHERE {user}
  GROUP BY user_name)
SELECT * FROM (
{people}  SELECT 'age_groups' AS panel, NULL AS person_name, NULL AS value, {group} AS age_group,
    COUNT(*) AS users
  FROM users
  GROUP BY 4) AS parts
ORDER BY panel DESC, value DESC, {self.text("person_name")}"""

    def quartiles_sql(self, value: str, where: str) -> str:
        return f"""SELECT COUNT(*) AS n, MIN({value}) AS min, MAX({value}) AS max,
  AVG({{number}}) AS mean,
  percentile_cont(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY {{number}}) AS quartiles
FROM {self.table} WHERE {where}"""

    def values_panels(self, q: Query) -> bool:
        return q.field in FEW_VALUES

    def values_sql(self, b: Builder) -> str:
        # A field of few distinct values: one hashed pass counts each value (and the rows the
        # other panels cannot use); the quartiles come from the running totals of those counts
        # and the bins from adding them up, where exact percentiles would sort every row.
        # The same pass finds the top sessions and the top people (see the CTEs of cuts): a
        # column ``panel`` tells whose each row is.
        f = b.q.field
        others = COUNTED_BY_VALUES
        needs = needs_flags(b)
        skips = skipped_counts(b, {name: needs[name] for name in others}, ",\n    ")
        totals = ", ".join(f"SUM(skipped_{name}) AS skipped_{name}" for name in others)
        columns = [
            "bins.bin",
            "bins.count",
            "stats.min AS lo",
            "stats.max AS hi",
            *(f"stats.{name}" for name in ("n", "min", "max", "mean")),
            *(f"stats.{k}_{end}" for k in ("q1", "median", "q3") for end in ("lo", "hi")),
            "totals.rows",
            "totals.skipped_values",
            *(f"totals.skipped_{name}" for name in others),
        ]
        blank = ", ".join(["NULL"] * len(columns))
        read = [f, b.q.versus, "person_name", "user_name"]
        if b.q.since is not None:
            read.append("accessed_at")
        top, person = self.cut_rows(b)
        return f"""WITH {self.cuts_sql(b)},
counted AS MATERIALIZED (
  SELECT {f} AS v, COUNT(*) AS c,
    array_agg({b.value(b.q.versus)}) FILTER (WHERE {top}) AS top_y,
    array_agg(person_name) FILTER (WHERE {top}) AS top_name,
    array_agg(person_name) FILTER (WHERE {person}) AS person,
    {skips}
  FROM {self.unestimated(list(dict.fromkeys(read)))}
  WHERE {b.where()}
  GROUP BY 1),
g AS MATERIALIZED (SELECT v, c FROM counted WHERE v IS NOT NULL),
c AS MATERIALIZED (SELECT v, SUM(c) OVER (ORDER BY v ROWS UNBOUNDED PRECEDING) AS upto FROM g),
s AS MATERIALIZED (SELECT SUM(c) AS n, MIN(v) AS min, MAX(v) AS max,
  SUM(CAST(v AS NUMERIC) * c) / SUM(c) AS mean FROM g),
{self.counted_stats()},
totals AS MATERIALIZED (SELECT SUM(c) AS rows,
  COALESCE(SUM(c) FILTER (WHERE v IS NULL), 0) AS skipped_values, {totals}
  FROM counted),
{self.counted_bins(b.q.bins)},
{self.tops_sql(b)}
SELECT 'values' AS panel, {", ".join(columns)},
  NULL AS person_name, NULL AS x, NULL AS y, NULL::bigint AS value, NULL::bigint AS rank
FROM stats CROSS JOIN totals LEFT JOIN bins ON TRUE
UNION ALL
SELECT 'top_traffic', {blank}, person_name, x, y, NULL, rank FROM tops
UNION ALL
SELECT 'top_people', {blank}, person_name, NULL, NULL, value, rank FROM best
ORDER BY panel DESC, bin, rank"""

    # The top sessions and the top people from the values' pass. A sample of the table's pages
    # (SAMPLE_PERCENT of them, the same each time) gives each a cut: the CUT_RANK-th best value
    # among the sample's rows that the panel can use, about three thousand rows' worth of the
    # table whatever its size. The pass, grouped by the field's value alone, gathers in arrays
    # the ranked value and person of each row at or above the cut (for the sessions) and the
    # person (for the people): at 1,000,000 rows here 0.54 s, where grouping by those as keys
    # too took 0.68 s. Once ten rows (or ten people) are at or above the cut,
    # the ten best are among them, with their values; only when fewer are (a small table, or a
    # sample of no rows) does one more pass rank them all, as the panel's own statement would.

    def cuts_sql(self, b: Builder) -> str:
        x, y = b.q.field, b.q.versus

        def cut(name: str, value: str, used: str) -> str:
            return f"""{name} AS MATERIALIZED (
  SELECT MIN(v) AS v FROM (SELECT {value} AS v FROM {self.sample()}
    WHERE {used}
    ORDER BY 1 DESC LIMIT {CUT_RANK}) AS best)"""

        return ",\n".join(
            [
                cut("top_cut", b.value(y), b.where(b.valid(x), b.valid(y))),
                cut("person_cut", x, b.where(b.valid(x), self.nonempty("person_name"))),
            ]
        )

    def cut_rows(self, b: Builder) -> tuple[str, str]:
        """SQL of whether a row is at or above each cut (the cut first: most rows stop there,
        before the checks)."""
        x, y = b.q.field, b.q.versus
        top = f"{b.value(y)} >= (SELECT v FROM top_cut) AND {b.valid(x)} AND {b.valid(y)}"
        person = f"{x} >= (SELECT v FROM person_cut) AND {self.nonempty('person_name')}"
        return top, person

    def tops_sql(self, b: Builder) -> str:
        x, yv = b.q.field, b.value(b.q.versus)
        name = self.text("person_name")
        order = f"y DESC, x DESC, {name}"
        return f"""ranked_rows AS MATERIALIZED (
  SELECT sessions.person_name, v AS x, sessions.y
  FROM counted CROSS JOIN unnest(top_y, top_name) AS sessions (y, person_name)),
ranked_people AS MATERIALIZED (
  SELECT people.person, MAX(v) AS value
  FROM counted CROSS JOIN unnest(person) AS people (person)
  GROUP BY people.person),
enough AS MATERIALIZED (
  SELECT (SELECT COUNT(*) >= {TOP} FROM ranked_rows) AS rows,
    (SELECT COUNT(*) >= {TOP} FROM ranked_people) AS people),
tops AS MATERIALIZED (
  SELECT person_name, x, y, ROW_NUMBER() OVER (ORDER BY {order}) AS rank FROM (
    SELECT person_name, x, y FROM ranked_rows WHERE (SELECT rows FROM enough)
    UNION ALL
    SELECT person_name, {x}, {yv} FROM {self.table}
    WHERE NOT (SELECT rows FROM enough)
      AND {b.where(b.valid(x), b.valid(b.q.versus))}) AS ranked
  ORDER BY {order}
  LIMIT {TOP}),
best AS MATERIALIZED (
  SELECT person_name, value, ROW_NUMBER() OVER (ORDER BY value DESC, {name}) AS rank FROM (
    SELECT person AS person_name, value FROM ranked_people WHERE (SELECT people FROM enough)
    UNION ALL
    SELECT person_name, MAX({x}) FROM {self.table}
    WHERE NOT (SELECT people FROM enough)
      AND {b.where(b.valid(x), self.nonempty("person_name"))}
    GROUP BY person_name) AS ranked
  ORDER BY value DESC, {name}
  LIMIT {TOP})"""


class AthenaDialect(Dialect):
    """Amazon Athena (Trino engine v3): billed by bytes scanned, so every panel reads only the
    columns it needs, once where one statement can, with the time window in its WHERE clause
    so that a table partitioned by time scans only the partitions it needs."""

    summary_from_panels = False

    name = "athena"
    double = "DOUBLE"

    TS = (
        "^([0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)-"  # no year 0
        "(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01]) "
        "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?$"
    )
    DAY = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"

    def valid_timestamp(self, col: str) -> str:
        return f"(regexp_like({col}, '{self.TS}') AND {self.real_day(col)})"

    def valid_date(self, col: str) -> str:
        return f"regexp_like({col}, '{self.DAY}')"

    def seconds(self, col: str) -> str:
        # Days from the first of the month, so that a day past the month's end rolls over as
        # on the other databases instead of failing the query.
        return (
            f"((date_diff('day', DATE '1970-01-01', date(concat(substr({col}, 1, 7), '-01')))"
            f" + CAST(substr({col}, 9, 2) AS integer) - 1) * 86400"
            f" + CAST(substr({col}, 12, 2) AS integer) * 3600"
            f" + CAST(substr({col}, 15, 2) AS integer) * 60"
            f" + CAST(substr({col}, 18) AS double))"
        )

    def top_people_sql(self, b: Builder, limit: str = str(TOP)) -> str:
        f = b.q.field
        value = b.value(f)
        where = b.where(b.valid(f), self.nonempty("person_name"))
        return f"""SELECT person_name, MAX({value}) AS value
FROM {self.table}
WHERE {where}
  AND {value} >= COALESCE((
    SELECT {value} FROM {self.table} WHERE {where}
    ORDER BY {value} DESC OFFSET {CANDIDATES - 1} LIMIT 1), {{lowest}})
GROUP BY person_name
ORDER BY value DESC, person_name
LIMIT {limit}"""

    def quartiles_sql(self, value: str, where: str) -> str:
        return f"""SELECT COUNT(*) AS n, MIN({value}) AS min, MAX({value}) AS max,
  AVG({{number}}) AS mean,
  approx_percentile({{number}}, ARRAY[0.25, 0.5, 0.75]) AS quartiles, TRUE AS approximate
FROM {self.table} WHERE {where}"""

    def timeline_sql(self, b: Builder, value: str | None, chars: str) -> str:
        # One scan: rows are first summed into pieces as fine as the window can need (a minute
        # for "all"), then the pieces into buckets of the width their span allows.
        at = "accessed_at"
        grain = {"15m": 19, "1h": 18, "24h": 16, "7d": 15}.get(b.q.window, 16)
        need = [b.valid(at)] + ([b.valid(value)] if value else [])
        sums = (
            f", MIN({value}) AS lo_v, SUM({value}) AS sum_v, MAX({value}) AS hi_v" if value else ""
        )
        values = (
            "NULL AS min, NULL AS mean, NULL AS max"
            if value is None
            else f"MIN(lo_v) AS min, CAST(SUM(sum_v) AS {self.double}) / SUM(n) AS mean, "
            "MAX(hi_v) AS max"
        )
        return f"""WITH pieces AS (
  SELECT substr({at}, 1, {grain}) AS piece, MIN({at}) AS first, MAX({at}) AS last,
    COUNT(*) AS n{sums}
  FROM {self.table}
  WHERE {b.where(*need)}
  GROUP BY 1),
spans AS (
  SELECT pieces.*, MIN(first) OVER () AS lo, MAX(last) OVER () AS hi FROM pieces),
sized AS (
  SELECT spans.*, {self.seconds("hi")} - {self.seconds("lo")} AS seconds FROM spans)
SELECT substr(piece, 1, LEAST({grain}, {chars.replace("seconds /", "sized.seconds /")})) AS bucket,
  SUM(n) AS sessions, {values}
FROM sized
GROUP BY 1
ORDER BY 1"""

    def histogram_by_expression(
        self, num: str, index: str, where: str, bins: int, bounds: str | None = None
    ) -> str:
        bounds = (
            bounds or f"SELECT MIN({num}) AS lo, MAX({num}) AS hi FROM {self.table} WHERE {where}"
        )
        return f"""WITH r AS (
  {bounds})
SELECT CASE WHEN r.hi = r.lo THEN 0 ELSE LEAST({index}, {bins - 1}) END AS bin,
  COUNT(*) AS count, MIN(r.lo) AS lo, MIN(r.hi) AS hi
FROM {self.table} CROSS JOIN r
WHERE {where}
GROUP BY 1
ORDER BY 1"""

    def histogram_sql(self, value: str, where: str, bins: int, inner: str) -> str:
        # floor() of a double quotient, not "/" on integers, whose meaning differs between
        # engines; exact here, since a quotient that is not whole is at least 1/(hi - lo)
        # away from one, far more than a double's rounding.
        index = self.floor(
            f"CAST((CAST({value} AS BIGINT) - r.lo) * {bins} AS DOUBLE) / (r.hi - r.lo)"
        )
        return self.histogram_by_expression(value, index, where, bins)

    def summary_sql(self, b: Builder) -> str:
        # One scan; the engine's CPU is not billed, the bytes it reads are.
        at = "accessed_at"
        flags = row_checks(b)

        def ok(names: list[str]) -> str:
            return " AND ".join(f"({flags[n]})" for n in names)

        skipped = ",\n  ".join(
            f"SUM(CASE WHEN {ok(names)} THEN 0 ELSE 1 END) AS skipped_{name}"
            for name, names in needs_flags(b).items()
        )
        return f"""SELECT COUNT(*) AS rows,
  COUNT(DISTINCT CASE WHEN {flags["ok_user"]} THEN user_name END) AS users,
  MAX(CASE WHEN {flags["ok_at"]} THEN {at} END) AS newest,
  SUM(CASE WHEN {flags["ok_at"]} AND {at} >= :recent THEN 1 ELSE 0 END) AS last_5_minutes,
  {skipped}
FROM {self.table}
WHERE {b.where()}"""


def dialect_for(source: Source) -> Dialect:
    """Return the SQL dialect of a source."""
    if source.kind == "sqlite":
        return SQLiteDialect(source)
    if source.kind == "postgresql":
        return PostgresDialect(source)
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
        self.params: dict[str, Any] = {
            "now": stamp(q.now),
            "recent": stamp(q.now - timedelta(minutes=5)),
        }
        if q.since is not None:
            self.params["since"] = stamp(q.since)
        self.seek = True
        self.few_rows = False

    def _variant(self) -> Builder:
        other = Builder(self.d, self.q)
        other.params = self.params
        other.seek, other.few_rows = self.seek, self.few_rows
        return other

    def scan(self) -> Builder:
        """The same predicates, with their ranges kept from choosing an index to seek."""
        other = self._variant()
        other.seek = False
        return other

    def few(self) -> Builder:
        """The same predicates, for a statement that applies them to a few rows only."""
        other = self._variant()
        other.few_rows = True
        return other

    def valid(self, name: str) -> str:
        """The predicate that a row's value of a field can be used."""
        if FIELDS[name].is_time:
            at = self.d.ranged(self.d.text(name), self.seek)
            test = self.d.few_valid_timestamp if self.few_rows else self.d.valid_timestamp
            return f"({test(name)} AND {at} <= :now)"
        return self.d.valid_number(name, self.seek)

    def window(self) -> list[str]:
        if self.q.since is None:
            return []
        at = self.d.ranged(self.d.text("accessed_at"), self.seek)
        return [f"{at} >= :since", self.valid("accessed_at")]

    def where(self, *parts: str) -> str:
        terms = list(dict.fromkeys(self.window() + [p for p in parts if p]))  # once each
        return "\n  AND ".join(terms) if terms else "1 = 1"

    def number(self, name: str) -> str:
        """A field as a number: seconds since 1970 for a time."""
        return self.d.row_seconds(name) if FIELDS[name].is_time else name

    def value(self, name: str) -> str:
        """A field as compared and ranked: text for a time (ISO text sorts as time does)."""
        return self.d.text(name) if FIELDS[name].is_time else name

    def statement(self, sql: str) -> Statement:
        used = set(BIND.findall(sql))
        return Statement(sql, {k: v for k, v in self.params.items() if k in used})


def top_traffic_sql(b: Builder) -> Statement:
    if b.d.values_panels(b.q):
        return b.statement(b.d.values_sql(b))
    sql = b.d.within_few(
        b,
        lambda limit: top_sessions(b, b, limit),
        lambda limit: top_sessions(b, b.scan(), limit),
        "y DESC, x DESC, 1",
    )
    return b.statement(sql)


def top_sessions(b: Builder, by: Builder, limit: str) -> str:
    """The top sessions' statement; its ranges of values those of ``by``, b.scan() to keep them
    from steering the plan (the ranking too)."""
    x, y = b.q.field, b.q.versus
    ranked = ", ".join(
        by.d.ranged(term, by.seek) for term in (f"{b.value(y)} DESC", f"{b.value(x)} DESC")
    )
    return f"""SELECT person_name, {x} AS x, {y} AS y
FROM {b.d.table}
WHERE {b.where(by.valid(x), by.valid(y))}
ORDER BY {ranked}, {b.d.text("person_name")}
LIMIT {limit}"""


def top_people_sql(b: Builder) -> Statement:
    if b.d.values_panels(b.q):
        return b.statement(b.d.values_sql(b))
    if b.d.fuses_people:
        return people_sql(b)
    f = b.q.field
    lowest = "'0000'" if FIELDS[f].is_time else b.d.lowest_number

    def ranked(limit: str) -> str:
        return b.d.top_people_sql(b, limit).replace("{lowest}", lowest)

    return b.statement(
        b.d.within_few(b, ranked, lambda limit: everyone(b, b.scan(), limit), "2 DESC, 1")
    )


def everyone_sql(b: Builder) -> str:
    """The top people ranked among all the rows of the window."""
    return b.d.within_few(
        b,
        lambda limit: everyone(b, b, limit),
        lambda limit: everyone(b, b.scan(), limit),
        "2 DESC, 1",
    )


def everyone(b: Builder, by: Builder, limit: str) -> str:
    """The top people ranked among all the rows of the window; its ranges of values and its
    grouping those of ``by``, b.scan() to keep them from steering the plan."""
    f = b.q.field
    return f"""SELECT person_name, MAX({b.value(f)}) AS value
FROM {b.d.table}
WHERE {b.where(by.valid(f), b.d.nonempty("person_name"))}
GROUP BY {b.d.ranged("person_name", by.seek)}
ORDER BY value DESC, {b.d.text("person_name")}
LIMIT {limit}"""


def timeline_sql(b: Builder) -> Statement:
    f = b.q.field
    value = None if FIELDS[f].is_time else f
    return b.statement(b.d.timeline_sql(b, value, bucket_chars(b)))


def bucket_chars(b: Builder) -> str:
    """SQL of the finest text-prefix bucket (its length in characters) that keeps the count of
    buckets within the limit, from the span in ``seconds``."""
    choice = "\n    ".join(
        f"WHEN seconds / {width} + 2 <= {b.q.buckets} THEN {length}"
        for length, width in BUCKET_STEPS[:-1]
    )
    return f"CASE\n    {choice}\n    ELSE {BUCKET_STEPS[-1][0]} END"


def distribution_sql(b: Builder) -> Statement:
    if b.d.values_panels(b.q):
        return b.statement(b.d.values_sql(b))
    f = b.q.field
    if b.d.counts_values(b.q):
        # (a window's rows are found by its range of times, not by the value's: b.scan())
        valid = b.scan().valid(f) if b.q.since is not None else b.valid(f)
        sql = b.d.counts_sql(b.value(f), b.where(valid), b.q.bins)
    elif FIELDS[f].is_time:
        sql = b.d.time_quartiles_sql(b.value(f), b.where(b.valid(f)))
    else:
        sql = b.d.quartiles_sql(b.value(f), b.where(b.valid(f)))
    number_v = b.d.seconds("v") if FIELDS[f].is_time else "v"
    return b.statement(sql.replace("{number}", b.number(f)).replace("{number_v}", number_v))


def histogram_sql(b: Builder) -> Statement:
    if b.d.values_panels(b.q):
        return b.statement(b.d.values_sql(b))
    if b.d.counts_values(b.q):
        return distribution_sql(b)
    f = b.q.field
    where = b.where(b.valid(f))
    if FIELDS[f].is_time:
        sql = b.d.time_histogram_sql(b.value(f), where, b.q.bins)
    else:
        # Within a bin's numeric bounds no NULL or text can fall: the window is all to check.
        sql = b.d.histogram_sql(f, where, b.q.bins, b.scan().where())
    return b.statement(sql)


def age_groups_sql(b: Builder) -> Statement:
    if b.d.fuses_people:
        return people_sql(b)
    return b.statement(b.d.age_groups_sql(b, age_group_case(b)))


def people_sql(b: Builder) -> Statement:
    """The statement top_people and age_groups share where the dialect fuses them; a column
    ``panel`` tells whose each row is."""
    return b.statement(b.d.people_sql(b, age_group_case(b)))


def age_group_case(b: Builder) -> str:
    """SQL naming the age group of a birth date ``bd`` (text, or NULL when unknown)."""
    today = b.q.now.date()
    for _, upper in AGE_GROUPS:
        if upper is not None:
            b.params[f"born_{upper}"] = birth_cutoff(today, upper).isoformat()
    b.params["today"] = today.isoformat()
    cases = "\n    ".join(
        f"WHEN bd > :born_{upper} THEN '{label}'" for label, upper in AGE_GROUPS if upper
    )
    return f"""CASE WHEN bd IS NULL THEN '{UNKNOWN_AGE}'
    {cases}
    ELSE '{AGE_GROUPS[-1][0]}' END"""


def summary_sql(b: Builder) -> Statement:
    version = version_sql(b.d, b.q.now)
    b.params.update(version.params)
    return b.statement(
        f"SELECT counts.*, ({version.sql}) AS version\nFROM (\n{b.d.summary_sql(b)}\n) AS counts"
    )


def row_checks(b: Builder) -> dict[str, str]:
    """The per-row checks the summary counts skipped rows with, by name."""
    return {
        "ok_at": b.valid("accessed_at"),
        "ok_f": b.valid(b.q.field),
        "ok_v": b.valid(b.q.versus),
        "ok_person": b.d.nonempty("person_name"),
        "ok_user": b.d.nonempty("user_name"),
    }


def skipped_counts(
    b: Builder, needs: Mapping[str, list[str]], sep: str, checks: Mapping[str, str] | None = None
) -> str:
    """SQL counting, for each panel named in ``needs``, the rows failing any check it needs;
    ``checks`` spell the checks by name, by default row_checks()."""
    checks = checks or row_checks(b)
    return sep.join(
        f"COUNT(*) FILTER (WHERE ({' AND '.join(checks[t] for t in terms)}) IS NOT TRUE)"
        f" AS skipped_{name}"
        for name, terms in needs.items()
    )


def needs_flags(b: Builder) -> dict[str, list[str]]:
    """What each panel needs of a row, by the names of the summary's per-row checks."""
    time = FIELDS[b.q.field].is_time
    return {
        "top_traffic": ["ok_f", "ok_v"],
        "top_people": ["ok_f", "ok_person"],
        "timeline": ["ok_at"] if time else ["ok_at", "ok_f"],
        "distribution": ["ok_f"],
        "histogram": ["ok_f"],
        "age_groups": ["ok_user"],
    }


def version_sql(dialect: Dialect, now: datetime | None = None) -> Statement:
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
    # Athena: rows arrive at the present, so the last day's count and newest arrival change
    # with each one, and a table partitioned by time scans one day to tell.
    recent = stamp((now or _utcnow()) - timedelta(days=1))
    return Statement(
        "SELECT CAST(COUNT(*) AS varchar) || '.' || COALESCE(MAX(accessed_at), '') AS version "
        f"FROM {dialect.table} WHERE accessed_at >= :recent_day",
        {"recent_day": recent},
    )


# ---------------------------------------------------------------- shaping results


def _time(value: Any) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, datetime):
        return value
    return read_time(str(value))


def read_time(text: str) -> datetime:
    """A well-formed text time, or a prefix of one (a timeline bucket)."""
    year, month = int(text[:4]), int(text[5:7]) if len(text) >= 7 else 1
    day = int(text[8:10]) if len(text) >= 10 else 1
    clock = (text[11:] + "00:00:00"[len(text) - 11 :] if len(text) > 11 else "00:00:00")[:8]
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    fraction = text[20:26] if len(text) > 20 else ""
    return datetime(year, month, 1) + timedelta(
        days=day - 1,
        hours=hours,
        minutes=minutes,
        seconds=seconds,
        microseconds=int(fraction.ljust(6, "0")) if fraction else 0,
    )


def _field_values(frame: pd.DataFrame, column: str, name: str) -> None:
    if FIELDS[name].is_time:
        frame[column] = pd.to_datetime(frame[column].map(_time))
    else:
        frame[column] = pd.to_numeric(frame[column])


def shape_top_traffic(rows: pd.DataFrame, q: Query) -> pd.DataFrame:
    rows = part_of(rows, "top_traffic", ["person_name", "x", "y"])
    out = rows.rename(columns={"x": q.field, "y": q.versus}).copy()
    if q.field == q.versus:
        out = out.loc[:, ~out.columns.duplicated()]
    for name in {q.field, q.versus}:
        _field_values(out, name, name)
    out["person_name"] = out["person_name"].map(shower(q.people))
    return out.reset_index(drop=True)


def part_of(rows: pd.DataFrame, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A panel's rows of a statement it shares with another, tagged ``name`` in a column
    ``panel`` (people_sql, values_sql), or all of them: its ``columns``, or all but the tag."""
    if "panel" in rows:
        rows = rows.loc[rows["panel"] == name, columns or rows.columns.drop("panel")]
    return rows


def shape_top_people(rows: pd.DataFrame, q: Query) -> pd.DataFrame:
    out = part_of(rows, "top_people", ["person_name", "value"]).copy()
    _field_values(out, "value", q.field)
    out["person_name"] = out["person_name"].map(shower(q.people))
    return out.reset_index(drop=True)


def shape_timeline(rows: pd.DataFrame, q: Query) -> pd.DataFrame:
    totals = None
    if "newest" in rows:  # PostgreSQL's last row, of no bucket, is for the summary
        totals = rows[rows["bucket"].isna()].iloc[0]
        rows = rows[rows["bucket"].notna()]
    if "stats" in rows:  # SQLite answers each bucket, empty ones too, with a JSON array
        stats = [json.loads(v) for v in rows["stats"]]
        keep = [s[0] > 0 for s in stats]
        rows = rows.loc[pd.Series(keep, index=rows.index, dtype=bool)]
        stats = [s for s, k in zip(stats, keep, strict=True) if k]
        rows = pd.DataFrame(
            {
                "bucket": rows["bucket"],
                "sessions": [s[0] for s in stats],
                **{
                    k: [s[i] if len(s) > 1 else None for s in stats]
                    for i, k in ((1, "min"), (2, "mean"), (3, "max"))
                },
            }
        )
    out = pd.DataFrame(
        {
            "bucket": pd.to_datetime(rows["bucket"].map(_bucket_start)),
            "sessions": pd.to_numeric(rows["sessions"]).astype("int64"),
        }
    )
    if not FIELDS[q.field].is_time:
        for col in ("min", "mean", "max"):
            out[col] = pd.to_numeric(rows[col]).astype("float64")
    if totals is not None:
        out.attrs["newest"] = _time(totals["newest"])
        out.attrs["last_5_minutes"] = int(totals["last_5_minutes"] or 0)
    return out


def _bucket_start(prefix: str) -> datetime:
    return read_time(str(prefix))


def shape_distribution(rows: pd.DataFrame, q: Query) -> dict[str, Any]:
    rows = part_of(rows, "values")
    row = rows.iloc[0].to_dict() if len(rows) else {}
    n = int(row.get("n") or 0)
    out: dict[str, Any] = {"count": n}
    if n == 0:
        return out | dict.fromkeys(("min", "q1", "median", "q3", "max", "mean"))
    time = FIELDS[q.field].is_time
    if "quartiles" in row:
        q1, median, q3 = (float(v) for v in row["quartiles"])
        if row.get("approximate"):  # Athena's approx_percentile
            out["approximate"] = True
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
    a, b = (
        (_seconds(lo), _seconds(hi if hi is not None else lo))
        if time
        else (
            float(lo),
            float(hi if hi is not None else lo),
        )
    )
    frac = position - int(position)
    return a + (b - a) * frac


def shape_histogram(rows: pd.DataFrame, q: Query) -> pd.DataFrame:
    rows = part_of(rows, "values")
    counted = None
    if "skipped_values" in rows:  # the values' pass (values_sql): its counts are the summary's
        first = rows.iloc[0]
        unusable = int(first["skipped_values"])  # a value that is NULL
        counted = {
            "rows": int(first["rows"] or 0),
            "skipped": {"distribution": unusable, "histogram": unusable}
            | {name: int(first[f"skipped_{name}"] or 0) for name in COUNTED_BY_VALUES},
        }
    # (a statement shared with the distribution has a row without a bin when no value is usable)
    rows = rows[rows["bin"].notna()]
    frame = _histogram_frame(rows, q)
    if counted is not None:
        frame.attrs["summary"] = counted
    return frame


def _histogram_frame(rows: pd.DataFrame, q: Query) -> pd.DataFrame:
    counts = {int(b): int(c) for b, c in zip(rows["bin"], rows["count"], strict=True)}
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
    rows = part_of(rows, "age_groups", ["age_group", "users"])
    counts = {str(g): int(u) for g, u in zip(rows["age_group"], rows["users"], strict=True)}
    labels = [label for label, _ in AGE_GROUPS] + [UNKNOWN_AGE]
    users = [counts.get(label, 0) for label in labels]
    total = sum(users)
    share = [100.0 * u / total if total else 0.0 for u in users]
    return pd.DataFrame({"age_group": labels, "users": users, "share": share})


def shape_summary(rows: pd.DataFrame, q: Query) -> dict[str, Any]:
    row = rows.iloc[0].to_dict()
    out: dict[str, Any] = {
        # None where other panels are to tell (complete_summary)
        "rows": None if row["rows"] is None else int(row["rows"]),
        "users": None if row["users"] is None else int(row["users"]),
        "newest": _time(row["newest"]),
        "last_5_minutes": None if row["last_5_minutes"] is None else int(row["last_5_minutes"]),
        "version": None if row.get("version") is None else str(row["version"]),
        "skipped": {
            name: None if row.get(f"skipped_{name}") is None else int(row[f"skipped_{name}"])
            for name in FIGURE_PANELS
        },
    }
    return out


def complete_summary(
    summary: dict[str, Any],
    timeline: pd.DataFrame,
    age_groups: pd.DataFrame,
    histogram: pd.DataFrame,
) -> dict[str, Any]:
    """Fill in what the summary left to other panels (None): the rows of the window and those
    each panel skipped (which the values' pass counts), the rows the timeline skipped (the rows
    in the window that it did not count), the newest row and the rows of the last five minutes
    (which the timeline's pass finds), and the distinct users (each is in one age group)."""
    counted = histogram.attrs.get("summary", {})
    if summary["rows"] is None:
        summary["rows"] = counted["rows"]
    for name, value in counted.get("skipped", {}).items():
        if summary["skipped"][name] is None:
            summary["skipped"][name] = value
    if summary["last_5_minutes"] is None:
        summary["newest"] = timeline.attrs["newest"]
        summary["last_5_minutes"] = timeline.attrs["last_5_minutes"]
    if summary["skipped"]["timeline"] is None:
        used = int(timeline["sessions"].sum()) if len(timeline) else 0
        summary["skipped"]["timeline"] = summary["rows"] - used
    if summary["users"] is None:
        summary["users"] = int(age_groups["users"].sum())
    return summary


# The panels the summary may be completed from (complete_summary).
_SUMMARY_NEEDS = ("timeline", "age_groups", "histogram")


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


def run(
    conn: sa.Connection, source: Source, name: str, q: Query, meter: Meter | None = None
) -> Any:
    """Run one panel and return its small result.

    :param meter: adds up the queries sent and the bytes the source scanned for them.
    """
    result = _run(conn, source, name, q, meter)
    if name == "summary" and dialect_for(source).summary_from_panels:
        needed = {n: _run(conn, source, n, q, meter) for n in _SUMMARY_NEEDS}
        complete_summary(result, *(needed[n] for n in _SUMMARY_NEEDS))
    return result


def _run(conn: sa.Connection, source: Source, name: str, q: Query, meter: Meter | None) -> Any:
    return _run_shared(conn, source, [name], q, meter)[name]


def _run_shared(
    conn: sa.Connection,
    source: Source,
    names: list[str],
    q: Query,
    meter: Meter | None,
    stmt: Statement | None = None,
) -> dict[str, Any]:
    """Run the statement the named panels share once (``stmt``, when already built), and shape
    each one's result from it."""
    for name in names:
        if not isinstance(name, str) or name not in PANELS:
            raise QueryError(f"{name!r} is not a panel; pick one of {', '.join(PANELS)}.")
    d = dialect_for(source)
    rows = _fetch(conn, stmt or PANELS[names[0]].build(Builder(d, q)), meter)
    results = {}
    for name in names:
        mine = rows
        if name == "top_people" and len(rows) < TOP and not d.ranks_everyone:
            # Fewer than ten people among the top rows: rank everyone (small or odd tables).
            full = Builder(d, q)
            mine = _fetch(conn, full.statement(everyone_sql(full)), meter)
        results[name] = PANELS[name].shape(mine, q)
    return results


def _sharing(source: Source, q: Query, wanted: list[str]) -> list[tuple[list[str], Statement]]:
    """The wanted panels grouped by the statement they run, so that a shared one runs once,
    each group with that statement."""
    d = dialect_for(source)
    groups: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[list[str], Statement]] = {}
    for name in wanted:
        stmt = PANELS[name].build(Builder(d, q))
        key = (stmt.sql, tuple(sorted(stmt.params.items())))
        groups.setdefault(key, ([], stmt))[0].append(name)
    return list(groups.values())


@dataclass
class Meter:
    """What the statements of one refresh cost: queries sent and bytes scanned (Athena)."""

    queries: int = 0
    scanned_bytes: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def add(self, cursor: Any) -> None:
        scanned = getattr(cursor, "data_scanned_in_bytes", None)
        with self.lock:
            self.queries += 1
            self.scanned_bytes += int(scanned or 0)


def _fetch(conn: sa.Connection, stmt: Statement, meter: Meter | None = None) -> pd.DataFrame:
    result = conn.execute(sa.text(stmt.sql), stmt.params)
    if meter is not None:  # before fetching: a fetched result closes its cursor
        meter.add(result.cursor)
    return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def data_version(conn: sa.Connection, source: Source, now: datetime | None = None) -> str:
    """Return a value that changes when rows arrive; far cheaper than the panels."""
    stmt = version_sql(dialect_for(source), now)
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
    wanted = list(names or PANELS)
    if "summary" in wanted and all(n in wanted for n in _SUMMARY_NEEDS):
        results: dict[str, Any] = {}
        for group, stmt in _sharing(source, q, wanted):
            results.update(_run_shared(conn, source, group, q, None, stmt))
        complete_summary(results["summary"], *(results[n] for n in _SUMMARY_NEEDS))
        return {name: results[name] for name in wanted}
    return {name: run(conn, source, name, q) for name in wanted}


# Slowest first, so that two workers finish together.
_ORDER = ("timeline", "summary", "age_groups", "histogram", "distribution", "top_people")


def compute_all(
    engine: sa.Engine,
    source: Source,
    q: Query,
    workers: int | None = None,
    meter: Meter | None = None,
) -> dict[str, Any]:
    """Run every panel, ``workers`` at a time on connections of their own; return the results.

    The databases run each query outside Python's lock, so on a machine with several cores the
    panels of one refresh take about as long as the slowest few, not their sum.

    :param workers: queries in flight at once; 1 runs them one after another. By default two
        on SQLite and PostgreSQL (two cores here), and all at once on Athena, where each query
        waits seconds on the service: a refresh then costs one round trip, not seven.
        With more than one, each PostgreSQL statement uses at most the source's
        ``parallel_workers`` (the setting pg_parallel_workers; see limit_parallel_workers).
    """
    if workers is None:
        workers = len(PANELS) if source.kind == "athena" else 2
    groups = sorted(
        _sharing(source, q, list(PANELS)),
        key=lambda g: min(_ORDER.index(n) if n in _ORDER else len(_ORDER) for n in g[0]),
    )

    def one(shared: tuple[list[str], Statement]) -> dict[str, Any]:
        names, stmt = shared
        with engine.connect() as conn:
            if workers > 1:
                limit_parallel_workers(conn, source)
            return _run_shared(conn, source, names, q, meter, stmt)

    results: dict[str, Any] = {}
    if workers <= 1:
        for group in groups:
            results.update(one(group))
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="drivendata-panel") as pool:
            for future in [pool.submit(one, group) for group in groups]:
                results.update(future.result())
    results = {name: results[name] for name in PANELS}
    complete_summary(results["summary"], *(results[n] for n in _SUMMARY_NEEDS))
    return results
