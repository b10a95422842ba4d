"""Hostile input: whatever the rows hold, no panel raises, results stay small, skips are counted.

Property-based (hypothesis) tests of the query module on a real SQLite file and the real
PostgreSQL server. Each backend gets one table for the module; every example deletes its rows
and inserts new ones, so an example costs a few milliseconds of setup.

The rows hold arbitrary text in every text column (any Unicode, astral characters and control
characters included, SQL fragments, strings as long as the column allows and, on SQLite, which
enforces no VARCHAR size, far longer), timestamps and dates mangled in many ways (other
formats, the ISO ``T`` form, stray spaces, extra digits), and edge numbers (NULL, 0, the
bounds of the column type, negatives; on SQLite also 64-bit values and text in INT columns,
which SQLite stores as they come). Text never holds NUL (``\\x00``): PostgreSQL refuses it in
``text`` and ``varchar``, so keeping it out is the writer's concern, not the panels'.

Timestamps and dates shaped right but naming a day the calendar lacks (``2026-02-30``, year
``0000``) are left out of the oracle comparison: the panels accept them as well formed and
then fail on them, which :func:`test_impossible_calendar_days_are_skipped_not_fatal` shows.
"""

from __future__ import annotations

import math
import re
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from unittest import mock

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivendata import panels
from drivendata import settings as dd_settings
from drivendata.database import (
    COLUMN_NAMES,
    COLUMNS,
    Source,
    SourceError,
    create_table,
    reader,
    source_from,
    table_sql,
    writer,
)
from drivendata.panels import (
    CUT_RANK,
    FIELDS,
    PANELS,
    SAMPLE_PERCENT,
    TS_FORMAT,
    WINDOWS,
    Builder,
    PostgresDialect,
    Query,
    QueryError,
    bucket_chars,
    compute,
    dialect_for,
    run,
)
from drivendata.stream import insert

from .conftest import NOW, POSTGRES_URL, postgres_available
from .oracle import Oracle, _desc, parse

NUMBERS = ("session_duration", "download_speed", "upload_speed", "consumed_traffic")
SIZES = {
    name: int(m.group(1))
    for name, kind in COLUMNS
    if (m := re.fullmatch(r"VARCHAR\((\d+)\)", kind))
}
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
FRAGMENTS = [
    "'; DROP TABLE streaming_data; --",
    "Robert'); DROP TABLE streaming_layer.streaming_data;--",
    "' OR '1'='1",
    '" OR ""="',
    "1; SELECT pg_sleep(10)",
    "%",
    "_",
    "\\",
    "''",
    "/* comment */",
    ":now",
    "?",
    "$1",
    "NULL",
    "null",
    "\u202eevil\u202c",
    "\U0001f600\U0001f4a9",
    "\ufeff",
    "\r\n\t\x0b\x0c\x1b[31m",
]
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


# ---------------------------------------------------------------- the stores


