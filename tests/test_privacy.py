"""Privacy: what a viewer's kernel selects, and people shown as initials or pseudonyms.

The SQL is inspected two ways: every statement the panels can build, for every field, versus
field and window on all three dialects, parsed with sqlglot; and every statement a live
Dashboard actually sends to a real SQLite file and to the real PostgreSQL server while it
refreshes and its controls change, caught on the engine as it is executed. Athena's statements
are built and parsed only (AWS cannot be reached from here).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlglot
from sqlglot import exp

from drivendata import people
from drivendata.dashboard import Dashboard
from drivendata.database import COLUMNS, Source, reader, source_from
from drivendata.panels import FIELDS, WINDOWS, Query, QueryError, compute, statements
from tests.conftest import NOW, ROWS, Dataset
from tests.test_athena import URL as ATHENA_URL

TABLE = "streaming_data"
# What the panels need of a row; everything else about a person stays in the table.
NEEDED = {"person_name", "user_name", "birth_date", *FIELDS}
PRIVATE = {
    "personal_number",
    "email",
    "address",
    "phone_number",
    "mac_address",
    "ip_address",
    "iban",
    "unique_id",
}
SQLGLOT = {"sqlite": "sqlite", "postgresql": "postgres", "athena": "athena"}


def table_columns(sql: str, dialect: str) -> set[str]:
    """The columns a statement reads from the sessions table: every column that is not one of
    the statement's own aliases or a catalog's. Fails on a star over the sessions table."""
    tree = sqlglot.parse_one(sql, read=dialect)
    aliases = {a.alias for a in tree.find_all(exp.Alias)} | {
        c.name for t in tree.find_all(exp.TableAlias) for c in t.columns
    }
    catalogs = {t.name for t in tree.find_all(exp.Table) if t.name != TABLE}
    for select in tree.find_all(exp.Select):
        sources = {t.name for t in select.find_all(exp.Table) if t.parent_select is select}
        if TABLE in sources:
            stars = [e for e in select.expressions if e.is_star]
            assert not stars, f"a star over the sessions table in:\n{sql}"
    used = set()
    for column in tree.find_all(exp.Column):
        if column.is_star:
            continue  # over a derived table (checked above for the sessions table)
        if column.table and column.table in catalogs | {"c", "n", "s"}:
            continue  # PostgreSQL's statistics catalogs (the data version)
        if column.name not in aliases:
            used.add(column.name)
    return used


def sources() -> dict[str, Source]:
    return {
        "sqlite": source_from("sqlite:////tmp/never-opened.db"),
        "postgresql": source_from("postgresql://reader:secret@db.example:5432/sessions"),
        "athena": source_from(ATHENA_URL),
    }


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "athena"])
def test_every_statement_selects_only_the_columns_the_panels_need(kind: str) -> None:
    source = sources()[kind]
    seen: set[str] = set()
    # every field and window, each field once against every versus field
    names = list(FIELDS)
    versus_of = {f: names[(i + 1) % len(names)] for i, f in enumerate(names)}
    cases = [(f, versus_of[f], w) for f, w in itertools.product(FIELDS, WINDOWS)]
    cases += [(names[0], v, "all") for v in names]
    # panels that share a statement (and cases that build the same one) are parsed once: the
    # PostgreSQL statements carry constants of hundreds of kilobytes
    parsed: dict[str, set[str]] = {}
    for field, versus, window in cases:
        q = Query(field=field, versus=versus, window=window, now=NOW)
        for name, stmt in statements(source, q).items():
            sql = stmt.literal()
            if sql not in parsed:
                parsed[sql] = table_columns(sql, SQLGLOT[kind])
            used = parsed[sql]
            assert not used & PRIVATE, f"{kind} {name} reads {used & PRIVATE}"
            assert used <= NEEDED | {"rowid"}, f"{kind} {name} reads {used - NEEDED}"
            seen |= used
    # the inspection sees columns at all: a parser that found none would pass the above
    assert seen >= NEEDED


def test_the_inspection_catches_a_statement_that_reads_too_much() -> None:
    sql = "SELECT person_name, iban FROM streaming_layer.streaming_data"
    assert table_columns(sql, "postgres") == {"person_name", "iban"}
    with pytest.raises(AssertionError, match="star"):
        table_columns("SELECT * FROM streaming_layer.streaming_data", "postgres")


@pytest.fixture
def watched(dataset: Dataset) -> Iterator[tuple[Dashboard, list[str]]]:
    """A dashboard on a real database, with every statement its engine executes recorded."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(args[2])

    sa.event.listen(sa.Engine, "before_cursor_execute", record)
    d = Dashboard(dataset.source, autostart=False)
    yield d, sent
    d.close()
    sa.event.remove(sa.Engine, "before_cursor_execute", record)


