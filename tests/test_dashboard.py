"""The dashboard widget, in-process on real SQLite files: assertions on figure data."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import plotly.graph_objects as go
import pytest
import sqlalchemy as sa
from traitlets import TraitError

from drivendata import figures
from drivendata.dashboard import Dashboard, status_html
from drivendata.database import Source, reader, source_from
from drivendata.panels import compute
from drivendata.stream import seed


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "sessions.db"
    seed(source_from(f"sqlite:///{path}"), rows=3000, days=3, seed=1)
    return path


@pytest.fixture
def source(seeded: Path, tmp_path: Path) -> Source:
    """A private copy of the seeded store, so that a test may break or grow it."""
    path = tmp_path / "sessions.db"
    shutil.copy(seeded, path)
    return source_from(f"sqlite:///{path}")


@pytest.fixture
def dashboard(source: Source) -> Iterator[Dashboard]:
    d = Dashboard(source, autostart=False)
    yield d
    d.close()


def expected(d: Dashboard) -> dict:
    """What the query module computes for the query the dashboard last ran."""
    assert d.snapshot is not None
    engine = reader(d.source)  # type: ignore[arg-type]
    try:
        with engine.connect() as conn:
            return compute(conn, d.source, d.snapshot.query)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def messages(fig: go.FigureWidget) -> list[str]:
    return [a.text for a in fig.layout.annotations]


def test_panels_show_what_the_query_module_computes(dashboard: Dashboard) -> None:
    assert dashboard.refresh_now()
    want = expected(dashboard)
    figs = dashboard.figures
    bar = figs["top_people"].data[0]
    assert list(bar.y) == list(want["top_people"]["person_name"])[::-1]
    assert list(bar.x) == list(want["top_people"]["value"])[::-1]
    scatter = figs["top_traffic"].data[0]
    assert list(scatter.y) == list(want["top_traffic"]["consumed_traffic"])
    assert list(scatter.x) == list(want["top_traffic"]["upload_speed"])
    # the figure carries the mean to two decimals (its hover shows one): half a hundredth off
    # at most, and the doubles' error of a mean like 52.375 rounded to 52.38
    assert list(figs["timeline"].data[2].y) == pytest.approx(
        list(want["timeline"]["mean"]), abs=0.005 + 1e-9
    )
    assert list(figs["timeline"].data[0].y) == list(want["timeline"]["max"])
    box = figs["distribution"].data[0]
    assert box.median == (want["distribution"]["median"],)
    assert list(figs["histogram"].data[0].y) == list(want["histogram"]["count"])
    assert list(figs["age_groups"].data[0].values) == list(want["age_groups"]["share"])
    assert {name: f.layout.title.text for name, f in figs.items()} == {
        "top_traffic": "Consumed traffic vs Upload speed (top 10)",
        "top_people": "Top 10 people by Upload speed",
        "timeline": "Upload speed over time",
        "distribution": "Distribution of Upload speed",
        "histogram": "Histogram of Upload speed",
        "age_groups": "Users by age group",
    }
    for fig in figs.values():
        assert messages(fig) in ([], [a.text for a in fig.layout.annotations if "·" in a.text])
    status = dashboard.status.value
    assert "SQLite streaming_layer.streaming_data" in status
    assert f"{want['summary']['rows']:,} rows in all time" in status
    assert str(want["top_people"]["person_name"].iloc[0]) in status
    assert "refreshed" in status and "dd-error" not in status


def test_changing_the_field_and_window_changes_the_panels(dashboard: Dashboard) -> None:
    dashboard.refresh_now()
    before = {n: f.to_plotly_json() for n, f in dashboard.figures.items()}
    dashboard.field.value = "download_speed"
    dashboard.refresh_now(force=False)
    assert dashboard.figures["histogram"].layout.title.text == "Histogram of Download speed"
    want = expected(dashboard)
    assert list(dashboard.figures["histogram"].data[0].y) == list(want["histogram"]["count"])
    for name in ("top_traffic", "top_people", "timeline", "distribution", "histogram"):
        assert dashboard.figures[name].to_plotly_json() != before[name], name

    dashboard.field.value = "accessed_at"
    dashboard.window.value = "24h"
    dashboard.refresh_now(force=False)
    want = expected(dashboard)
    assert dashboard.snapshot is not None and dashboard.snapshot.query.window == "24h"
    assert dashboard.figures["histogram"].layout.xaxis.type == "date"
    assert sum(dashboard.figures["histogram"].data[0].y) == want["distribution"]["count"]
    assert want["summary"]["rows"] < 3000
    pie = dashboard.figures["age_groups"].data[0]
    assert list(pie.values) == list(want["age_groups"]["share"])


def test_nothing_is_recomputed_when_nothing_changed(dashboard: Dashboard, source: Source) -> None:
    dashboard.refresh_now()
    assert dashboard.computes == 1
    dashboard.refresh_now(force=False)
    assert dashboard.computes == 1
    seed(source, rows=5, days=0.0001, seed=2)
    dashboard.refresh_now(force=False)
    assert dashboard.computes == 2
    assert dashboard.snapshot is not None and dashboard.snapshot.results["summary"]["rows"] == 3005


def test_unreachable_source_warns_and_keeps_the_last_panels(
    dashboard: Dashboard, source: Source
) -> None:
    assert dashboard.refresh_now()
    shown = dashboard.figures["top_people"].to_plotly_json()
    path = source.sqlite_path
    away = path.with_suffix(".away")
    path.rename(away)
    try:
        assert dashboard._engine is not None
        dashboard._engine.dispose()  # an open SQLite handle would still read the moved file
        assert not dashboard.refresh_now()
        status = dashboard.status.value
        assert "dd-error" in status
        assert "cannot be opened" in status and "(stale)" in status
        assert "Traceback" not in status
        assert dashboard.figures["top_people"].to_plotly_json() == shown
        assert "dd-stale" in dashboard.grid._dom_classes
    finally:
        away.rename(path)
    assert dashboard.refresh_now(force=False)
    assert "dd-error" not in dashboard.status.value
    assert "dd-stale" not in dashboard.grid._dom_classes


def test_a_value_outside_the_lists_is_refused_without_a_query(dashboard: Dashboard) -> None:
    dashboard.refresh_now()
    engine = dashboard._engine
    assert engine is not None
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    # what the browser sends over the widget channel is an index into the options
    with pytest.raises(TraitError):
        dashboard.field.set_state({"index": 99})
    assert dashboard.field.value == "upload_speed"
    # and the handler refuses a value even if one got past the widget
    dashboard._on_control(
        {"owner": dashboard.window, "name": "value", "old": "all", "new": "1; DROP TABLE x"}
    )
    assert dashboard.window.value == "all"
    assert "is not an allowed window" in dashboard.status.value
    assert dashboard.computes == 1
    dashboard.refresh_now(force=False)
    assert dashboard.computes == 1
    assert not any("DROP" in s for s in statements)


def test_empty_table_says_no_sessions_yet_then_fills_in(tmp_path: Path) -> None:
    source = source_from(f"sqlite:///{tmp_path / 'empty.db'}")
    seed(source, rows=0, days=1)
    d = Dashboard(source, autostart=False)
    try:
        assert d.refresh_now()
        for name, fig in d.figures.items():
            assert messages(fig) == [figures.EMPTY], name
        assert "No sessions in all time yet" in d.status.value
        seed(source, rows=50, days=0.01, seed=3)
        assert d.refresh_now(force=False)
        for name, fig in d.figures.items():
            assert figures.EMPTY not in messages(fig), name
    finally:
        d.close()


def test_a_user_zoom_survives_new_data_but_not_a_new_field(
    dashboard: Dashboard, source: Source
) -> None:
    dashboard.refresh_now()
    fig = dashboard.figures["histogram"]
    fig.layout.xaxis.range = (100, 200)  # as plotly.js reports a zoom
    fig.layout.xaxis.autorange = False
    seed(source, rows=5, days=0.0001, seed=2)
    dashboard.refresh_now(force=False)
    assert fig.layout.xaxis.range == (100, 200)
    dashboard.field.value = "session_duration"
    dashboard.refresh_now(force=False)
    assert fig.layout.xaxis.range is None and fig.layout.xaxis.autorange is True


def test_bad_settings_show_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIVENDATA_DATABASE_URL", "mysql://u:secret@db/x")
    d = Dashboard.from_settings(autostart=False)
    try:
        assert not d.refresh_now()
        assert "mysql" in d.status.value and "secret" not in d.status.value
        assert "dd-error" in d.status.value
    finally:
        d.close()


def test_status_warns_when_no_rows_arrive(dashboard: Dashboard) -> None:
    dashboard.refresh_now()
    snap = dashboard.snapshot
    assert snap is not None
    newest = snap.results["summary"]["newest"]
    later = newest + timedelta(hours=2)
    html = status_html(source=dashboard.source, snapshot=snap, error=None, now=later)
    assert "dd-warn" in html and "no new rows for 2 h 0 min" in html


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_the_refresh_loop_follows_rows_and_controls(source: Source) -> None:
    async def scenario() -> None:
        d = Dashboard(source, interval="2s")  # starts on this running loop
        try:
            await wait_for(lambda: d.snapshot is not None)
            rows = d.snapshot.results["summary"]["rows"]  # type: ignore[union-attr]
            assert rows == 3000
            # the loop is not blocked by the database: the event loop keeps ticking
            seed(source, rows=7, days=0.0001, seed=4)
            await wait_for(lambda: d.snapshot.results["summary"]["rows"] == 3007, 4.0)  # type: ignore[union-attr]
            d.field.value = "session_duration"
            fig = d.figures["histogram"]
            await wait_for(lambda: fig.layout.title.text == "Histogram of Session duration", 2)
            d.interval.value = "off"
            computes = d.computes
            await asyncio.sleep(0.3)
            assert d.computes == computes
        finally:
            d.close()
        assert d._task is None

    asyncio.run(scenario())


def test_the_refresh_loop_recovers_by_itself(source: Source) -> None:
    async def scenario() -> None:
        d = Dashboard(source, interval="2s")
        try:
            await wait_for(lambda: d.snapshot is not None)
            path = source.sqlite_path
            away = path.with_suffix(".away")
            path.rename(away)
            assert d._engine is not None
            d._engine.dispose()
            d.window.value = "7d"  # a control change makes the next tick run now
            await wait_for(lambda: d.error is not None, 4)
            assert "retrying in" in d.status.value
            away.rename(path)
            await wait_for(lambda: d.error is None, 6)
            assert d.snapshot is not None and d.snapshot.query.window == "7d"
            assert "dd-stale" not in d.grid._dom_classes
        finally:
            d.close()

    asyncio.run(scenario())


def test_a_view_that_missed_an_update_is_redrawn(dashboard: Dashboard) -> None:
    dashboard.refresh_now()
    pie = dashboard.figures["age_groups"]
    # a view reports, once drawn, the last edit it has: here one from before the refresh
    pie._js2py_traceDeltas = {"trace_deltas": [{}], "trace_edit_id": 0}
    assert dashboard.repair_views(grace=0) == ["age_groups"]
    fresh = dashboard.figures["age_groups"]
    assert fresh is not pie and dashboard.cards["age_groups"].children == (fresh,)
    assert fresh.data[0].values == pie.data[0].values
    assert fresh.layout.title.text == "Users by age group"
    # an up-to-date view, or none at all, needs nothing
    hist = dashboard.figures["histogram"]
    hist._js2py_traceDeltas = {
        "trace_deltas": [{"uid": t.uid} for t in hist.data],
        "trace_edit_id": hist._last_trace_edit_id,
    }
    assert dashboard.repair_views(grace=0) == []


def test_athena_refreshes_are_priced_limited_and_paused_when_they_scan_too_much(
    monkeypatch: pytest.MonkeyPatch, source: Source
) -> None:
    """An Athena source, with refresh outcomes made of real panel results from SQLite: AWS
    cannot be reached here, so what a refresh would have scanned is given to it."""
    from datetime import UTC, datetime

    from drivendata.dashboard import Outcome, Snapshot
    from drivendata.panels import Query

    monkeypatch.setenv("DRIVENDATA_ATHENA_MAX_SCAN_GB", "2")
    monkeypatch.setenv("DRIVENDATA_ATHENA_MIN_REFRESH", "60")
    athena = source_from(
        "awsathena+rest://@athena.us-east-1.amazonaws.com:443/streaming_layer"
        "?s3_staging_dir=s3%3A%2F%2Fresults%2F"
    )
    with reader(source).connect() as conn:
        results = compute(conn, source, Query())
    d = Dashboard(athena, autostart=False, interval="5s")
    try:
        assert d._interval() == 60  # the 5 s a viewer picked is raised to Athena's minimum

        def refreshed(scanned: int) -> None:
            now = datetime.now(UTC).replace(tzinfo=None)
            snap = Snapshot(d._key(), d.query, "1", results, now, 0.1, scanned=scanned)
            d._succeeded(Outcome(d._key(), "1", snap))

        refreshed(1_500_000_000)
        assert "scanned 1.5 GB ($0.0075)" in d.status.value
        assert d.paused is None and d._interval() == 60
        refreshed(3_000_000_000)
        assert d._interval() is None  # automatic refresh paused
        assert "automatic refresh is paused" in d.status.value
        assert "DRIVENDATA_ATHENA_MAX_SCAN_GB" in d.status.value
        refreshed(1_000_000)  # a refresh a viewer asked for, under the limit, resumes it
        assert d.paused is None and d._interval() == 60
    finally:
        d.close()
