"""Each panel, on a real SQLite file and the real PostgreSQL server, against the pandas oracle."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from drivendata import panels
from drivendata.database import (
    Source,
    SourceError,
    limit_parallel_workers,
    reader,
    source_from,
    table_sql,
)
from drivendata.panels import (
    FIELDS,
    PANELS,
    Query,
    QueryError,
    compute,
    data_version,
    run,
    statements,
)
from drivendata.stream import Generator, insert

from .conftest import POSTGRES_URL, Dataset, postgres_available
from .oracle import Oracle, parse

CASES = [
    (field, window)
    for field in FIELDS
    for window in (["all", "24h", "15m"] if field in ("upload_speed", "accessed_at") else ["all"])
] + [("session_duration", "7d"), ("consumed_traffic", "1h")]


def _same(db: Any, expected: Any, field: str) -> None:
    if FIELDS[field].is_time:
        assert pd.Timestamp(db) == pd.Timestamp(parse(expected)), (db, expected)
    else:
        assert db == expected


@pytest.fixture(scope="module")
def results(dataset: Dataset) -> dict[tuple[str, str], dict[str, Any]]:
    engine = reader(dataset.source)
    out = {}
    with engine.connect() as conn:
        for field, window in CASES:
            q = Query(field=field, window=window, now=dataset.now)
            out[field, window] = compute(conn, dataset.source, q)
    engine.dispose()
    return out


@pytest.mark.parametrize(("field", "window"), CASES)
def test_top_traffic(dataset: Dataset, results: dict, field: str, window: str) -> None:
    got = results[field, window]["top_traffic"]
    want = Oracle(dataset.rows, dataset.now, window).top_traffic(field, "consumed_traffic")
    assert len(got) == len(want) <= 10
    assert list(got["person_name"]) == [r[0] for r in want]
    for (_, x, y), (_, row) in zip(want, got.iterrows(), strict=True):
        _same(row[field], x, field)
        assert row["consumed_traffic"] == y


@pytest.mark.parametrize(("field", "window"), CASES)
def test_top_people(dataset: Dataset, results: dict, field: str, window: str) -> None:
    got = results[field, window]["top_people"]
    want = Oracle(dataset.rows, dataset.now, window).top_people(field)
    assert list(got["person_name"]) == [name for name, _ in want]
    for value, (_, expected) in zip(got["value"], want, strict=True):
        _same(value, expected, field)


@pytest.mark.parametrize("few", [0, 10**9])
@pytest.mark.parametrize(("field", "window"), [c for c in CASES if c[1] != "all"])
def test_tops_within_a_window_of_many_or_few_rows(
    dataset: Dataset, field: str, window: str, few: int
) -> None:
    """SQLite ranks a window's top sessions and people among its rows when they are few, and
    through the value's index otherwise: both agree with the oracle (the threshold moved so
    that this table's windows count as many rows, then as few)."""
    engine = reader(dataset.source)
    try:
        with pytest.MonkeyPatch.context() as patch, engine.connect() as conn:
            patch.setattr(panels, "FEW_WINDOW_ROWS", few)
            q = Query(field=field, window=window, now=dataset.now)
            out = compute(conn, dataset.source, q)
    finally:
        engine.dispose()
    oracle = Oracle(dataset.rows, dataset.now, window)
    want = oracle.top_traffic(field, "consumed_traffic")
    assert list(out["top_traffic"]["person_name"]) == [r[0] for r in want]
    assert list(out["top_traffic"]["consumed_traffic"]) == [r[2] for r in want]
    people = oracle.top_people(field)
    assert list(out["top_people"]["person_name"]) == [name for name, _ in people]


@pytest.mark.parametrize(("field", "window"), CASES)
def test_timeline(dataset: Dataset, results: dict, field: str, window: str) -> None:
    got = results[field, window]["timeline"]
    want = Oracle(dataset.rows, dataset.now, window).timeline(field)
    assert len(got) == len(want) <= 1000
    assert list(got["sessions"]) == list(want["sessions"])
    for g, w in zip(got["bucket"], want["bucket"], strict=True):
        assert g.strftime("%Y-%m-%d %H:%M:%S").startswith(w), (g, w)
    if not FIELDS[field].is_time:
        for col in ("min", "mean", "max"):
            assert got[col].to_numpy() == pytest.approx(want[col].to_numpy())


