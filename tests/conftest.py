"""Real databases for the tests: a SQLite file and the PostgreSQL server on this machine."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from drivendata.database import COLUMN_NAMES, Source, create_table, source_from, writer
from drivendata.stream import Generator, Row, insert

POSTGRES_URL = os.environ.get(
    "DRIVENDATA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
NOW = datetime(2026, 11, 28, 12, 0, 0)


def junk_rows(gen: Generator, now: datetime) -> list[Row]:
    """Rows as real pipelines write them now and then: NULLs, empty and malformed values."""
    base = gen.rows([now - timedelta(minutes=m) for m in range(1, 31)])
    at = COLUMN_NAMES.index("accessed_at")
    born = COLUMN_NAMES.index("birth_date")
    person = COLUMN_NAMES.index("person_name")
    user = COLUMN_NAMES.index("user_name")
    numbers = [COLUMN_NAMES.index(c) for c in ("session_duration", "download_speed")]
    numbers += [COLUMN_NAMES.index(c) for c in ("upload_speed", "consumed_traffic")]
    edits: list[dict[int, object]] = [
        {at: None},
        {at: ""},
        {at: "not a date"},
        {at: (now - timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S")},  # no fraction
        {at: (now - timedelta(minutes=3)).strftime("%Y-%m-%d %H:%M:%S")},
        {at: (now + timedelta(days=400)).strftime("%Y-%m-%d %H:%M:%S.%f")},  # future
        {at: (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")},  # other format
        {at: "2026-13-01 10:00:00"},
        {at: "2026-11-27 10:00:00.1234567"},  # seven fraction digits
        # the latest and the earliest arrival that the shape alone lets through are not valid
        {at: (now - timedelta(microseconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f") + "0"},
        {at: "1971-01-01 00:00:0x"},
        {born: None},
        {born: ""},
        {born: "not a date"},
        {born: "2099-01-01"},
        {born: "14/03/1987"},
        {person: None},
        {person: ""},
        {user: None},
        {user: ""},
        {numbers[0]: None},
        {numbers[1]: None},
        {numbers[2]: None},
        {numbers[3]: None},
        {numbers[2]: None, at: "garbage"},
        {person: "Zoë Ünicode-Ăâ", numbers[2]: 800},
        {person: "Robert'); DROP TABLE streaming_data;--"},
    ]
    rows = []
    for row, edit in zip(base, edits, strict=False):
        values = list(row)
        for index, value in edit.items():
            values[index] = value
        rows.append(tuple(values))
    return rows


@dataclass
class Dataset:
    source: Source
    rows: list[Row]
    now: datetime


def make_rows(seed: int = 7, count: int = 3000) -> list[Row]:
    gen = Generator(seed)
    rng = np.random.default_rng(seed)
    offsets = np.sort(rng.integers(0, 10 * 86_400_000_000, count))[::-1]
    stamps = np.datetime64(NOW, "us") - offsets.astype("timedelta64[us]")
    rows = gen.rows(stamps)
    # dates without fractional seconds are valid and common
    at = COLUMN_NAMES.index("accessed_at")
    for i in range(0, len(rows), 17):
        values = list(rows[i])
        values[at] = str(values[at])[:19]
        rows[i] = tuple(values)
    return rows + junk_rows(gen, NOW)


ROWS = make_rows()


def load(source: Source, rows: list[Row]) -> None:
    engine = writer(source)
    try:
        with engine.begin() as conn:
            create_table(conn, source)
            insert(conn, source, rows)
    finally:
        engine.dispose()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a server a test started: politely, then firmly."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def postgres_available() -> None:
    """Fail (never skip) when the server the tests need is not there."""
    engine = sa.create_engine(source_from(POSTGRES_URL).url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        pytest.fail(
            f"PostgreSQL at {POSTGRES_URL} is not reachable ({exc.__class__.__name__}); start it "
            "with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`."
        )
    finally:
        engine.dispose()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema of its own in the test database, dropped afterwards."""
    postgres_available()
    schema = f"ddtest_{uuid.uuid4().hex[:10]}"
    yield schema
    engine = sa.create_engine(source_from(POSTGRES_URL).url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_source(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Source:
    """A source with no table yet, on each database the dashboard reads."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("store") / "drivendata.db"
        return source_from(f"sqlite:///{path}", "streaming_layer.streaming_data")
    schema = request.getfixturevalue("pg_schema")
    return source_from(POSTGRES_URL, f"{schema}.streaming_data")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def dataset(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dataset]:
    """The same generated and junk rows, loaded once per database for a test module."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("store") / "drivendata.db"
        source = source_from(f"sqlite:///{path}", "streaming_layer.streaming_data")
        load(source, ROWS)
        yield Dataset(source, ROWS, NOW)
        return
    postgres_available()
    schema = f"ddtest_{uuid.uuid4().hex[:10]}"
    source = source_from(POSTGRES_URL, f"{schema}.streaming_data")
    load(source, ROWS)
    yield Dataset(source, ROWS, NOW)
    engine = sa.create_engine(source.url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()
