"""The live page in a real browser: a real Voilà server, a real SQLite store, headless Chromium.

Run with ``pytest -m browser``. One server and one page are shared by most tests, in file order;
the capacity test starts a second server with a cap of one kernel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from drivendata import stream
from drivendata.database import Source, reader, source_from, table_sql, writer
from drivendata.panels import Query, compute
from tests.conftest import stop

pytestmark = pytest.mark.browser

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROWS = 20_000
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
REFRESH = 5.0  # the dashboard's default refresh interval, in seconds
FIRST_PAINT_TIMEOUT = 90_000  # ms; generous for a loaded CI machine, the benchmark measures it

# Six plots drawn with the first query's data (before it, the panels show "Loading…").
SIX_PLOTS_DRAWN = """() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  const status = document.querySelector('.dd-status');
  return plots.length >= 6 && plots.every(p => p.data && p.data.length && p.layout)
    && !!status && status.innerText.includes('refreshed');
}"""

# Every plot's title and data, typed arrays turned into plain ones.
PLOTS = """() => {
  const plain = v => ArrayBuffer.isView(v) ? Array.from(v)
    : Array.isArray(v) ? v.map(plain)
    : (v && typeof v === 'object') ? Object.fromEntries(
        Object.entries(v).map(([k, x]) => [k, plain(x)]))
    : v;
  return [...document.querySelectorAll('.js-plotly-plot')].map(p => ({
    title: p.layout.title && p.layout.title.text,
    data: plain(p.data),
  }));
}"""

# The axis types plotly.js draws with: it guesses them again whenever a trace's data change.
AXIS_TYPES = """() => [...document.querySelectorAll('.js-plotly-plot')]
  .map(p => [p._fullLayout.xaxis?.type ?? null, p._fullLayout.yaxis?.type ?? null])"""

KERNEL_ID = "() => JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId"


DATA_KEYS = (
    "x",
    "y",
    "labels",
    "values",
    "customdata",
    "q1",
    "median",
    "q3",
    "mean",
    "lowerfence",
    "upperfence",
    "base",
)


def numbers(plot: dict[str, Any]) -> list[dict[str, Any]]:
    """The numbers a plot draws, without styling and without properties set to nothing."""
    return [{k: t[k] for k in DATA_KEYS if t.get(k) is not None} for t in plot["data"]]


def titles(field: str, versus: str = "Consumed traffic") -> list[str]:
    return [
        f"{versus} vs {field} (top 10)",
        f"Top 10 people by {field}",
        f"{field} over time",
        f"Distribution of {field}",
        f"Histogram of {field}",
        "Users by age group",
    ]


# ---------------------------------------------------------------- fixtures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something true, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}.")
        time.sleep(0.2)


@contextmanager
def voila_server(tmp: Path, db_url: str, **settings: str) -> Iterator[str]:
    """Run ``drivendata serve`` on a free port; yield its URL; dump its log if it dies."""
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    env = {**os.environ, "DRIVENDATA_DATABASE_URL": db_url}
    env.update({f"DRIVENDATA_{k.upper()}": v for k, v in settings.items()})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "drivendata.server", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"The server exited with {proc.returncode}:\n{log_path.read_text()}"
            )
        try:
            return get(url + "healthz", timeout=2)[0] == 200
        except OSError:
            return False

    try:
        wait_for(ready, 60, "the server to answer /healthz")
        yield url
    finally:
        stop(proc)
        if os.environ.get("DRIVENDATA_SHOW_SERVER_LOG"):
            print(log_path.read_text())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Source:
    path = tmp_path_factory.mktemp("store") / "drivendata.db"
    source = source_from(f"sqlite:///{path}")
    stream.seed(source, rows=ROWS, days=7, seed=7)
    return source


@pytest.fixture(scope="module")
def server(store: Source, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with voila_server(
        tmp_path_factory.mktemp("server"), str(store.url), preheat="1", max_kernels="4"
    ) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Viewer:
    """One open page, with what it asked the network for."""

    def __init__(self, browser: Any, url: str) -> None:
        self.url = url
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.response = self.page.goto(url, wait_until="commit")
        self.page.wait_for_function(SIX_PLOTS_DRAWN, timeout=FIRST_PAINT_TIMEOUT)
        self.source = self.response.text()
        self.kernel_id: str = self.page.evaluate(KERNEL_ID)

    def plots(self) -> list[dict[str, Any]]:
        return self.page.evaluate(PLOTS)

    def status(self) -> str:
        return self.page.inner_text(".dd-status")

    def status_class(self) -> str:
        return self.page.get_attribute(".dd-status", "class") or ""

    def select(self, label: str, option: str) -> None:
        control = self.page.locator(f".dd-control:has(label:text-is('{label}')) select")
        control.select_option(label=option)


@pytest.fixture(scope="module")
def viewer(browser: Any, server: str) -> Iterator[Viewer]:
    v = Viewer(browser, server)
    yield v
    v.page.close()


def kernel_alive(url: str, kernel_id: str) -> bool:
    return get(f"{url}api/kernels/{kernel_id}")[0] != 404


# ---------------------------------------------------------------- a kernel WebSocket client


def _message(
    msg_type: str, content: dict[str, Any], session: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "test",
            "session": session,
            "date": datetime.now(UTC).isoformat(),
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": metadata,
        "content": content,
        "channel": "shell",
        "buffers": [],
    }


def _from_binary(raw: bytes) -> dict[str, Any]:
    """Decode jupyter_server's binary WebSocket frame: a count, offsets, JSON, buffers."""
    count = struct.unpack("!I", raw[:4])[0]
    offsets = [*struct.unpack(f"!{count}I", raw[4 : 4 * (count + 1)]), len(raw)]
    msg: dict[str, Any] = json.loads(raw[offsets[0] : offsets[1]])
    msg["buffers"] = [raw[a:b] for a, b in zip(offsets[1:], offsets[2:], strict=False)]
    return msg