def test_a_live_dashboard_sends_only_statements_on_the_needed_columns(
    watched: tuple[Dashboard, list[str]],
) -> None:
    d, sent = watched
    kind = d.source.kind
    assert d.refresh_now()
    for field, window in (("accessed_at", "7d"), ("session_duration", "24h")):
        d.field.value, d.window.value = field, window
        assert d.refresh_now()
    # at least five statements a refresh: panels that share a statement run it once
    assert len(sent) >= 3 * 5, "the dashboard's statements were not seen"
    reads = [s for s in sent if TABLE in s]
    assert reads
    for sql in reads:
        used = table_columns(sql.replace("%(", ":").replace(")s", ""), SQLGLOT[kind])
        assert not used & PRIVATE, sql
        assert used <= NEEDED | {"rowid"}, sql


# ---------------------------------------------------------------- initials and pseudonyms


@pytest.fixture
def key_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DRIVENDATA_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("DRIVENDATA_PSEUDONYM_KEY", raising=False)
    people._key.cache_clear()
    yield tmp_path
    people._key.cache_clear()


def shown(dataset: Dataset, mode: str) -> dict[str, Any]:
    engine = reader(dataset.source)
    try:
        with engine.connect() as conn:
            q = Query(field="download_speed", people=mode, now=NOW)
            return compute(conn, dataset.source, q, None)
    finally:
        engine.dispose()


NAME = [c for c, _ in COLUMNS].index("person_name")
EVERYONE = {r[NAME] for r in ROWS if r[NAME]}


def names_in(result: dict[str, Any]) -> list[str]:
    return list(result["top_people"]["person_name"]) + list(result["top_traffic"]["person_name"])


def test_initials_and_pseudonyms_replace_names_the_same_way_everywhere(
    dataset: Dataset, key_dir: Path
) -> None:
    real = names_in(shown(dataset, "names"))
    everyone = EVERYONE
    assert set(real) <= everyone

    by_initials = names_in(shown(dataset, "initials"))
    assert by_initials == [people.initials(n) if n else n for n in real]
    assert not set(by_initials) & everyone

    first = names_in(shown(dataset, "pseudonyms"))
    assert not set(first) & everyone
    assert all(p.startswith("Person ") for p in first if p)
    # one person, one pseudonym: in both panels, and again after a new kernel starts
    assert len(set(first)) == len(set(real))
    assert (key_dir / people.KEY_FILE).stat().st_mode & 0o777 == 0o600
    people._key.cache_clear()
    assert names_in(shown(dataset, "pseudonyms")) == first


def test_pseudonyms_change_with_the_key_and_cannot_be_hashed_back(
    key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = people.pseudonym("Ana Popescu", people.key())
    monkeypatch.setenv("DRIVENDATA_PSEUDONYM_KEY", "another long secret")
    assert people.pseudonym("Ana Popescu", people.key()) != made
    assert people.pseudonym("Ana Popescu", people.key()) == people.pseudonym(
        "Ana Popescu", b"another long secret"
    )
    assert people.initials("popescu ana-maria") == "P. A."
    assert people.initials("   ") == "?"


def test_the_page_never_holds_a_name_when_pseudonyms_are_asked_for(
    dataset: Dataset, key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIVENDATA_PEOPLE", "pseudonyms")
    monkeypatch.setenv("DRIVENDATA_DATABASE_URL", dataset.source.url.render_as_string(False))
    monkeypatch.setenv("DRIVENDATA_TABLE", str(dataset.source.table))
    monkeypatch.setenv("DRIVENDATA_CACHE", "off")
    d = Dashboard.from_settings(autostart=False)
    try:
        assert d.refresh_now(), d.error
        page = json.dumps([f.to_plotly_json() for f in d.figures.values()], default=str)
        page += d.status.value
        assert "Person " in page
        for name in EVERYONE:
            assert name not in page
    finally:
        d.close()


def test_an_unknown_way_of_showing_people_is_refused_in_one_sentence() -> None:
    with pytest.raises(QueryError, match=r"^'nicknames' is not a way of showing people; pick"):
        Query(people="nicknames")


def test_the_key_is_made_once_when_many_threads_ask_at_once(key_dir: Path) -> None:
    """The panels are shaped in several threads: the first key made is everyone's (two threads
    once wrote the same temporary file, and one failed the whole refresh)."""
    with ThreadPoolExecutor(8) as pool:
        keys = list(pool.map(lambda _: people.key(), range(32)))
    assert len(set(keys)) == 1
    assert sorted(p.name for p in key_dir.iterdir()) == [people.KEY_FILE]
