"""Tampered widget messages over a real page's kernel WebSocket: refused, no query, no traceback.

A real server on a real SQLite store and a real page in headless Chromium; a second WebSocket
client on the page's kernel sends what a hostile viewer could send in place of the page's own
widget messages. Statements are counted inside the kernel process by a ``sitecustomize`` module
(written here into a folder put on the server's ``PYTHONPATH``; it acts only in processes
started as ``ipykernel_launcher``) that logs every statement SQLAlchemy sends: nothing in the
product is changed for the test. Run with ``pytest -m browser``.

The first test runs in-process: what a real page sends (an index, a zoom, the edit a view
drew) still reaches the dashboard through the guard.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from drivendata import stream
from drivendata.dashboard import Dashboard
from drivendata.database import Source, source_from
from drivendata.panels import FIELDS
from tests.test_browser import (  # noqa: F401  (browser is a fixture)
    REFRESH,
    Viewer,
    _widget_states,
    browser,
    kernel_alive,
    replies_to,
    talk,
    titles,
    voila_server,
    wait_for,
)

SITECUSTOMIZE = """\
# Written by tests/test_tamper.py: log each SQL statement a kernel process sends.
import os
import sys

_folder = os.environ.get("DDTEST_STATEMENT_LOG")
if _folder and "ipykernel_launcher" in " ".join(getattr(sys, "orig_argv", sys.argv)):
    import sqlalchemy as _sa

    _fd = os.open(
        os.path.join(_folder, f"{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
    )

    def _log(conn, cursor, statement, *args):
        probe = statement.lstrip().startswith("SELECT MAX(rowid) AS version")
        os.write(_fd, b"probe\\n" if probe else b"panel\\n")

    _sa.event.listen(_sa.engine.Engine, "before_cursor_execute", _log)
"""


@pytest.fixture(scope="module")
def statements(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("statements")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, statements: Path) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("tamper")
    source: Source = source_from(f"sqlite:///{folder / 'drivendata.db'}")
    stream.seed(source, rows=2_000, days=2, seed=11)
    hook = folder / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(hook))
        mp.setenv("DDTEST_STATEMENT_LOG", str(statements))
        with voila_server(
            folder, str(source.url), preheat="1", max_kernels="3", cache="off"
        ) as url:
            yield url


def panel_queries(statements: Path, kernel_id: str) -> int:
    """Panel statements the kernel with this id has sent so far."""
    (pid,) = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if kernel_id in " ".join(p.info["cmdline"] or ())
    ]
    log = statements / f"{pid}.log"
    return log.read_text().split().count("panel") if log.exists() else 0


def update(comm_id: str, state: Any, **extra: Any) -> dict[str, Any]:
    return {"comm_id": comm_id, "data": {"method": "update", "state": state, **extra}}


HUGE = 5_000_000  # characters: several MB on the WebSocket, under its 10 MiB frame limit


def test_what_a_real_page_sends_is_taken(tmp_path: Path) -> None:
    """Messages as the page's views send them, through each widget's comm (outside a kernel
    ipywidgets gives every widget a DummyComm, whose handle_msg calls the same handler)."""
    source = source_from(f"sqlite:///{tmp_path / 'drivendata.db'}")
    stream.seed(source, rows=200, days=1, seed=3)
    d = Dashboard(source, autostart=False)

    def page_says(widget: Any, state: dict[str, Any]) -> None:
        msg = {"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}}
        widget.comm.handle_msg({**msg, "buffers": []})

    try:
        page_says(d.field, {"index": 1})
        assert d.field.value == list(FIELDS)[1] and d.refused is None
        fig = d.figures["histogram"]
        zoom = {"xaxis.range[0]": 100, "xaxis.range[1]": 200}
        page_says(fig, {"_js2py_relayout": {"relayout_data": zoom, "source_view_id": "v"}})
        assert fig.layout.xaxis.range == (100, 200)
        drawn = {"trace_deltas": [{"uid": t.uid} for t in fig.data], "trace_edit_id": 0}
        page_says(fig, {"_js2py_traceDeltas": drawn})
        assert d._drawn["histogram"] == 0
        # and beside them, the same kinds of message refused
        page_says(d.field, {"index": True})
        assert d.field.value == list(FIELDS)[1]
        assert d.refused == "A change to Field that is not one of its choices was refused."
        page_says(fig, {"_js2py_relayout": {"relayout_data": {"title.text": "z" * 100_000}}})
        assert fig.layout.title.text != "z" * 100_000
    finally:
        d.close()


@pytest.mark.browser
def test_tampered_widget_messages_are_refused_without_a_query(
    browser: Any,  # noqa: F811
    server: str,
    statements: Path,
) -> None:
    viewer = Viewer(browser, server)
    try:
        page = viewer.page
        wait_for(lambda: panel_queries(statements, viewer.kernel_id) > 0, 30, "the first panels")
        before = panel_queries(statements, viewer.kernel_id)
        refreshed = re.search(r"refreshed \S+", viewer.status())
        assert refreshed, viewer.status()

        async def script(send: Any, reply: Any) -> tuple[Any, Any, list[Any]]:
            seen: list[Any] = []

            async def until(match: Any, timeout: float = 20) -> list[Any]:
                got = await reply(match, timeout)
                seen.extend(got)
                return list(got)

            states = _widget_states(send, until)
            first = await states()
            field = next(
                k
                for k, s in first.items()
                if s["model_name"] == "DropdownModel" and s["state"]["description"] == "Field"
            )
            layout = first[field]["state"]["layout"].removeprefix("IPY_MODEL_")
            figure = next(k for k, s in first.items() if "_js2py_relayout" in s["state"])
            bad_states: list[Any] = [
                {"index": 42},
                {"index": -1},
                {"index": "1"},
                {"index": 1.5},
                {"index": True},  # JSON true: a bool, though Python counts it as 1
                {"index": None},
                {"index": [1]},
                {"index": {"index": 1}},
                {"index": "3; DROP TABLE streaming_data"},
                {"value": "download_speed"},
                {"value": 7},
                {"label": "Download speed"},
                {"index": 2, "unknown_trait": 1},  # a valid index beside an unknown name
                {"unknown_trait": "x"},
                {"_options_labels": [str(i) for i in range(12)]},
                {"index": 11},
                {"description": "<img src=x onerror=alert(1)>"},
                {"disabled": True},
                {},
                [1, 2, 3],
                "index",
                None,
                {"index": "x" * HUGE},
                {"index": list(range(HUGE // 8))},
                {"unknown_trait": "y" * HUGE},
            ]
            for state in bad_states:
                await send("comm_msg", update(field, state, buffer_paths=[]))
            # messages of the wrong shape, to the control, its layout and a figure
            for data in (
                {"state": {"index": 0}},  # no method
                {"method": "custom", "content": {"index": 0}},
                {"method": "no-such-method"},
                {"method": "update", "state": {"index": 0}, "buffer_paths": [["index"]]},
                "update",
            ):
                await send("comm_msg", {"comm_id": field, "data": data})
            await send("comm_msg", update(layout, {"width": [1, 2]}))
            await send("comm_msg", update(layout, {"display": "none"}))
            await send("comm_msg", update(figure, {"_js2py_relayout": "not a dict"}))
            await send(
                "comm_msg",
                update(figure, {"_js2py_relayout": {"title.text": "z" * HUGE}}),
            )
            await send("comm_msg", update(figure, {"_data": []}))
            # to comms that do not exist
            for _ in range(3):
                await send("comm_msg", update(uuid.uuid4().hex, {"index": 0}))
            await send("comm_close", {"comm_id": uuid.uuid4().hex, "data": {}})
            await send(
                "comm_open", {"comm_id": uuid.uuid4().hex, "target_name": "no.such", "data": {}}
            )
            # shell messages are handled in order: once this is answered, all the above are
            info = await send("kernel_info_request", {})
            await until(replies_to(info), timeout=120)
            last = await states()
            # what the kernel prints reaches the client a moment later: read until a quiet second
            with contextlib.suppress(TimeoutError):
                for _ in range(50):
                    await until(lambda _: True, timeout=1)
            return first[field]["state"], last[field]["state"], seen

        before_state, after_state, seen = talk(server, viewer.kernel_id, script)

        # nothing changed, and no traceback (nor any error) came back
        for key in ("index", "_options_labels", "description", "disabled"):
            assert after_state[key] == before_state[key], key
        assert after_state["index"] == 3  # upload_speed
        errors = [m["content"] for m in seen if m.get("msg_type") in ("error", "stream")]
        assert errors == []
        assert not any("Traceback" in json.dumps(m, default=str) for m in seen)
        assert kernel_alive(server, viewer.kernel_id)

        # no query ran: give the refresh loop a full interval to run one, were it asked to
        time.sleep(REFRESH + 1.5)
        assert panel_queries(statements, viewer.kernel_id) == before
        status = viewer.status()
        assert re.search(r"refreshed \S+", status).group(0) == refreshed.group(0)  # type: ignore[union-attr]
        assert "refused" in status and "Traceback" not in status
        shown = page.locator(".dd-control select").first
        text = shown.evaluate("el => el.options[el.selectedIndex].text")
        assert text.replace("\xa0", " ") == "Upload speed"

        # the page is still usable: a real change updates every panel that depends on it
        viewer.select("Field", "Download speed")
        page.wait_for_function(
            "t => [...document.querySelectorAll('.js-plotly-plot')]"
            ".every((p, i) => p.layout.title.text === t[i])",
            arg=titles("Download speed"),
            timeout=30_000,
        )
        assert panel_queries(statements, viewer.kernel_id) > before
        assert "refused" not in viewer.status()
    finally:
        viewer.page.close()