async def _talk(url: str, kernel_id: str, script: Callable[..., Any]) -> Any:
    from tornado.websocket import websocket_connect

    session = uuid.uuid4().hex
    ws_url = url.replace("http://", "ws://") + f"api/kernels/{kernel_id}/channels"
    conn = await websocket_connect(f"{ws_url}?session_id={session}")

    async def send(
        msg_type: str, content: dict[str, Any], metadata: dict[str, Any] | None = None
    ) -> str:
        msg = _message(msg_type, content, session, metadata or {})
        await conn.write_message(json.dumps(msg))
        return str(msg["header"]["msg_id"])

    async def until(match: Callable[[dict[str, Any]], bool], timeout: float = 20) -> list[Any]:
        """Read messages until one matches; return all read."""
        seen = []
        while True:
            raw = await asyncio.wait_for(conn.read_message(), timeout)
            assert raw is not None, "The kernel WebSocket closed."
            msg = json.loads(raw) if isinstance(raw, str) else _from_binary(raw)
            seen.append(msg)
            if match(msg):
                return seen

    try:
        return await script(send, until)
    finally:
        conn.close()


def talk(url: str, kernel_id: str, script: Callable[..., Any]) -> Any:
    """Run an async script against a kernel's WebSocket, in a thread of its own (Playwright's
    sync API owns this thread's event loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _talk(url, kernel_id, script)).result(timeout=120)


def replies_to(msg_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: (
        m.get("parent_header", {}).get("msg_id") == msg_id
        and m.get("msg_type", "").endswith("_reply")
    )


# ---------------------------------------------------------------- the tests, in order


def test_health_endpoint_starts_no_kernel(server: str) -> None:
    before = json.loads(get(server + "healthz")[1])
    for _ in range(5):
        status, body = get(server + "healthz")
        assert status == 200
        assert json.loads(body)["status"] == "ok"
    after = json.loads(get(server + "healthz")[1])
    assert before["viewers"] == after["viewers"] == 0
    assert after["max_kernels"] == 4


def test_panels_show_titles_and_the_query_modules_numbers(viewer: Viewer, store: Source) -> None:
    plots = viewer.plots()
    assert [p["title"] for p in plots] == titles("Upload speed")
    assert viewer.page.inner_text(".dd-title") == "DrivenData Dashboard"
    assert viewer.page.title() == "DrivenData Dashboard"
    assert f"{ROWS:,} rows in all time" in viewer.status()

    engine = reader(store)
    with engine.connect() as conn:
        expected = compute(conn, store, Query(field="upload_speed", window="all"))
    engine.dispose()
    by_title = {p["title"]: p["data"][0] for p in plots}

    top = by_title["Top 10 people by Upload speed"]
    # The best person is drawn on top, which plotly wants last.
    assert top["y"][::-1] == list(expected["top_people"]["person_name"])
    assert top["customdata"][::-1] == [int(v) for v in expected["top_people"]["value"]]

    hist = by_title["Histogram of Upload speed"]
    assert hist["y"] == [int(c) for c in expected["histogram"]["count"]]

    ages = by_title["Users by age group"]
    assert ages["labels"] == [str(a) for a in expected["age_groups"]["age_group"]]
    assert ages["values"] == pytest.approx([float(s) for s in expected["age_groups"]["share"]])


def test_page_has_no_code_and_asks_nothing_of_the_internet(viewer: Viewer, server: str) -> None:
    for code in ("drivendata.dashboard", "Dashboard.from_settings", "import "):
        assert code not in viewer.source
    outside = [u for u in viewer.requests if not u.startswith((server, "data:", "blob:"))]
    assert outside == []
    assert "cdn.jsdelivr.net" not in viewer.source
    # The served folder holds only the notebook, and the notebook itself is not served.
    assert get(server + "voila/files/dashboard.ipynb")[0] == 403


def test_execute_request_over_the_websocket_runs_nothing(
    viewer: Viewer, server: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"

    async def script(send: Any, until: Any) -> list[Any]:
        await send("execute_request", {"code": f"open({str(marker)!r}, 'w').write('ran')"})
        # Messages on the shell channel are handled in order: once this is answered, the
        # execute request has been dealt with too.
        info = await send("kernel_info_request", {})
        return await until(replies_to(info))

    seen = talk(server, viewer.kernel_id, script)
    kinds = {m.get("msg_type") for m in seen}
    assert "execute_reply" not in kinds and "execute_input" not in kinds
    assert not marker.exists()


def _widget_states(send: Any, until: Any) -> Any:
    async def states() -> dict[str, Any]:
        comm_id = uuid.uuid4().hex
        await send(
            "comm_open",
            {"comm_id": comm_id, "target_name": "jupyter.widget.control", "data": {}},
            {"version": "1.0.0"},
        )
        await send("comm_msg", {"comm_id": comm_id, "data": {"method": "request_states"}})
        seen = await until(
            lambda m: (
                m.get("msg_type") == "comm_msg"
                and m["content"]["data"].get("method") == "update_states"
            )
        )
        return seen[-1]["content"]["data"]["states"]

    return states


def test_value_outside_the_list_is_refused_without_a_query(viewer: Viewer, server: str) -> None:
    refreshed = re.search(r"refreshed \S+", viewer.status())
    assert refreshed, viewer.status()

    async def script(send: Any, until: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        states = _widget_states(send, until)
        before = await states()
        field = next(
            k
            for k, s in before.items()
            if s["model_name"] == "DropdownModel" and s["state"]["description"] == "Field"
        )
        for bad in ({"index": 42}, {"index": "3; DROP TABLE x"}, {"index": -7}):
            await send(
                "comm_msg",
                {
                    "comm_id": field,
                    "data": {"method": "update", "state": bad, "buffer_paths": []},
                },
            )
        info = await send("kernel_info_request", {})
        await until(replies_to(info))
        after = await states()
        return before[field]["state"], after[field]["state"]

    before, after = talk(server, viewer.kernel_id, script)
    assert after["index"] == before["index"] == 3  # upload_speed
    # No query ran: with no new rows a refresh only polls the data version, so the panels'
    # "refreshed" time moves only when the panels are computed again. Give the refresh loop
    # one full interval to show a recompute, were there one.
    deadline = time.monotonic() + REFRESH + 1
    while time.monotonic() < deadline:
        assert re.search(r"refreshed \S+", viewer.status()).group(0) == refreshed.group(0)  # type: ignore[union-attr]
        time.sleep(0.5)
    assert "dd-error" not in viewer.status_class()
    assert viewer.page.locator(".dd-control select").first.input_value() is not None
    assert [p["title"] for p in viewer.plots()] == titles("Upload speed")


def test_field_and_window_change_every_panel_that_depends_on_them(viewer: Viewer) -> None:
    page = viewer.page
    before = viewer.plots()
    axes = page.evaluate(AXIS_TYPES)
    assert axes[2][0] == "date"  # the timeline's

    viewer.select("Field", "Download speed")
    page.wait_for_function(
        "t => [...document.querySelectorAll('.js-plotly-plot')]"
        ".every((p, i) => p.layout.title.text === t[i])",
        arg=titles("Download speed"),
        timeout=30_000,
    )
    by_field = viewer.plots()
    for old, new in zip(before[:5], by_field[:5], strict=True):
        assert numbers(old) != numbers(new), new["title"]
    assert numbers(by_field[5]) == numbers(before[5])  # age groups do not depend on the field

    viewer.select("Window", "Last 15 minutes")
    page.wait_for_function(
        "() => document.querySelector('.dd-status').innerText.includes('last 15 minutes')",
        timeout=30_000,
    )
    by_window = wait_for(
        lambda: (
            (p := viewer.plots())
            and all(a["data"] != b["data"] for a, b in zip(by_field, p, strict=True))
            and p
        ),
        30,
        "every panel to show the last 15 minutes",
    )
    assert [p["title"] for p in by_window] == titles("Download speed")

    viewer.select("Field", "Upload speed")
    viewer.select("Window", "All time")
    page.wait_for_function(
        "() => document.querySelector('.dd-status').innerText.includes('in all time')"
        " && document.querySelector('.js-plotly-plot').layout.title.text.includes('Upload')",
        timeout=30_000,
    )
    wait_for(
        lambda: [numbers(p) for p in viewer.plots()] == [numbers(p) for p in before],
        30,
        "the panels to return to the defaults",
    )
    # every axis is drawn as it was, times as times (the timeline's once turned into numbers)
    assert page.evaluate(AXIS_TYPES) == axes


def test_rows_inserted_while_open_appear_within_the_refresh_interval(
    viewer: Viewer, store: Source
) -> None:
    rows = stream.Generator(seed=99).rows([datetime.now(UTC).replace(tzinfo=None)] * 300)
    engine = writer(store)
    with engine.begin() as conn:
        stream.insert(conn, store, rows)
    engine.dispose()
    inserted = time.monotonic()
    viewer.page.wait_for_function(
        "n => document.querySelector('.dd-status').innerText.includes(n)",
        arg=f"{ROWS + 300:,} rows in all time",
        timeout=(REFRESH + 2) * 1000,
    )
    assert time.monotonic() - inserted <= REFRESH + 2
    hist = next(p for p in viewer.plots() if p["title"].startswith("Histogram"))
    assert sum(hist["data"][0]["y"]) == ROWS + 300


def test_database_outage_warns_and_recovers_without_a_reload(viewer: Viewer, store: Source) -> None:
    """The table disappears and comes back: SQLite has no server to stop, and the page's open
    connections would go on reading a moved file, so the outage is a rename of the table."""
    page = viewer.page
    page.evaluate("() => { window.__same_page = true; }")
    engine = writer(store)
    name = store.table.name
    prefix = f"{store.table.schema}." if store.table.schema else ""
    away = f"ALTER TABLE {table_sql(store)} RENAME TO {name}_away"
    back = f"ALTER TABLE {prefix}{name}_away RENAME TO {name}"
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(away))
        page.wait_for_selector(".dd-status.dd-error", timeout=(REFRESH + 10) * 1000)
        assert "dd-stale" in (page.get_attribute(".dd-grid", "class") or "")
        warning = viewer.status()
        assert "Traceback" not in warning
        assert "stale" in warning.lower()
        # The last good panels stay.
        assert [p["title"] for p in viewer.plots()] == titles("Upload speed")
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(back))
        engine.dispose()
    page.wait_for_function(
        "() => !document.querySelector('.dd-status').classList.contains('dd-error')",
        timeout=45_000,
    )
    assert "dd-stale" not in (page.get_attribute(".dd-grid", "class") or "")
    assert page.evaluate("() => window.__same_page") is True


def test_full_page_screenshot(viewer: Viewer) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page = viewer.page
    height = page.evaluate("() => document.querySelector('.dd-dashboard').scrollHeight")
    page.set_viewport_size({"width": 1400, "height": max(int(height) + 40, 900)})
    page.wait_for_function(SIX_PLOTS_DRAWN)
    path = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 50_000


def test_closing_or_crashing_a_tab_ends_its_kernel_within_30_s(browser: Any, server: str) -> None:
    closed = Viewer(browser, server)
    crashed = Viewer(browser, server)
    assert kernel_alive(server, closed.kernel_id) and kernel_alive(server, crashed.kernel_id)
    gone_at = time.monotonic()
    closed.page.close(run_before_unload=True)
    with pytest.raises(playwright_api.Error):
        crashed.page.goto("chrome://crash", timeout=5000)  # dies without saying goodbye
    wait_for(
        lambda: (
            not kernel_alive(server, closed.kernel_id)
            and not kernel_alive(server, crashed.kernel_id)
        ),
        30,
        "both kernels to end",
    )
    assert time.monotonic() - gone_at <= 30
    crashed.page.close()


def test_kernel_cap_answers_with_the_capacity_page(
    browser: Any, store: Source, tmp_path: Path
) -> None:
    with voila_server(tmp_path, str(store.url), preheat="0", max_kernels="1") as url:
        first = browser.new_page()
        first.goto(url, wait_until="commit")
        wait_for(
            lambda: json.loads(get(url + "healthz")[1])["viewers"] == 1, 30, "the first kernel"
        )
        status, body = get(url)
        assert status == 503
        assert "at capacity" in body and "try again shortly" in body
        health = json.loads(get(url + "healthz")[1])
        assert health["viewers"] == 1 and health["at_capacity"] is True

        second = browser.new_page(viewport={"width": 900, "height": 600})
        response = second.goto(url)
        assert response.status == 503
        assert "try again shortly" in second.inner_text("body")
        ARTIFACTS.mkdir(exist_ok=True)
        second.screenshot(path=str(ARTIFACTS / "capacity.png"))
        second.close()
        first.close()