@pytest.mark.parametrize(("field", "window"), CASES)
def test_distribution(dataset: Dataset, results: dict, field: str, window: str) -> None:
    got = results[field, window]["distribution"]
    want = Oracle(dataset.rows, dataset.now, window).distribution(field)
    assert got["count"] == want["count"]
    for key in ("min", "q1", "median", "q3", "max", "mean"):
        value = got[key]
        if isinstance(value, datetime):  # to the microsecond the text holds, less rounding
            value = (value - datetime(1970, 1, 1)).total_seconds()
            assert value == pytest.approx(want[key], abs=1e-5), key
        else:
            assert value == pytest.approx(want[key], rel=1e-12, abs=1e-9), key


@pytest.mark.parametrize(("field", "window"), CASES)
def test_histogram(dataset: Dataset, results: dict, field: str, window: str) -> None:
    got = results[field, window]["histogram"]
    want = Oracle(dataset.rows, dataset.now, window).histogram(field)
    assert list(got["count"]) == want
    assert len(got) <= 30


@pytest.mark.parametrize(("field", "window"), CASES)
def test_age_groups(dataset: Dataset, results: dict, field: str, window: str) -> None:
    got = results[field, window]["age_groups"]
    want = Oracle(dataset.rows, dataset.now, window).age_groups()
    assert dict(zip(got["age_group"], got["users"], strict=True)) == want
    assert got["share"].sum() == pytest.approx(100.0)


@pytest.mark.parametrize(("field", "window"), CASES)
def test_summary(dataset: Dataset, results: dict, field: str, window: str) -> None:
    got = results[field, window]["summary"]
    want = Oracle(dataset.rows, dataset.now, window).summary(field, "consumed_traffic")
    version = got.pop("version")
    assert got == want
    with reader(dataset.source).connect() as conn:
        assert version == data_version(conn, dataset.source)


def test_versus_replaces_the_ranking(dataset: Dataset) -> None:
    engine = reader(dataset.source)
    q = Query(field="download_speed", versus="session_duration", now=dataset.now)
    with engine.connect() as conn:
        got = run(conn, dataset.source, "top_traffic", q)
    want = Oracle(dataset.rows, dataset.now, "all").top_traffic(
        "download_speed", "session_duration"
    )
    assert list(got["session_duration"]) == [r[2] for r in want]
    assert list(got["download_speed"]) == [r[1] for r in want]


def test_junk_is_counted_not_fatal(dataset: Dataset, results: dict) -> None:
    skipped = results["upload_speed", "all"]["summary"]["skipped"]
    assert skipped["top_people"] >= 3  # two empty names and a missing upload speed
    assert skipped["timeline"] >= 8  # missing, empty and malformed arrival times
    assert (
        results["upload_speed", "all"]["age_groups"].set_index("age_group").loc["unknown", "users"]
        >= 1
    )


def test_results_stay_small_whatever_the_rows(dataset: Dataset, results: dict) -> None:
    for out in results.values():
        assert len(out["top_traffic"]) <= 10
        assert len(out["top_people"]) <= 10
        assert len(out["timeline"]) <= 1000
        assert len(out["histogram"]) <= 30
        assert len(out["age_groups"]) == 8


@pytest.mark.parametrize("field", ["upload_speed", "consumed_traffic", "accessed_at"])
def test_empty_table_gives_empty_panels(empty_source: Any, field: str) -> None:
    from .conftest import load

    load(empty_source, [])
    engine = reader(empty_source)
    with engine.connect() as conn:
        out = compute(conn, empty_source, Query(field=field))
    assert out["top_traffic"].empty and out["top_people"].empty and out["timeline"].empty
    assert out["distribution"]["count"] == 0 and out["histogram"].empty
    assert out["summary"]["rows"] == 0 and out["summary"]["newest"] is None
    assert out["age_groups"]["users"].sum() == 0


