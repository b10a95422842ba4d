"""The pure figure functions, on synthetic panel results."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import pytest

from drivendata import figures
from drivendata.panels import FIELDS, Query

T0 = datetime(2026, 1, 5, 12, 0, 0)


def numeric_results() -> dict[str, Any]:
    return {
        "top_traffic": pd.DataFrame(
            {
                "person_name": ["Ana", "Bogdan", "Cezar"],
                "upload_speed": [300, 250, 120],
                "consumed_traffic": [9000, 8000, 7000],
            }
        ),
        "top_people": pd.DataFrame({"person_name": ["Ana", "Bogdan"], "value": [797, 700]}),
        "timeline": pd.DataFrame(
            {
                "bucket": pd.to_datetime([T0, T0 + timedelta(hours=1)]),
                "sessions": [10, 12],
                "min": [1.0, 2.0],
                "mean": [150.5, 160.25],
                "max": [500.0, 600.0],
            }
        ),
        "distribution": {
            "count": 22,
            "min": 0.0,
            "q1": 64.0,
            "median": 127.0,
            "q3": 215.0,
            "max": 797.0,
            "mean": 150.1,
        },
        "histogram": pd.DataFrame({"lo": [0.0, 10.0], "hi": [10.0, 20.0], "count": [5, 7]}),
        "age_groups": pd.DataFrame(
            {
                "age_group": ["under 18", "18-24", "unknown"],
                "users": [1, 3, 0],
                "share": [25.0, 75.0, 0.0],
            }
        ),
        "summary": {"rows": 22, "users": 4, "newest": T0, "last_5_minutes": 0, "skipped": {}},
    }


def time_results() -> dict[str, Any]:
    times = pd.to_datetime([T0 + timedelta(minutes=5), T0])
    return {
        "top_traffic": pd.DataFrame({"person_name": ["Ana", "Bogdan"], "accessed_at": times}),
        "top_people": pd.DataFrame({"person_name": ["Ana", "Bogdan"], "value": times}),
        "timeline": pd.DataFrame(
            {"bucket": pd.to_datetime([T0, T0 + timedelta(hours=1)]), "sessions": [3, 4]}
        ),
        "distribution": {
            "count": 2,
            "min": T0,
            "q1": T0,
            "median": T0 + timedelta(minutes=2),
            "q3": T0 + timedelta(minutes=4),
            "max": T0 + timedelta(minutes=5),
            "mean": T0 + timedelta(minutes=2),
        },
        "histogram": pd.DataFrame(
            {
                "lo": pd.to_datetime([T0, T0 + timedelta(minutes=1)]),
                "hi": pd.to_datetime([T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]),
                "count": [1, 1],
            }
        ),
        "age_groups": numeric_results()["age_groups"],
        "summary": {"rows": 2, "users": 2, "newest": T0, "last_5_minutes": 0, "skipped": {}},
    }


def empty_results() -> dict[str, Any]:
    return {
        "top_traffic": pd.DataFrame(
            {"person_name": [], "upload_speed": [], "consumed_traffic": []}
        ),
        "top_people": pd.DataFrame({"person_name": [], "value": []}),
        "timeline": pd.DataFrame({"bucket": [], "sessions": [], "min": [], "mean": [], "max": []}),
        "distribution": {"count": 0} | dict.fromkeys(("min", "q1", "median", "q3", "max", "mean")),
        "histogram": pd.DataFrame({"lo": [], "hi": [], "count": []}),
        "age_groups": pd.DataFrame(
            {"age_group": ["under 18", "unknown"], "users": [0, 0], "share": [0.0, 0.0]}
        ),
        "summary": {"rows": 0, "users": 0, "newest": None, "last_5_minutes": 0, "skipped": {}},
    }


def titles(figs: dict[str, figures.Figure]) -> dict[str, str]:
    return {name: fig["layout"]["title"]["text"] for name, fig in figs.items()}


def test_titles_follow_the_field_and_versus() -> None:
    q = Query(field="upload_speed", versus="consumed_traffic")
    assert titles(figures.figures(numeric_results(), q)) == {
        "top_traffic": "Consumed traffic vs Upload speed (top 10)",
        "top_people": "Top 10 people by Upload speed",
        "timeline": "Upload speed over time",
        "distribution": "Distribution of Upload speed",
        "histogram": "Histogram of Upload speed",
        "age_groups": "Users by age group",
    }
    q = Query(field="accessed_at", versus="download_speed")
    got = titles(figures.figures(time_results() | {"top_traffic": None}, q))
    assert got["top_traffic"] == "Download speed vs Accessed at (top 10)"
    assert got["timeline"] == "Accessed at over time"


def test_scatter_puts_the_field_on_x_and_versus_on_y() -> None:
    fig = figures.top_traffic(numeric_results()["top_traffic"], Query())
    (trace,) = fig["data"]
    assert trace["x"] == [300, 250, 120]
    assert trace["y"] == [9000, 8000, 7000]
    assert trace["customdata"] == ["Ana", "Bogdan", "Cezar"]
    assert fig["layout"]["xaxis"]["title"]["text"] == "Upload speed (Mbps)"
    assert fig["layout"]["yaxis"]["title"]["text"] == "Consumed traffic (kB)"


def test_scatter_of_a_field_against_itself() -> None:
    frame = pd.DataFrame({"person_name": ["Ana"], "upload_speed": [5]})
    fig = figures.top_traffic(frame, Query(field="upload_speed", versus="upload_speed"))
    assert fig["data"][0]["x"] == fig["data"][0]["y"] == [5]


def test_bar_highlights_the_top_person_at_the_top() -> None:
    fig = figures.top_people(numeric_results()["top_people"], Query())
    (bar,) = fig["data"]
    # horizontal bars draw the first category lowest: the best comes last
    assert bar["y"] == ["Bogdan", "Ana"]
    assert bar["x"] == [700, 797]
    assert bar["marker"]["color"] == [figures.LIGHT_BLUE, figures.ACCENT]
    assert fig["layout"]["xaxis"]["title"]["text"] == "Upload speed (Mbps)"


def test_bar_of_times_starts_before_the_earliest_on_a_time_axis() -> None:
    fig = figures.top_people(time_results()["top_people"], Query(field="accessed_at"))
    (bar,) = fig["data"]
    assert fig["layout"]["xaxis"]["type"] == "date"
    assert bar["base"] < T0
    ends = [bar["base"] + timedelta(milliseconds=x) for x in bar["x"]]
    assert ends == bar["customdata"] == [T0, T0 + timedelta(minutes=5)]


def test_timeline_draws_the_mean_inside_a_min_max_band() -> None:
    fig = figures.timeline(numeric_results()["timeline"], Query())
    upper, lower, mean = fig["data"]
    assert upper["y"] == [500.0, 600.0]
    assert lower["y"] == [1.0, 2.0] and lower["fill"] == "tonexty"
    assert mean["y"] == [150.5, 160.25] and mean["fill"] is None
    # milliseconds since 1970, on a date axis
    start = int((T0 - datetime(1970, 1, 1)).total_seconds() * 1000)
    assert mean["x"] == [start, start + 3_600_000]
    assert fig["layout"]["xaxis"]["type"] == "date"
    assert fig["layout"]["xaxis"]["type"] == "date"
    assert fig["layout"]["yaxis"]["title"]["text"] == "Upload speed (Mbps)"


def test_timeline_of_a_time_counts_sessions() -> None:
    fig = figures.timeline(time_results()["timeline"], Query(field="accessed_at"))
    upper, lower, line = fig["data"]
    assert upper["y"] == lower["y"] == []
    assert line["y"] == [3, 4] and line["fill"] == "tozeroy"
    assert fig["layout"]["yaxis"]["title"]["text"] == "Sessions per interval"


def test_box_is_drawn_from_the_precomputed_numbers() -> None:
    (box,) = figures.distribution(numeric_results()["distribution"], Query())["data"]
    assert box["type"] == "box"
    assert (box["lowerfence"], box["q1"], box["median"], box["q3"], box["upperfence"]) == (
        [0.0],
        [64.0],
        [127.0],
        [215.0],
        [797.0],
    )
    assert box["mean"] == [150.1]


def test_box_of_times_has_its_five_numbers_labelled_as_times() -> None:
    fig = figures.distribution(time_results()["distribution"], Query(field="accessed_at"))
    assert fig["layout"]["xaxis"]["ticktext"][2] == "Jan 05<br>12:02"
    assert len(fig["layout"]["xaxis"]["tickvals"]) == 5
    epoch_ms = (T0 + timedelta(minutes=2) - datetime(1970, 1, 1)) / timedelta(milliseconds=1)
    assert fig["data"][0]["median"] == [epoch_ms]


def test_histogram_bars_span_their_bins() -> None:
    (bar,) = figures.histogram(numeric_results()["histogram"], Query())["data"]
    assert bar["x"] == [5.0, 15.0]
    assert bar["width"] == [10.0, 10.0]
    assert bar["y"] == [5, 7]
    (bar,) = figures.histogram(time_results()["histogram"], Query(field="accessed_at"))["data"]
    assert bar["width"] == [60_000.0, 60_000.0]
    assert bar["x"][0] == T0 + timedelta(seconds=30)


def test_pie_shows_percentages_in_group_order() -> None:
    (pie,) = figures.age_groups(numeric_results()["age_groups"], Query())["data"]
    assert pie["labels"] == ["under 18", "18-24", "unknown"]
    assert pie["values"] == [25.0, 75.0, 0.0]
    assert pie["customdata"] == [1, 3, 0]
    assert pie["sort"] is False


@pytest.mark.parametrize("field", list(FIELDS))
def test_every_panel_says_no_sessions_yet_when_empty(field: str) -> None:
    figs = figures.figures(empty_results(), Query(field=field))
    for name, fig in figs.items():
        texts = [a["text"] for a in fig["layout"]["annotations"]]
        assert texts == [figures.EMPTY], name


def test_a_panel_with_data_has_no_empty_message() -> None:
    for name, fig in figures.figures(numeric_results(), Query()).items():
        texts = [a["text"] for a in fig["layout"]["annotations"]]
        assert figures.EMPTY not in texts, name


def test_traces_keep_their_shape_across_fields() -> None:
    """Live figures update in place: same trace types and properties for every field."""
    shapes: dict[str, Any] = {}
    for field in FIELDS:
        results = time_results() if FIELDS[field].is_time else numeric_results()
        if FIELDS[field].is_time:
            results["top_traffic"] = results["top_traffic"].rename(columns={"accessed_at": field})
        q = Query(field=field, versus=field)
        for name, fig in figures.figures(results, q).items():
            shape = [(t["type"], sorted(t)) for t in fig["data"]]
            shapes.setdefault(name, shape)
            assert shape == shapes[name], (name, field)
            layout_keys = sorted(fig["layout"])
            assert layout_keys == sorted(figures.placeholder(name, q)["layout"]), name


def test_figures_are_plain_data_that_plotly_accepts() -> None:
    plain = (str, int, float, bool, datetime, type(None))

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        else:
            assert isinstance(value, plain) and not isinstance(value, pd.Timestamp), value

    for results, field in ((numeric_results(), "upload_speed"), (time_results(), "accessed_at")):
        if field == "accessed_at":
            results["top_traffic"] = results["top_traffic"]
        q = Query(field=field, versus=field)
        for fig in figures.figures(results, q).values():
            walk(fig)
            go.Figure(data=fig["data"], layout={"template": figures.template(), **fig["layout"]})


def test_uirevision_changes_only_when_the_axes_change_meaning() -> None:
    a = figures.histogram(numeric_results()["histogram"], Query(window="all"))
    b = figures.histogram(empty_results()["histogram"], Query(window="all"))
    c = figures.histogram(numeric_results()["histogram"], Query(window="1h"))
    assert a["layout"]["uirevision"] == b["layout"]["uirevision"] != c["layout"]["uirevision"]


def test_approximate_quartiles_are_said_on_the_panel() -> None:
    stats = {"count": 10, "min": 1.0, "q1": 2.0, "median": 3.0, "q3": 4.0, "max": 5.0}
    stats |= {"mean": 3.0, "approximate": True}
    fig = figures.distribution(stats, Query())
    assert "approximate quartiles" in fig["layout"]["annotations"][0]["text"]
    del stats["approximate"]
    assert (
        "approximate"
        not in figures.distribution(stats, Query())["layout"]["annotations"][0]["text"]
    )