@dataclass
class Store:
    source: Source
    write: sa.Engine
    read: sa.Engine

    @property
    def kind(self) -> str:
        return self.source.kind

    def fill(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Replace the table's rows; return them as the database holds them."""
        with self.write.begin() as conn:
            conn.execute(sa.text(f"DELETE FROM {table_sql(self.source)}"))
            insert(conn, self.source, rows)
        with self.read.connect() as conn:
            got = conn.execute(
                sa.text(f"SELECT {', '.join(COLUMN_NAMES)} FROM {table_sql(self.source)}")
            ).fetchall()
        return [tuple(r) for r in got]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """One empty table per database for the whole module; examples replace its rows."""
    schema = f"ddhostile_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("hostile") / "drivendata.db"
        source = source_from(f"sqlite:///{path}", f"{schema}.streaming_data")
    else:
        postgres_available()
        source = source_from(POSTGRES_URL, f"{schema}.streaming_data")
    write = writer(source)
    with write.begin() as conn:
        create_table(conn, source)
    read = reader(source)
    yield Store(source, write, read)
    read.dispose()
    if source.kind == "postgresql":
        with write.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    write.dispose()


# ---------------------------------------------------------------- what the rows hold

ASCII_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?")
ASCII_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def impossible_day(value: Any) -> bool:
    """A timestamp or date shaped right whose day the calendar lacks (2026-02-30, year 0000)."""
    if not isinstance(value, str):
        return False
    if not (ASCII_TS.fullmatch(value) or ASCII_DAY.fullmatch(value)):
        return False
    year, month, day = int(value[:4]), int(value[5:7]), int(value[8:10])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return False  # malformed: every check refuses it
    try:
        date(year, month, day)
    except ValueError:
        return True
    return False


def chars(ascii_only: bool = False) -> st.SearchStrategy[str]:
    if ascii_only:
        return st.characters(min_codepoint=1, max_codepoint=127)
    # every code point but NUL and the surrogates (which no UTF-8 text can hold)
    return st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")


def long_text(limit: int) -> st.SearchStrategy[str]:
    """One or two characters repeated up to ``limit``: long strings, cheaply."""
    return st.builds(
        lambda a, b, n: ((a + b) * limit)[:n],
        chars(),
        chars(),
        st.integers(max(0, limit - 3), limit),
    )


def any_text(limit: int) -> st.SearchStrategy[str | None]:
    return st.one_of(
        st.none(),
        st.just(""),
        st.text(chars(), max_size=min(limit, 20)),
        st.sampled_from(FRAGMENTS).map(lambda s: s[:limit]),
        long_text(limit),
    )


def mangle(text: str) -> st.SearchStrategy[str]:
    """A well-formed value with one edit: a character replaced, added or dropped, and so on."""
    edits = st.one_of(
        st.tuples(st.just("replace"), st.integers(0, len(text) - 1), chars()),
        st.tuples(
            st.just("replace"), st.integers(0, len(text) - 1), st.sampled_from("0123456789 -:.T/")
        ),
        st.tuples(
            st.just("insert"), st.integers(0, len(text)), st.sampled_from("0123456789 -:.T/")
        ),
        st.tuples(st.just("drop"), st.integers(0, len(text) - 1), st.just("")),
        st.tuples(
            st.just("append"), st.just(0), st.text("0123456789 .:Z+", min_size=1, max_size=8)
        ),
        st.tuples(st.just("prepend"), st.just(0), st.sampled_from([" ", "\t", "+", "0"])),
    )

    def apply(edit: tuple[str, int, str]) -> str:
        how, at, what = edit
        if how == "replace":
            return text[:at] + what + text[at + 1 :]
        if how == "insert":
            return text[:at] + what + text[at:]
        if how == "drop":
            return text[:at] + text[at + 1 :]
        if how == "append":
            return text + what
        return what + text

    return edits.map(apply)


def stamps() -> st.SearchStrategy[str]:
    """Arrival times around NOW: some future, fractions of 0 to 6 digits."""
    moment = st.integers(-10 * 86_400_000_000, 86_400_000_000).map(
        lambda us: NOW + timedelta(microseconds=us)
    )
    return st.builds(
        lambda t, digits: (
            t.strftime("%Y-%m-%d %H:%M:%S") + ("." + t.strftime("%f")[:digits] if digits else "")
        ),
        moment,
        st.integers(0, 6),
    )


def other_formats(t: datetime) -> list[str]:
    return [
        t.strftime("%Y-%m-%dT%H:%M:%S"),
        t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        t.strftime("%Y-%m-%d %H:%M:%S+00:00"),
        t.strftime("%Y-%m-%d %H:%M:%S.%f") + "1",  # seven fraction digits
        t.strftime("%Y-%m-%d %H:%M:%S "),
        " " + t.strftime("%Y-%m-%d %H:%M:%S"),
        t.strftime("%d/%m/%Y %H:%M:%S"),
        t.strftime("%Y/%m/%d %H:%M:%S"),
        t.strftime("%Y-%m-%d %H:%M"),
        t.strftime("%Y-%m-%d"),
        t.strftime("%s"),
        t.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "2026-13-01 10:00:00",
        "2026-11-28 24:00:00",
        "2026-11-28 23:60:00",
        "2026-11-28 10:00:60",
        "2026-00-10 10:00:00",
        "2026-11-00 10:00:00",
        "2026-11-28 10:00:00.",
        "2026-11-28 10:00:0012345",
        # one wrong character after the minute: PostgreSQL's timeline checks the clock up to
        # the minute once per group of rows, and each row's seconds and fraction on their own
        "2026-11-28 10:00:5x",
        "2026-11-28 10:00:-5",
        "2026-11-28 10:00:00.12a",
        "2026-11-28 10:00:00.1.2",
        "2026-11-28 10:00:00:12",
        "2026-11-28 10:00:00.١٢",
        "2026-11-28 10:0x:00",
        "٢٠٢٦-١١-٢٨ ١٠:٠٠:٠٠",  # Arabic-Indic digits: digits, but not ASCII ones
        "２０２６-１１-２８ １０:００:００",
    ]


def accessed_at() -> st.SearchStrategy[str | None]:
    return st.one_of(
        stamps(),
        stamps(),
        stamps().flatmap(mangle),
        st.builds(parse, stamps()).flatmap(lambda t: st.sampled_from(other_formats(t))),
        st.sampled_from(other_formats(NOW - timedelta(minutes=3))),
        any_text(SIZES["accessed_at"]),
    )


def birth_date() -> st.SearchStrategy[str | None]:
    day = st.dates(date(1900, 1, 1), date(2030, 12, 31)).map(date.isoformat)
    return st.one_of(
        day,
        day,
        day.flatmap(mangle),
        st.sampled_from(
            ["14/03/1987", "1987-3-4", "19870304", "1987-03-04T00:00:00", "2099-01-01"]
        ),
        any_text(SIZES["birth_date"]),
    )


def number(kind: str, bits: int = 32) -> st.SearchStrategy[Any]:
    low, high = INT32 if bits == 32 else INT64
    options: list[st.SearchStrategy[Any]] = [
        st.none(),
        st.sampled_from([0, 1, -1, low, high, low + 1, high - 1]),
        st.integers(low, high),
        st.integers(-1000, 100_000),
    ]
    if kind == "sqlite" and bits == 32:
        # SQLite keeps any 64-bit integer, and any text, in an INT column
        options.append(st.sampled_from([INT64[0], INT64[1], INT64[0] + 1, INT64[1] - 1, 2**40]))
        options.append(st.integers(*INT64))
        options.append(
            st.one_of(st.text(chars(), min_size=1, max_size=10), st.sampled_from(FRAGMENTS)).filter(
                _not_numeric
            )
        )
    return st.one_of(*options)


def _not_numeric(text: str) -> bool:
    # SQLite stores text that reads as a number as that number in an INT column.
    try:
        float(text)
    except ValueError:
        return text.strip() != ""
    return False


PEOPLE = ["Ana", "Ana ", "ana", "Zoë", "Ăâ", "\U0001f600", "O'Brien", "x" * 50]


def rows(kind: str, calendar: bool = True) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Rows of hostile values; ``calendar`` keeps out days the calendar lacks."""
    beyond = 10 if kind == "sqlite" else 1  # SQLite enforces no VARCHAR size
    column: dict[str, st.SearchStrategy[Any]] = {
        name: any_text(size * beyond) for name, size in SIZES.items()
    }
    column["person_name"] = st.one_of(st.sampled_from(PEOPLE), column["person_name"])
    column["user_name"] = st.one_of(st.sampled_from(PEOPLE), column["user_name"])
    column["accessed_at"] = accessed_at()
    column["birth_date"] = birth_date()
    if calendar:
        for name in ("accessed_at", "birth_date"):
            column[name] = column[name].filter(lambda v: not impossible_day(v))
    column["personal_number"] = number(kind, bits=64)
    for name in NUMBERS:
        column[name] = number(kind)
    row = st.tuples(*(column[name] for name in COLUMN_NAMES))
    return st.lists(row, min_size=1, max_size=30)  # test_panels covers the empty table


def queries() -> st.SearchStrategy[Query]:
    return st.builds(
        lambda field, versus, window, buckets, bins: Query(
            field=field, versus=versus, window=window, now=NOW, buckets=buckets, bins=bins
        ),
        st.sampled_from(list(FIELDS)),
        st.sampled_from(list(FIELDS)),
        st.sampled_from(list(WINDOWS)),
        st.one_of(st.just(1000), st.integers(2, 60)),
        st.one_of(st.just(30), st.integers(1, 40)),
    )


def samples() -> st.SearchStrategy[tuple[float, int]]:
    """PostgreSQL's samples (see sampling). Its share of a small table's pages is no page at
    all: the timeline then makes its pass by the minute, and the top sessions come from a pass
    of their own. With every page, a long span takes the pass by the hour, and a cut at the
    tenth or a later row finds the top sessions in the values' pass."""
    return st.one_of(
        st.just((SAMPLE_PERCENT, CUT_RANK)),
        st.tuples(st.just(100.0), st.sampled_from([CUT_RANK, 10, 15, 1000])),
    )


# ---------------------------------------------------------------- checking results


def usable(value: Any) -> bool:
    """Whether a number column's value is a number the panels use.

    Text in an INT column (SQLite only) is no number. Nor, on SQLite, is -2**63: the panels
    keep text out with a range check whose lower end is -(2**63 - 1), and count it as skipped.
    """
    return isinstance(value, int) and value > INT64[0]


def as_oracle_sees(stored: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows with unusable numbers as missing, which is how the oracle's rules skip them."""
    numbers = {COLUMN_NAMES.index(n) for n in NUMBERS}
    return [
        tuple(None if i in numbers and not usable(v) else v for i, v in enumerate(row))
        for row in stored
    ]


def names(values: Any) -> list[Any]:
    """Person names with NULL as None (pandas may hold a missing string as NaN)."""
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]


def same_value(got: Any, want: Any, field: str) -> None:
    if FIELDS[field].is_time:
        assert pd.Timestamp(got) == pd.Timestamp(parse(want)), (got, want)
    else:
        assert got == want, (got, want)


def check_bounds(out: dict[str, Any], q: Query) -> None:
    assert set(out) == set(PANELS)
    assert len(out["top_traffic"]) <= 10
    assert len(out["top_people"]) <= 10
    assert len(out["histogram"]) <= q.bins
    assert len(out["age_groups"]) == 8
    assert isinstance(out["summary"], dict) and isinstance(out["distribution"], dict)
    timeline = out["timeline"]
    years = timeline["bucket"].dt.year.nunique() if len(timeline) else 0
    # Year buckets are the coarsest there are: a span of more years than buckets (only
    # possible with hostile times) gets one bucket a year, which 4-digit years bound.
    assert len(timeline) <= max(q.buckets, years)


def check_accounting(out: dict[str, Any], q: Query) -> None:
    """Every row in the window is either used by a panel or counted as skipped by it."""
    summary = out["summary"]
    rows, skipped = summary["rows"], summary["skipped"]
    assert out["distribution"]["count"] + skipped["distribution"] == rows
    assert int(out["histogram"]["count"].sum()) + skipped["histogram"] == rows
    assert int(out["timeline"]["sessions"].sum()) + skipped["timeline"] == rows
    for name in ("top_traffic", "top_people"):
        assert 0 <= skipped[name] <= rows
        if rows - skipped[name] > 0:
            assert len(out[name]) > 0, name


def top_traffic(oracle: Oracle, q: Query, nulls_first: bool) -> list[tuple[Any, Any, Any]]:
    """The oracle's ranking, with a NULL name placed where the database's ORDER BY puts it.

    The oracle ties NULL with the empty name; SQL leaves NULLs' place to each database
    (first on SQLite, last on PostgreSQL), which decides among rows that tie on both values.
    """
    f = oracle.frame[oracle.ok(q.field) & oracle.ok(q.versus)]
    people = [p if isinstance(p, str) else None for p in f["person_name"]]  # NaN: NULL
    rows = list(zip(people, f[q.field], f[q.versus], strict=True))
    rows.sort(key=lambda r: ((r[0] is None) != nulls_first, r[0] or ""))
    rows.sort(key=lambda r: (_desc(r[2]), _desc(r[1])))  # stable: names decide ties
    return rows[:10]


def mean_slack(count: int, lo: float, hi: float) -> float:
    """How far two right means of ``count`` whole numbers from ``lo`` to ``hi`` may differ.

    Databases and pandas add in doubles, in orders of their own; each addition may be off by
    half a unit in the last place of the sum, so the mean by ``count`` times that of the
    largest value: nothing for the table's INT values, 2,048 a value near 2**63, which SQLite
    stores."""
    return float(count) * max(abs(lo), abs(hi)) * 2.0**-52


def check_oracle(out: dict[str, Any], oracle: Oracle, q: Query, nulls_first: bool) -> None:
    f, v = q.field, q.versus
    summary = dict(out["summary"])
    summary.pop("version")
    assert summary == oracle.summary(f, v)

    want_traffic = top_traffic(oracle, q, nulls_first)
    got = out["top_traffic"]
    assert names(got["person_name"]) == names(r[0] for r in want_traffic)
    for (_, x, y), (_, row) in zip(want_traffic, got.iterrows(), strict=True):
        same_value(row[f], x, f)
        same_value(row[v], y, v)

    want_people = oracle.top_people(f)
    got = out["top_people"]
    assert names(got["person_name"]) == [name for name, _ in want_people]
    for value, (_, expected) in zip(got["value"], want_people, strict=True):
        same_value(value, expected, f)

    want_line = oracle.timeline(f, q.buckets)
    got = out["timeline"]
    assert list(got["sessions"]) == list(want_line["sessions"])
    for g, w in zip(got["bucket"], want_line["bucket"], strict=True):
        # (isoformat: strftime writes the year 1 as "1")
        assert g.isoformat(sep=" ").startswith(w), (g, w)
    if not FIELDS[f].is_time and len(got):
        for col in ("min", "max"):
            assert got[col].to_numpy() == pytest.approx(want_line[col].to_numpy(), rel=1e-9)
        for g, w in zip(got.itertuples(), want_line.itertuples(), strict=True):
            slack = mean_slack(w.sessions, w.min, w.max)
            assert g.mean == pytest.approx(w.mean, rel=1e-9, abs=slack), (g, w)

    want_dist = oracle.distribution(f)
    got_dist = out["distribution"]
    assert got_dist["count"] == want_dist["count"]
    for key in ("min", "q1", "median", "q3", "max", "mean"):
        if want_dist["count"] == 0:
            assert got_dist[key] is None
            continue
        value = got_dist[key]
        if isinstance(value, datetime):
            value = (value - datetime(1970, 1, 1)).total_seconds()
            assert value == pytest.approx(want_dist[key], abs=1e-5), key
        else:
            slack = 1e-9
            if key == "mean":
                slack += mean_slack(want_dist["count"], want_dist["min"], want_dist["max"])
            assert value == pytest.approx(want_dist[key], rel=1e-9, abs=slack), key

    assert list(out["histogram"]["count"]) == oracle.histogram(f, q.bins)

    got_ages = out["age_groups"]
    assert dict(zip(got_ages["age_group"], got_ages["users"], strict=True)) == oracle.age_groups()


# ---------------------------------------------------------------- the properties


@SETTINGS
@given(data=st.data())
def test_hostile_rows_never_break_a_panel_and_agree_with_the_oracle(
    store: Store, data: st.DataObject
) -> None:
    """Every panel answers within its size bound, counts what it skipped, and matches pandas."""
    given_rows = data.draw(rows(store.kind), label="rows")
    q = data.draw(queries(), label="query")
    sample = data.draw(samples(), label="sample")
    stored = store.fill(given_rows)
    # Every value comes back as it went in: astral characters, control characters, quotes.
    assert Counter(stored) == Counter(given_rows)
    with store.read.connect() as conn, sampling(*sample):
        out = compute(conn, store.source, q)
    check_bounds(out, q)
    check_accounting(out, q)
    oracle = Oracle(as_oracle_sees(stored), q.now, q.window)
    assert not (differ := disagreements(store, q, oracle)), differ
    check_oracle(out, oracle, q, store.kind == "sqlite")


def disagreements(store: Store, q: Query, oracle: Oracle) -> list[tuple[str, Any, bool]]:
    """Values the database's checks and the oracle's rules judge differently, for the report."""
    b = Builder(dialect_for(store.source), q)
    found = []
    with store.read.connect() as conn:
        for name in FIELDS:
            sql = (
                f"SELECT {name}, CASE WHEN {b.valid(name)} THEN 1 ELSE 0 END AS ok "
                f"FROM {table_sql(store.source)} WHERE {b.where()}"
            )
            stmt = b.statement(sql)
            got = Counter(
                (None if name in NUMBERS and not usable(v) else v, bool(ok))
                for v, ok in conn.execute(sa.text(stmt.sql), stmt.params)
            )
            want = Counter(
                (v if isinstance(v, int | str) else None, bool(ok))
                for v, ok in zip(oracle.frame[name], oracle.ok(name), strict=True)
            )
            found += [(name, v, ok) for (v, ok) in (got - want)]
    return found


@settings(SETTINGS, max_examples=12)
@given(data=st.data())
def test_many_rows_of_one_person_and_time_stay_bounded(store: Store, data: st.DataObject) -> None:
    """Hundreds of rows that tie on every ranked value still give at most ten rows a top."""
    count = data.draw(st.integers(11, 250), label="count")
    when = data.draw(stamps(), label="when")
    value = data.draw(number(store.kind), label="value")
    names = data.draw(st.lists(any_text(50), min_size=1, max_size=15), label="names")
    template = dict.fromkeys(COLUMN_NAMES)
    template.update(accessed_at=when, birth_date="1990-01-01")
    made = []
    for i in range(count):
        row = dict(template, person_name=names[i % len(names)], user_name=f"u{i % 37}")
        row.update(dict.fromkeys(NUMBERS, value))
        made.append(tuple(row[c] for c in COLUMN_NAMES))
    q = data.draw(queries(), label="query")
    sample = data.draw(samples(), label="sample")
    stored = store.fill(made)
    with store.read.connect() as conn, sampling(*sample):
        out = compute(conn, store.source, q)
    check_bounds(out, q)
    check_accounting(out, q)
    check_oracle(out, Oracle(as_oracle_sees(stored), q.now, q.window), q, store.kind == "sqlite")


CALENDAR = [
    "2026-02-30 10:00:00",
    "2026-09-31 10:00:00.5",
    "2025-02-29 00:00:00",
    "2100-02-29 00:00:00",
    "0000-01-01 00:00:00",
]


@pytest.mark.parametrize("stamp", CALENDAR)
def test_impossible_calendar_days_are_skipped_not_fatal(store: Store, stamp: str) -> None:
    """One row with a day the calendar lacks must not stop every panel of the dashboard (it once
    raised in Python's strptime, and in PostgreSQL's make_date for year 0): it is skipped."""
    good = dict.fromkeys(COLUMN_NAMES)
    good.update(person_name="Ana", user_name="ana", birth_date="1990-01-01", accessed_at=stamp)
    good.update(dict.fromkeys(NUMBERS, 5))
    store.fill([tuple(good[c] for c in COLUMN_NAMES)])
    for field in ("accessed_at", "upload_speed"):
        q = Query(field=field, now=NOW)
        with store.read.connect() as conn:
            out = compute(conn, store.source, q)
        check_bounds(out, q)
        assert out["summary"]["skipped"]["timeline"] == 1  # not a time there is
        assert out["timeline"].empty and out["summary"]["newest"] is None


def near_misses(minute: str) -> list[str]:
    """Texts that share a valid minute's first 16 characters but are no time."""
    return [
        minute + tail
        for tail in (
            ":5x",
            ":-5",
            ":60",
            ":6",
            ":00.",
            ":00.12a",
            ":00.1.2",
            ":00:12",
            ":00.1234567",
            ":00.١٢",
            ":٠٠",
            ":00 ",
            ":0٠.5",
            ":00,123",
            ":00.1234a6",
            ":00.12é",
            ":00é12",
            ":5٠.1",
        )
    ]


def separators_off(at: datetime) -> list[str]:
    """A time's text with one of its key's separators wrong (a tab sorts before the space,
    so that the present's bound cannot tell)."""
    forms = ("%Y-%m-%d\t%H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H-%M:%S", "%Y/%m-%d %H:%M:%S")
    return [at.strftime(form) for form in forms]


@pytest.mark.parametrize("window", ["all", "1h"])
def test_a_near_miss_in_a_valid_minute_is_skipped(store: Store, window: str) -> None:
    """PostgreSQL's timeline checks a row's text up to the minute once for all the rows of that
    minute (or up to the second in a short window), and the rest of it row by row: a row of a
    valid minute whose seconds or fraction are wrong is still left out, and counted."""
    good = dict.fromkeys(COLUMN_NAMES)
    at = NOW - timedelta(minutes=3)
    good.update(person_name="Ana", user_name="ana", accessed_at=at.strftime(TS_FORMAT))
    good.update(dict.fromkeys(NUMBERS, 5))
    misses = near_misses(at.strftime("%Y-%m-%d %H:%M"))
    second = at.strftime("%Y-%m-%d %H:%M:%S")
    misses += [second + tail for tail in ("x", ".x", ".12a", ",123", "é12", ".1é", "..1")]
    misses += separators_off(at)
    bad = [dict(good, accessed_at=text, upload_speed=999) for text in misses]
    store.fill([tuple(row[c] for c in COLUMN_NAMES) for row in [good, *bad]])
    for field in ("accessed_at", "upload_speed"):
        q = Query(field=field, window=window, now=NOW)
        with store.read.connect() as conn:
            out = compute(conn, store.source, q)
        check_bounds(out, q)
        timeline = out["timeline"]
        assert timeline["sessions"].sum() == 1, timeline
        # a window holds only rows whose time is valid: there they are not even in it
        in_window = len(bad) if window == "all" else 0
        assert out["summary"]["rows"] == 1 + in_window
        assert out["summary"]["skipped"]["timeline"] == in_window
        if field == "upload_speed":
            assert timeline["max"].max() == 5


@pytest.mark.parametrize("window", ["all", "24h"])
@pytest.mark.parametrize("bins", [30, 7, 1])
@pytest.mark.parametrize("field", ["session_duration", "consumed_traffic"])
def test_histogram_bins_are_exact_over_the_widest_range(
    store: Store, field: str, bins: int, window: str
) -> None:
    """SQLite's INT holds 64 bits: the histogram of values from the least to the greatest
    (whose difference overflows) puts each in its bin exactly, with 0 on the edge of bin 15 of
    30, -1 below it. (PostgreSQL's INT holds 32 bits: its widest range.) Both the histogram of
    a field of few values (added up from each value's count) and of one of many, over all rows
    and within a window (where SQLite counts each value of a field of many values too)."""
    if store.kind == "sqlite":
        values = [-(2**63) + 1, -(2**31), -1, 0, 1, 2**62, 2**63 - 2, 2**63 - 1]
    else:
        values = [-(2**31), -1, 0, 1, 2**30, 2**31 - 1]
    made = []
    for i, value in enumerate(values):
        row = dict.fromkeys(COLUMN_NAMES)
        row.update(person_name=f"P{i}", user_name=f"u{i}", birth_date="1990-01-01")
        row.update(dict.fromkeys(NUMBERS, 5), accessed_at=NOW.strftime(TS_FORMAT))
        row[field] = value
        made.append(tuple(row[c] for c in COLUMN_NAMES))
    stored = store.fill(made)
    q = Query(field=field, window=window, now=NOW, bins=bins)
    with store.read.connect() as conn:
        out = compute(conn, store.source, q)
    oracle = Oracle(as_oracle_sees(stored), q.now, q.window)
    assert list(out["histogram"]["count"]) == oracle.histogram(field, bins)
    assert int(out["histogram"]["count"].sum()) == len(values)
    check_oracle(out, oracle, q, store.kind == "sqlite")


def test_the_short_time_test_agrees_with_the_lookups() -> None:
    """PostgreSQL checks times in the statements that read a few rows (the sample's, those of
    the timeline's first and last groups) by a regular expression, and row by row elsewhere
    by lookups of the text's bytes: both say the same of good times, near misses, impossible
    days and junk."""
    postgres_available()
    at = NOW - timedelta(minutes=3)
    good = [
        at.strftime(TS_FORMAT),
        at.strftime("%Y-%m-%d %H:%M:%S"),
        "2024-02-29 10:00:00.5",
        "2000-02-29 23:59:59.123",
        "0001-01-01 00:00:00",
        "9999-12-31 23:59:59.999999",
    ]
    bad = near_misses(at.strftime("%Y-%m-%d %H:%M")) + separators_off(at)
    bad += [at.strftime("%Y-%m-%d %H") + tail for tail in (":6x:00", ":60:00", ":5:00")]
    bad += ["1900-02-29 10:00:00", "2026-02-29 10:00:00", "2026-04-31 10:00:00"]
    bad += ["0000-01-01 00:00:00", "2026-13-01 10:00:00", "2026-00-10 10:00:00"]
    bad += ["2026-11-28 24:00:00", "2026-11-28 10:00:00.", "2026-11-28 10:00:00\n"]
    bad += ["", "not a date", "2026-11-28", "2026-11-28 10:00", "٢٠٢٦-11-28 10:00:00"]
    d = dialect_for(source_from(POSTGRES_URL))
    engine = sa.create_engine(source_from(POSTGRES_URL).url)
    sql = (
        f"SELECT t, {d.valid_timestamp('t')} IS TRUE,"  # type: ignore[attr-defined]
        f" {d.few_valid_timestamp('t')} IS TRUE"
        " FROM unnest(CAST(:texts AS text[])) AS texts (t)"
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(sql), {"texts": good + bad}).all()
    finally:
        engine.dispose()
    assert [(t, a) for t, a, _ in rows] == [(t, t in good) for t in good + bad]
    assert [b for _, _, b in rows] == [a for _, a, _ in rows]


# Times at the edges of what the databases read: the first and last years, a leap day, just
# before 1970, fractions of one to six digits.
EDGE_TIMES = [
    "0001-01-01 00:00:00",
    "1969-12-31 23:59:59.999999",
    "1970-01-01 00:00:00.1",
    "2000-02-29 23:59:59.12",
    "2026-11-28 10:00:00.000100",
    "2026-11-28 10:00:00.12345",
    "9999-12-31 23:59:59.999999",
]


def micros_of(text: str) -> int:
    return (parse(text) - datetime(1970, 1, 1)) // timedelta(microseconds=1)


def test_a_time_read_by_the_cast_has_the_seconds_of_its_parts() -> None:
    """PostgreSQL reads the seconds of every row's valid time (the distribution's, the
    histogram's ends) by a cast of the text to a timestamp, and of a few (the timeline's keys)
    from the text's parts: the same number to the microsecond, from the year 1 to 9999, with
    and without fractions of one to six digits, on a leap day, before 1970."""
    postgres_available()
    texts = EDGE_TIMES
    d = dialect_for(source_from(POSTGRES_URL))
    engine = sa.create_engine(source_from(POSTGRES_URL).url)
    sql = (
        f"SELECT {d.row_seconds('t')}, {d.seconds('t')}"
        " FROM unnest(CAST(:texts AS text[])) AS texts (t)"
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(sql), {"texts": texts}).all()
    finally:
        engine.dispose()
    assert [a for a, _ in rows] == [b for _, b in rows]
    assert [int(a * 1_000_000) for a, _ in rows] == [micros_of(t) for t in texts]


def test_sqlite_reads_a_times_microseconds_exactly() -> None:
    """SQLite's histogram of a time counts ranges between its bins' first microseconds, from
    the least and greatest times' microseconds as exact INTs (its seconds are doubles): from
    the year 1 to 9999, with and without fractions, on a leap day, before 1970."""
    d = dialect_for(source_from("sqlite:////tmp/never-opened.db"))
    conn = sqlite3.connect(":memory:")
    try:
        sql = f"SELECT {d.micros(':t')}"
        got = [conn.execute(sql, {"t": t}).fetchone()[0] for t in EDGE_TIMES]
    finally:
        conn.close()
    assert got == [micros_of(t) for t in EDGE_TIMES]


@pytest.mark.parametrize(
    ("start", "span", "bins"),
    [
        ("2026-11-28 10:00:00", 30_000_000, 30),
        ("1969-12-31 23:59:58", 7_000_000, 3),
        ("0001-01-01 00:00:00", 1_000_001, 7),
        ("2026-11-28 10:00:00.5", 29, 30),
    ],
)
def test_time_bins_start_at_their_exact_microsecond(
    store: Store, start: str, span: int, bins: int
) -> None:
    """A time's bin is floor((t - lo) * bins / (hi - lo)), exactly: rows at each bin's first
    microsecond and at the one before, each time written with a fraction of six digits, of
    fewer, or with none where it is a whole second. (Both databases compare the rows' texts
    with the texts of the bins' starts: a time has several.) A span of 29 microseconds in 30 bins
    leaves a bin empty."""
    lo = parse(start)
    micro = timedelta(microseconds=1)
    times = {lo, lo + span * micro}
    for i in range(1, bins):
        first = -(-i * span // bins)  # the first microsecond of bin i
        times |= {lo + first * micro, lo + (first - 1) * micro}

    def texts(t: datetime) -> list[str]:
        full = f"{t:%m-%d %H:%M:%S.%f}".join([f"{t.year:04d}-", ""])  # (%Y writes 1 as 1)
        short = [full.rstrip("0").rstrip(".")] if full.endswith("0") else []
        return [full, *short]

    made = []
    for t in sorted(times):
        for text in texts(t):
            row = dict.fromkeys(COLUMN_NAMES)
            row.update(person_name="P", user_name=f"u{len(made)}", birth_date="1990-01-01")
            row.update(dict.fromkeys(NUMBERS, 5), accessed_at=text)
            made.append(tuple(row[c] for c in COLUMN_NAMES))
    store.fill(made)
    q = Query(field="accessed_at", now=NOW, bins=bins)
    with store.read.connect() as conn:
        out = compute(conn, store.source, q)
    want = [0] * bins
    for t in sorted(times):
        index = min((t - lo) // micro * bins // span, bins - 1)
        want[index] += len(texts(t))
    assert list(out["histogram"]["count"]) == want
    assert sum(want) == len(made)


@contextmanager
def sampling(percent: float, cut_rank: int = CUT_RANK) -> Iterator[None]:
    """PostgreSQL's panels with this share of the table's pages as their samples, and the top
    sessions' cut at this rank among the sample's rows."""
    with (
        mock.patch.object(panels, "SAMPLE_PERCENT", percent),
        mock.patch.object(panels, "CUT_RANK", cut_rank),
    ):
        yield


def hourly(store: Store, q: Query) -> bool:
    """Whether PostgreSQL's timeline makes its pass by the hour for ``q``."""
    b = Builder(dialect_for(store.source), q)
    value = None if FIELDS[q.field].is_time else q.field
    stmt = b.statement(b.d.hourly_sql(b, value, bucket_chars(b)))  # type: ignore[attr-defined]
    with store.read.connect() as conn:
        return bool(conn.execute(sa.text(stmt.sql), stmt.params).scalar())


@pytest.mark.parametrize("window", ["all", "7d"])
def test_a_near_miss_in_a_valid_hour_is_skipped(store: Store, window: str) -> None:
    """Over a span of days PostgreSQL's timeline groups rows by the hour, once a sample of the
    table's pages (here all of them) shows the span that long, and checks the minutes, seconds
    and fraction row by row: a row of a valid hour whose minutes or seconds are wrong is still
    left out, and counted. Every panel against the oracle."""
    good = dict.fromkeys(COLUMN_NAMES)
    good.update(person_name="Ana", user_name="ana", birth_date="1990-01-01")
    good.update(dict.fromkeys(NUMBERS, 5))
    at = NOW - timedelta(minutes=3)
    # 6 days and 23 hours and more: hourly buckets, within the last 7 days
    made = [
        dict(good, accessed_at=(NOW - timedelta(minutes=m)).strftime(TS_FORMAT))
        for m in (3, 600, 3000, 6000, 9000, 9999, 10_070)
    ]
    misses = near_misses(at.strftime("%Y-%m-%d %H:%M"))
    misses += [
        at.strftime("%Y-%m-%d %H") + tail
        for tail in (":6x:00", ":60:00", ":5:00", ":٠٠:00", ":0٠:00.5", ":00-00", ":00:0", " 00:00")
    ]
    misses += separators_off(at)
    made += [dict(good, accessed_at=text, upload_speed=999) for text in misses]
    stored = store.fill([tuple(row[c] for c in COLUMN_NAMES) for row in made])
    for field in ("accessed_at", "upload_speed"):
        q = Query(field=field, window=window, now=NOW)
        with sampling(100):
            if store.kind == "postgresql":
                assert hourly(store, q)
            with store.read.connect() as conn:
                out = compute(conn, store.source, q)
        check_bounds(out, q)
        check_accounting(out, q)
        oracle = Oracle(as_oracle_sees(stored), q.now, q.window)
        check_oracle(out, oracle, q, store.kind == "sqlite")
        assert out["timeline"]["sessions"].sum() == 7
        in_window = len(misses) if window == "all" else 0
        assert out["summary"]["skipped"]["timeline"] == in_window


@pytest.mark.parametrize("hint", ["TRUE", "FALSE", None])
@pytest.mark.parametrize("minutes", [50, 200, 1500, 5000, 43_000])
def test_the_hint_only_picks_the_passes(store: Store, minutes: int, hint: str | None) -> None:
    """Whatever PostgreSQL's sample says of the span (here also forced to say "long" or
    "short"), the timeline's buckets are those of the span's true width: spans of 50 minutes
    to 30 days, from ten-second buckets to hours. A sample of no row says nothing."""
    rows = []
    for i in range(120):
        at = NOW - timedelta(minutes=minutes * i / 119, microseconds=i)
        row = dict.fromkeys(COLUMN_NAMES)
        row.update(person_name=f"P{i % 7}", user_name=f"u{i % 11}", birth_date="1990-01-01")
        row.update(dict.fromkeys(NUMBERS, i), accessed_at=at.strftime(TS_FORMAT))
        rows.append(tuple(row[c] for c in COLUMN_NAMES))
    stored = store.fill(rows)
    q = Query(field="upload_speed", now=NOW)
    if store.kind == "postgresql":
        with sampling(0):
            assert not hourly(store, q)
    forced = f"SELECT {hint} AS hourly"
    with (
        sampling(100),
        mock.patch.object(PostgresDialect, "hourly_sql", lambda *args: forced)
        if hint
        else nullcontext(),
        store.read.connect() as conn,
    ):
        out = compute(conn, store.source, q)
    check_bounds(out, q)
    check_accounting(out, q)
    check_oracle(out, Oracle(as_oracle_sees(stored), q.now, q.window), q, store.kind == "sqlite")
    assert out["timeline"]["sessions"].sum() == 120


@pytest.mark.parametrize("window", ["all", "24h"])
def test_a_span_of_hours_gets_buckets_finer_than_a_minute(store: Store, window: str) -> None:
    """PostgreSQL's timeline groups rows by the minute first (by the second in short windows);
    85 minutes need ten-second buckets, which in the window "all" a second pass by the second
    makes. Every panel against the oracle."""
    rows = []
    for i in range(300):
        at = NOW - timedelta(seconds=17 * i, microseconds=250_000 * (i % 4))
        row = dict.fromkeys(COLUMN_NAMES)
        row.update(person_name=f"P{i % 7}", user_name=f"u{i % 11}", birth_date="1990-01-01")
        row.update(dict.fromkeys(NUMBERS, i), accessed_at=at.strftime(TS_FORMAT))
        rows.append(tuple(row[c] for c in COLUMN_NAMES))
    stored = store.fill(rows)
    q = Query(window=window, now=NOW)
    with store.read.connect() as conn:
        out = compute(conn, store.source, q)
    check_bounds(out, q)
    check_accounting(out, q)
    check_oracle(out, Oracle(as_oracle_sees(stored), q.now, q.window), q, store.kind == "sqlite")
    assert len(out["timeline"]) > 100  # finer than a minute: 85 minutes in ten-second buckets


@pytest.mark.parametrize("cut_rank", [3, 10, 12, 1000])
@pytest.mark.parametrize("versus", ["consumed_traffic", "accessed_at"])
def test_the_top_sessions_and_people_found_in_the_values_pass(
    store: Store, cut_rank: int, versus: str
) -> None:
    """PostgreSQL ranks the top sessions (and the top people) among the rows at or above a cut,
    from a sample, in the values' pass when ten rows (ten people) or more are: here the whole
    table is the sample, and the cut its 10th, 12th or last row. It ranks them in a pass of
    their own when fewer are (a cut at the 3rd row). Ties at the cut, rows alike, rows of no
    usable value above it; against the oracle."""
    made = []
    for i in range(40):
        row = dict.fromkeys(COLUMN_NAMES)
        at = NOW - timedelta(minutes=i // 3)  # three rows a minute: ties on accessed_at too
        row.update(person_name=f"P{i % 13}", user_name=f"u{i}", accessed_at=at.strftime(TS_FORMAT))
        row.update(dict.fromkeys(NUMBERS, 400 - 10 * (i // 2)), upload_speed=i)
        made.append(row)
    made += [dict(made[9]) for _ in range(12)]  # rows alike, from the 10th row down
    made += [dict(made[0], upload_speed=None), dict(made[0], consumed_traffic=None)]
    made += [dict(made[0], accessed_at="2026-11-28 99:00:00", upload_speed=99, person_name="")]
    stored = store.fill([tuple(row[c] for c in COLUMN_NAMES) for row in made])
    q = Query(field="upload_speed", versus=versus, now=NOW)
    with sampling(100, cut_rank), store.read.connect() as conn:
        out = compute(conn, store.source, q)
    check_bounds(out, q)
    check_accounting(out, q)
    check_oracle(out, Oracle(as_oracle_sees(stored), q.now, q.window), q, store.kind == "sqlite")
    assert len(out["top_traffic"]) == len(out["top_people"]) == 10


@pytest.mark.parametrize(
    "stamps",
    [
        ["0026-11-28 11:59:59.9"],
        ["1969-12-31 23:59:59.5", "1969-12-31 23:50:00"],
        ["1969-12-31 23:59:59.5", "1970-01-01 00:00:00.5"],
        ["1900-06-01 10:00:00.25", "1900-06-01 13:20:00"],
    ],
)
def test_times_before_1970_fall_in_their_buckets(store: Store, stamps: list[str]) -> None:
    """SQLite's timeline starts its first bucket at the first row's second rounded down; before
    1970 (negative seconds) a cast rounded it up, past the row, which then fell in no bucket
    (found by a 1,500-example run: one row in the year 26). Against the oracle."""
    made = []
    for i, at in enumerate(stamps):
        row = dict.fromkeys(COLUMN_NAMES)
        row.update(person_name="Ana", user_name=f"u{i}", birth_date="1890-01-01", accessed_at=at)
        row.update(dict.fromkeys(NUMBERS, i + 1))
        made.append(tuple(row[c] for c in COLUMN_NAMES))
    stored = store.fill(made)
    for field in ("accessed_at", "upload_speed"):
        q = Query(field=field, now=NOW)
        with store.read.connect() as conn:
            out = compute(conn, store.source, q)
        check_accounting(out, q)
        oracle = Oracle(as_oracle_sees(stored), q.now, q.window)
        check_oracle(out, oracle, q, store.kind == "sqlite")
        assert out["timeline"]["sessions"].sum() == len(stamps)


def test_a_users_latest_well_formed_birth_date_counts(store: Store) -> None:
    """A user's age comes from their latest birth date that is a date: a later junk date (of
    the right shape or not) must not hide an earlier one."""
    good = dict.fromkeys(COLUMN_NAMES)
    good.update(person_name="Ana", user_name="ana", accessed_at=NOW.strftime(TS_FORMAT))
    good.update(dict.fromkeys(NUMBERS, 5))
    rows = [
        dict(good, birth_date="1990-01-01"),  # 36 on NOW's day
        dict(good, birth_date="1999-13-45"),  # later as text, and no date
        dict(good, user_name="bob", birth_date="2000-1x-01"),  # no date at all: unknown
        dict(good, user_name="cy", birth_date="2010-05-05"),  # 16
        dict(good, user_name="cy", birth_date="2010-05-0٥"),
    ]
    store.fill([tuple(row[c] for c in COLUMN_NAMES) for row in rows])
    with store.read.connect() as conn:
        out = compute(conn, store.source, Query(now=NOW))
    users = dict(zip(out["age_groups"]["age_group"], out["age_groups"]["users"], strict=True))
    assert users == {**dict.fromkeys(users, 0), "35-44": 1, "unknown": 1, "under 18": 1}
    assert out["summary"]["users"] == 3


def test_leap_days_of_leap_years_are_times(store: Store) -> None:
    good = dict.fromkeys(COLUMN_NAMES)
    good.update(person_name="Ana", user_name="ana", accessed_at="2024-02-29 10:00:00")
    good.update(dict.fromkeys(NUMBERS, 5))
    other = dict(good, accessed_at="2000-02-29 10:00:00")
    store.fill([tuple(row[c] for c in COLUMN_NAMES) for row in (good, other)])
    with store.read.connect() as conn:
        out = compute(conn, store.source, Query(field="accessed_at", now=NOW))
    assert out["summary"]["skipped"]["timeline"] == 0
    assert out["summary"]["newest"] == datetime(2024, 2, 29, 10)


@pytest.mark.parametrize(
    ("span", "sampled", "chars", "finer"),
    [
        # within a minute of 998 minutes (buckets of a minute up to it, of ten minutes past it)
        (timedelta(seconds=59_880 - 20), 0.1, 16, timedelta(minutes=3)),
        (timedelta(seconds=59_880 + 20), 0.1, 15, timedelta(minutes=3)),
        # within an hour of 998 hours (of an hour, of a day), from the pass by the hour (the
        # whole table sampled)
        (timedelta(hours=998, minutes=-20), 100, 13, timedelta(hours=1)),
        (timedelta(hours=998, minutes=20), 100, 10, timedelta(hours=1)),
        # within an hour past 9,980 minutes (buckets of ten minutes up to it, of an hour past
        # it): the hour's groups cannot tell, so the minute's pass runs too, and the buckets
        # still come from the hour's
        (timedelta(seconds=599_400 + 1200), 100, 13, timedelta(minutes=5)),
    ],
)
def test_a_span_near_a_step_between_widths_gets_the_right_one(
    store: Store, span: timedelta, sampled: float, chars: int, finer: timedelta
) -> None:
    """PostgreSQL takes the timeline's span from its first and last groups' keys, which fix it
    to within a key's length of time; where a step between bucket widths falls within that,
    it finds the first and last rows. Here the same two keys hold spans on either side of a
    step. Rows of no value later than the last with one (in its group and in a group of its
    own) do not lengthen the span, and the newest row is still the summary's. (The second
    row, ``finer`` after the first, shares its bucket of the wider width, not of the finer.)"""
    last = NOW - timedelta(minutes=1, seconds=30)
    first = last - span
    made = []
    for i, at in enumerate([first, first + finer, first + span / 2, last]):
        row = dict.fromkeys(COLUMN_NAMES)
        row.update(person_name="Ana", user_name=f"u{i}", accessed_at=at.strftime(TS_FORMAT))
        made.append(dict(row, **dict.fromkeys(NUMBERS, i + 1)))
    made.append(dict(made[-1], upload_speed=None, accessed_at=(last + timedelta(seconds=5))))
    newest = NOW - timedelta(seconds=10)
    made.append(dict(made[-1], accessed_at=newest))
    for row in made[-2:]:
        row["accessed_at"] = row["accessed_at"].strftime(TS_FORMAT)
    stored = store.fill([tuple(row[c] for c in COLUMN_NAMES) for row in made])
    q = Query(field="upload_speed", now=NOW)
    oracle = Oracle(as_oracle_sees(stored), q.now, q.window)
    assert {len(key) for key in oracle.timeline(q.field)["bucket"]} == {chars}
    with sampling(sampled), store.read.connect() as conn:
        assert store.kind == "sqlite" or hourly(store, q) == (sampled == 100)
        out = compute(conn, store.source, q)
    check_accounting(out, q)
    check_oracle(out, oracle, q, store.kind == "sqlite")
    assert out["summary"]["newest"] == newest


@pytest.mark.xfail(
    strict=True,
    reason="Year buckets are the coarsest the timeline has: a span of more years than buckets "
    "gives one bucket a year, more than asked for: see the hostile-input report.",
)
def test_the_timeline_keeps_to_its_buckets_over_many_years(store: Store) -> None:
    """Valid times years apart (hostile, but well formed) and the fewest buckets allowed."""
    made = []
    for year in (1990, 2000, 2010, 2020):
        row = dict.fromkeys(COLUMN_NAMES)
        row.update(person_name="Ana", user_name="ana", accessed_at=f"{year}-06-01 00:00:00")
        row.update(dict.fromkeys(NUMBERS, 1))
        made.append(tuple(row[c] for c in COLUMN_NAMES))
    store.fill(made)
    q = Query(field="upload_speed", now=NOW, buckets=2)
    with store.read.connect() as conn:
        timeline = run(conn, store.source, "timeline", q)
    assert timeline["sessions"].sum() == 4
    assert len(timeline) <= q.buckets


# ---------------------------------------------------------------- refused before any SQL

JUNK = st.one_of(
    st.text(chars(), max_size=80),
    st.sampled_from(FRAGMENTS),
    st.sampled_from([f + " " for f in FIELDS] + [f.upper() for f in FIELDS] + [" all", "ALL"]),
    st.integers(),
    st.floats(allow_nan=True),
    st.none(),
    st.lists(st.sampled_from(list(FIELDS)), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def one_sentence(message: str) -> None:
    assert message and "\n" not in message and "\r" not in message, message
    assert message.endswith("."), message
    assert "Traceback" not in message


class Statements:
    """The statements an engine sends, counted from SQLAlchemy's event."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.sent: list[str] = []

    def listen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.sent.append(statement)

    def __enter__(self) -> list[str]:
        sa.event.listen(self.engine, "before_cursor_execute", self.listen)
        return self.sent

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self.listen)


@SETTINGS
@given(value=JUNK, where=st.sampled_from(["field", "versus", "window"]))
def test_values_outside_the_lists_are_refused_before_any_sql(
    store: Store, value: Any, where: str
) -> None:
    """A field, versus or window outside the lists, of any type, never reaches a statement."""
    allowed = WINDOWS if where == "window" else FIELDS
    if isinstance(value, str) and value in allowed:
        return  # an allowed value, drawn by chance
    with (
        Statements(store.read) as sent,
        store.read.connect() as conn,
        pytest.raises(QueryError) as caught,
    ):
        run(conn, store.source, "summary", Query(**{where: value}))
    one_sentence(str(caught.value))
    assert sent == []


@SETTINGS
@given(name=JUNK)
def test_panel_names_outside_the_registry_are_refused_before_any_sql(
    store: Store, name: Any
) -> None:
    if isinstance(name, str) and name in PANELS:
        return
    with (
        Statements(store.read) as sent,
        store.read.connect() as conn,
        pytest.raises(QueryError) as caught,
    ):
        run(conn, store.source, name, Query(now=NOW))
    one_sentence(str(caught.value))
    assert sent == []


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@settings(max_examples=200, deadline=None, database=None)
@given(
    table=st.one_of(
        st.text(chars(), max_size=80),
        st.sampled_from(FRAGMENTS),
        st.builds(
            lambda a, b, sep: a + sep + b,
            st.from_regex(IDENTIFIER, fullmatch=True),
            st.text(chars(), max_size=20),
            st.sampled_from([".", "", " ", ";", '"']),
        ),
    )
)
def test_table_names_outside_the_rules_are_refused(table: str) -> None:
    """Only one or two plain identifiers joined by a dot ever reach SQL, as they are written."""
    if table == "":
        return  # no name given: the setting's applies
    parts = table.strip().split(".")
    allowed = len(parts) <= 2 and all(IDENTIFIER.fullmatch(p) for p in parts)
    if not allowed:
        with pytest.raises(SourceError) as caught:
            source_from("sqlite:////tmp/never-opened.db", table)
        one_sentence(str(caught.value))
        return
    source = source_from("sqlite:////tmp/never-opened.db", table)
    assert re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?", table_sql(source))


@settings(max_examples=100, deadline=None, database=None)
@given(
    name=st.sampled_from(["field", "window", "timeline_buckets", "histogram_bins"]),
    value=st.one_of(
        st.text(chars(), min_size=1, max_size=40), st.sampled_from(FRAGMENTS + ["0", "-5", "1e3"])
    ),
)
def test_settings_outside_the_lists_are_refused(name: str, value: str) -> None:
    """A bad DRIVENDATA_FIELD, _WINDOW, _TIMELINE_BUCKETS or _HISTOGRAM_BINS is one sentence."""
    env = f"DRIVENDATA_{name.upper()}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(env, value)
        stripped = value.strip()
        try:
            q = Query.from_settings(now=NOW)
        except (QueryError, dd_settings.SettingError) as exc:
            one_sentence(str(exc))
            return
    # accepted: then it was empty after stripping (the default applies) or an allowed value
    if name in ("field", "window"):
        assert stripped == "" or getattr(q, name) == stripped
        assert getattr(q, name) in (FIELDS if name == "field" else WINDOWS)
    else:
        got = q.buckets if name == "timeline_buckets" else q.bins
        assert stripped == "" or got == int(stripped)