def test_data_version_changes_when_rows_arrive(empty_source: Any) -> None:
    from .conftest import load

    load(empty_source, Generator(1).rows([datetime(2026, 11, 28, 11, 0)] * 3))
    engine = reader(empty_source)
    with engine.connect() as conn:
        before = data_version(conn, empty_source)
    load(empty_source, Generator(2).rows([datetime(2026, 11, 28, 11, 1)]))
    changed = False
    # PostgreSQL publishes its table statistics within about a second of a commit
    for _ in range(50):
        with engine.connect() as conn:
            if data_version(conn, empty_source) != before:
                changed = True
                break
        time.sleep(0.1)
    assert changed


def test_reading_connections_cannot_write(dataset: Dataset) -> None:
    engine = reader(dataset.source)
    with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError):
        conn.execute(sa.text(f"DELETE FROM {table_sql(dataset.source)}"))
    engine.dispose()


def _reader_where_the_server_sets(source: Source, setting: str) -> sa.Engine:
    """A reader of the real PostgreSQL server whose sessions start with ``setting`` made, as a
    DBA makes it for a role or database, before the reader's own steps run."""
    postgres_available()
    engine = reader(source)

    @sa.event.listens_for(engine, "connect", insert=True)
    def server_setting(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET {setting}")
        dbapi_conn.commit()

    return engine


@pytest.mark.parametrize(("server", "session"), [("4MB", "16MB"), ("64MB", "64MB")])
def test_postgresql_readers_raise_work_mem_never_lower_it(server: str, session: str) -> None:
    """The panels' sessions get WORK_MEM for their hash tables where the server gives less, and
    keep what it gives where that is more (the role's or the database's setting, as a DBA
    makes it; here the same, set before the reader's own step runs)."""
    engine = _reader_where_the_server_sets(
        source_from(POSTGRES_URL, "streaming_layer.streaming_data"), f"work_mem = '{server}'"
    )
    with engine.connect() as conn:
        assert conn.execute(sa.text("SHOW work_mem")).scalar() == session
    engine.dispose()


def _parallel_setting(conn: sa.Connection) -> int:
    return int(conn.execute(sa.text("SHOW max_parallel_workers_per_gather")).scalar_one())


@pytest.mark.parametrize(
    ("server", "asked", "used"), [(2, 0, 0), (2, 1, 1), (1, 3, 1), (2, None, 2)]
)
def test_postgresql_parallel_workers_are_limited_for_the_transaction_only(
    server: int, asked: int | None, used: int
) -> None:
    """A refresh's statement uses at most the source's parallel workers, never more than the
    server allows (here a session's setting, made before the reader's steps run, stands for
    the server's); the limit ends with the transaction, so a connection taken again from the
    pool plans as the server says."""
    source = source_from(POSTGRES_URL, "streaming_layer.streaming_data")
    source = Source(source.url, source.table, asked)
    engine = _reader_where_the_server_sets(source, f"max_parallel_workers_per_gather = {server}")
    with engine.connect() as conn:
        limit_parallel_workers(conn, source)
        assert _parallel_setting(conn) == used
    with engine.connect() as conn:
        assert _parallel_setting(conn) == server
    engine.dispose()


@pytest.mark.parametrize(("raw", "workers"), [("0", 0), ("3", 3), ("server", None), ("", 0)])
def test_the_parallel_workers_setting_is_read_into_the_source(
    monkeypatch: pytest.MonkeyPatch, raw: str, workers: int | None
) -> None:
    monkeypatch.setenv("DRIVENDATA_PG_PARALLEL_WORKERS", raw)
    assert source_from(POSTGRES_URL).parallel_workers == workers


@pytest.mark.parametrize("raw", ["-1", "two", "1.5", "0; SET x", "²"])
def test_a_bad_parallel_workers_setting_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("DRIVENDATA_PG_PARALLEL_WORKERS", raw)
    with pytest.raises(SourceError) as info:
        source_from(POSTGRES_URL)
    text = str(info.value)
    assert text.startswith(f"DRIVENDATA_PG_PARALLEL_WORKERS={raw!r} is neither")
    assert text.count(". ") == 0 and text.endswith(".")
    # (a setting of PostgreSQL's alone: another source does not read it)
    assert source_from("sqlite:////tmp/store.db").parallel_workers is None


def test_compute_all_runs_postgresql_statements_within_the_limit(
    dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two statements at a time, each on a connection limited to the source's workers; one at
    a time, each as the server plans it. Both give what one connection computes."""
    source = Source(dataset.source.url, dataset.source.table, 0)
    seen: list[int | None] = []
    shared = panels._run_shared

    def recording(conn: sa.Connection, *args: Any) -> Any:
        seen.append(_parallel_setting(conn) if source.kind == "postgresql" else None)
        return shared(conn, *args)

    monkeypatch.setattr(panels, "_run_shared", recording)
    engine = reader(source)
    q = Query(now=dataset.now)
    together = panels.compute_all(engine, source, q, workers=2)
    assert seen and set(seen) == ({0} if source.kind == "postgresql" else {None})
    seen.clear()
    one_by_one = panels.compute_all(engine, source, q, workers=1)
    assert source.kind != "postgresql" or 0 not in seen
    with engine.connect() as conn:
        alone = compute(conn, source, q)
    engine.dispose()
    for name in PANELS:
        assert repr(together[name]) == repr(alone[name]) == repr(one_by_one[name]), name


@pytest.mark.parametrize(
    "field",
    ["upload_speed; DROP TABLE x", "email", "1=1", "upload_speed--", "", "accessed_at "],
)
def test_fields_outside_the_list_are_refused(field: str) -> None:
    with pytest.raises(QueryError, match="is not a field"):
        Query(field=field)
    with pytest.raises(QueryError, match="is not a field"):
        Query(versus=field)


@pytest.mark.parametrize("window", ["1d", "all; DROP TABLE x", "15 minutes", ""])
def test_windows_outside_the_list_are_refused(window: str) -> None:
    with pytest.raises(QueryError, match="is not a time window"):
        Query(window=window)


@pytest.mark.parametrize(
    "table",
    [
        "streaming_data; DROP TABLE users",
        'streaming_layer."streaming_data"',
        "a.b.c",
        "streaming layer.data",
        "x.1table",
        ".",
    ],
)
def test_table_names_outside_the_rules_are_refused(table: str) -> None:
    with pytest.raises(SourceError, match="table name"):
        source_from("sqlite:////tmp/x.db", table)


def test_every_panel_has_one_statement_per_dialect() -> None:
    for url in ("sqlite:////tmp/x.db", "postgresql://u:secret@h:5432/db"):
        source = source_from(url)
        stmts = statements(source, Query())
        assert list(stmts) == list(PANELS)
        for stmt in stmts.values():
            assert "secret" not in stmt.literal()
            assert not re.search(r"(?<![:\w]):[a-z_]+", stmt.literal()), "unbound parameter"


def test_plain_postgresql_urls_use_psycopg3() -> None:
    source = source_from("postgresql://user:pw@db.example:5432/sessions")
    assert source.url.drivername == "postgresql+psycopg"
    assert "pw" not in source.display


def test_the_stream_generator_is_deterministic() -> None:
    when = [datetime(2026, 11, 28, 12, 0)] * 5
    assert Generator(3).rows(when) == Generator(3).rows(when)
    assert Generator(3).rows(when) != Generator(4).rows(when)


def test_insert_writes_every_column(empty_source: Any) -> None:
    from .conftest import load

    rows = Generator(5).rows([datetime(2026, 11, 28, 12, 0)] * 4)
    load(empty_source, rows)
    engine = reader(empty_source)
    with engine.connect() as conn:
        got = conn.execute(sa.text(f"SELECT * FROM {table_sql(empty_source)}")).fetchall()
    assert sorted(tuple(r) for r in got) == sorted(rows)
    assert insert  # the same function the generator uses
