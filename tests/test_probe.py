"""Probing the served app over plain HTTP, as anyone who reaches the port could.

A real server (``drivendata serve``) on a real SQLite store, started in a folder that also holds
a ``.env`` file and an image, so that files which must never be served sit close by. Requests
are sent with ``http.client``, which sends a path byte for byte (no normalising of ``..``);
redirects are followed by hand. The last test kills a kernel under an open page in headless
Chromium (``pytest -m browser``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from drivendata import stream
from drivendata.database import Source, source_from
from drivendata.server import KERNEL_GONE
from tests.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    KERNEL_ID,
    SIX_PLOTS_DRAWN,
    get,
    playwright_api,
    voila_server,
    wait_for,
)

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
SECRET = "DDPROBE-SECRET-4f1c9a"  # the .env file's content; must never come back

# Text that must not appear in any answer: each is the start or a line of a file that is not
# the page's (the notebook, the package, the README, the store, /etc/passwd, the .env, the
# kernels' startup file beside the served folder).
MARKERS = (
    b"root:x:0:0",
    b"SQLite format 3",
    b"class DashboardKernelManager",
    b"def compute_all",
    b"# DrivenData Live",
    b'"nbformat"',
    b"Dashboard.from_settings",
    b"plotly.basewidget.BaseFigureWidget._esm",
    SECRET.encode(),
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the server runs in: a store, a .env and an image beside it."""
    folder = tmp_path_factory.mktemp("probe")
    (folder / ".env").write_text(f"DRIVENDATA_TOKEN={SECRET}\n")
    # any image beside the notebook would be served; this one is beside the server instead
    (folder / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\n" + SECRET.encode())
    return folder


@pytest.fixture(scope="module")
def store(workdir: Path) -> Source:
    source = source_from(f"sqlite:///{workdir / 'drivendata.db'}")
    stream.seed(source, rows=2_000, days=2, seed=5)
    return source


@contextlib.contextmanager
def server_in(folder: Path, store: Source, **settings: str) -> Iterator[str]:
    """Run ``voila_server`` with ``folder`` as the server's working directory."""
    with contextlib.chdir(folder), voila_server(folder, str(store.url), **settings) as url:
        yield url


@pytest.fixture(scope="module")
def server(workdir: Path, store: Source) -> Iterator[str]:
    with server_in(workdir, store, preheat="1", max_kernels="4", cache="off") as url:
        wait_for(lambda: health(url)["preheated"] == 1, 60, "the preheated kernel")
        yield url


def health(url: str) -> dict[str, Any]:
    return dict(json.loads(get(url + "healthz")[1]))


def port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1])


def request(
    url: str, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, bytes, list[str]]:
    """Send ``path`` exactly as given; follow up to three redirects; return the last status,
    body and every path asked for."""
    asked = [path]
    for _ in range(4):
        conn = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=20)
        try:
            conn.request(
                method, path, body=b"{}" if method != "GET" else None, headers=headers or {}
            )
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        location = resp.getheader("Location")
        if resp.status in (301, 302, 303, 307, 308) and location:
            path = re.sub(r"^https?://[^/]+", "", location)
            asked.append(path)
            method = "GET"
            continue
        return resp.status, body, asked
    raise AssertionError(f"Redirect loop: {asked}")


def leaked(body: bytes) -> list[bytes]:
    return [m for m in MARKERS if m in body]


def server_log(url: str, workdir: Path) -> str:
    return (workdir / f"server-{port_of(url)}.log").read_text(errors="replace")


def kernel_processes(url: str) -> list[psutil.Process]:
    """The kernels the server started: its child processes running ipykernel."""
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port_of(url) and conn.status == "LISTEN":
            server = psutil.Process(conn.pid)
            return [p for p in server.children(recursive=True) if _is_kernel(p)]
    raise AssertionError("No process listens on the server's port.")


def _is_kernel(process: psutil.Process) -> bool:
    """Whether a process is a live kernel (one that just ended is not)."""
    try:
        return "ipykernel_launcher" in " ".join(process.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return False


# ---------------------------------------------------------------- the probes

LISTINGS = (
    "/voila",
    "/voila/",
    "/voila/files",
    "/voila/files/",
    "/voila/files/.",
    "/voila/static/",
    "/voila/templates/",
    "/voila/templates/lab/",
    "/voila/templates/lab/static/",
    "/voila/labextensions/",
    "/voila/api/themes/",
    "/voila/tree",
    "/voila/tree/",
    "/voila/render/",
    "/voila/api/contents",
    "/voila/api/contents/",
    "/drivendata/static/",
    "/static/",
    "/api",
    "/api/",
    "/api/kernels",
    "/api/sessions",
    "/api/contents",
    "/api/contents/",
    "/api/kernelspecs",
    "/api/terminals",
    "/api/config",
    "/api/nbconvert",
    "/tree",
    "/tree/",
    "/lab",
    "/lab/tree",
    "/notebooks",
    "/notebooks/",
    "/files/",
    "/nbconvert/",
    "/edit/",
    "/view/",
    "//",
    "/./",
    "/kernelspecs/",
)


def test_no_folder_is_listed_and_probing_starts_no_kernel(server: str, workdir: Path) -> None:
    before = health(server)
    for path in LISTINGS:
        status, body, asked = request(server, path)
        assert status in (403, 404, 405), (asked, status, body[:200])
        assert not leaked(body), asked
        for listing in (b"dashboard.ipynb", b'"type": "directory"', b"Index of", b"drivendata.db"):
            assert listing not in body, (asked, listing)
    after = health(server)
    assert after["viewers"] == before["viewers"] == 0
    assert "Uncaught exception" not in server_log(server, workdir)


NOTEBOOK_ROUTES = (
    "/dashboard.ipynb",
    "/voila/files/dashboard.ipynb",
    "/voila/files/./dashboard.ipynb",
    "/voila/files/DASHBOARD.IPYNB",
    "/voila/files/dashboard.ipynb?download=1",
    "/voila/files/dashboard%2eipynb",
    "/voila/files/dashboard.ipynb%00.png",
    "/voila/files/dashboard.ipynb%3F.png",
    "/voila/render/dashboard.ipynb",
    "/voila/api/contents/dashboard.ipynb",
    "/files/dashboard.ipynb",
    "/notebooks/dashboard.ipynb",
    "/nbconvert/html/dashboard.ipynb",
    "/nbconvert/notebook/dashboard.ipynb",
    "/nbconvert/script/dashboard.ipynb",
    "/api/contents/dashboard.ipynb",
    "/api/contents/dashboard.ipynb?content=1",
    "/lab/tree/dashboard.ipynb",
    "/edit/dashboard.ipynb",
    "/view/dashboard.ipynb",
    "/voila/files/secret.png",
    "/secret.png",
    "/.env",
    "/voila/files/.env",
    "/drivendata.db",
    "/voila/files/drivendata.db",
    "/drivendata/static/server.py",
    "/drivendata/static/../server.py",
    "/drivendata/static/widgetbundle.js/../../server.py",
    "/voila/static/../../drivendata/server.py",
    "/logout",
)


def test_no_notebook_source_nor_any_file_beside_it(server: str, workdir: Path) -> None:
    for path in NOTEBOOK_ROUTES:
        status, body, asked = request(server, path)
        assert not leaked(body), (asked, leaked(body))
        if path == "/logout":  # forgets a login cookie; there is none here
            assert status == 200 and b"signed out" in body
        else:
            assert status in (403, 404, 405), (asked, status, body[:200])
    # what the page does need is served
    assert request(server, "/voila/static/voila.js")[0] == 200
    assert request(server, "/drivendata/static/widgetbundle.js")[0] == 200
    assert "Uncaught exception" not in server_log(server, workdir)


def _traversals(workdir: Path) -> list[str]:
    targets = [
        "etc/passwd",
        str(REPO / "README.md").lstrip("/"),
        str(REPO / "drivendata" / "server.py").lstrip("/"),
        str(REPO / "notebooks" / "dashboard.ipynb").lstrip("/"),
        str(workdir / "drivendata.db").lstrip("/"),
        str(workdir / ".env").lstrip("/"),
        str(workdir / "secret.png").lstrip("/"),
    ]
    ups = (
        "../",
        "..%2f",
        "..%2F",
        "%2e%2e/",
        "%2E%2E%2F",
        ".%2e/",
        "%2e./",
        "%252e%252e%252f",  # encoded twice
        "%25252e%25252e%25252f",  # three times
        "..\\",
        "..%5c",
        "%2e%2e%5c",
        "..%c0%af",  # overlong UTF-8 slash
        "....//",
        "..;/",
    )
    prefixes = (
        "/",
        "/voila/",
        "/voila/files/",
        "/voila/static/",
        "/voila/templates/lab/static/",
        "/voila/labextensions/",
        "/voila/labextensions/@jupyter-widgets/jupyterlab-manager/",
        "/voila/api/themes/",
        "/drivendata/static/",
        "/api/kernels/",
        "/api/contents/",
    )
    paths = [pre + up * 14 + t for pre in prefixes for up in ups for t in targets]
    # the kernels' startup file sits beside the served folder: one level up from its root
    startup = "ipython/profile_default/startup/00-drivendata.py"
    paths += [f"/voila/files/{up}{startup}" for up in ups]
    paths += ["/voila/templates/..%2f..%2f..%2f..%2fetc/static/passwd", "/%2e%2e", "/.."]
    return paths


def test_path_traversal_is_refused_in_every_encoding(server: str, workdir: Path) -> None:
    paths = _traversals(workdir)
    assert len(paths) > 1000
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: request(server, p), paths))
    for (status, body, asked), path in zip(answers, paths, strict=True):
        assert not leaked(body), (asked, leaked(body))
        # refused, not found, or redirected to a place that refuses it; never a server error
        assert status in (400, 403, 404, 405), (path, asked, status)
    assert health(server)["viewers"] == 0
    assert "Uncaught exception" not in server_log(server, workdir)


def test_the_rest_api_starts_no_kernel_and_reads_no_file(server: str, workdir: Path) -> None:
    """As a viewer: with the page's cookies and its XSRF token, as the page's own calls have."""
    conn = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=60)
    conn.request("GET", "/")
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200
    kernel = re.search(rb'"kernelId": "([0-9a-f-]{36})"', body)
    assert kernel, body[:300]
    kernel_id = kernel.group(1).decode()
    # the cookies the page gets, its XSRF token among them, sent back as the page would
    cookies = "; ".join(c.split(";", 1)[0] for c in resp.headers.get_all("Set-Cookie") or [])
    xsrf = re.search(r"_xsrf=([^;]+)", cookies)
    assert xsrf, cookies
    headers = {"Cookie": cookies, "X-XSRFToken": xsrf.group(1), "Content-Type": "application/json"}
    wait_for(lambda: health(server)["preheated"] == 1, 60, "the pool to refill")
    kernels = {p.pid for p in kernel_processes(server)}
    calls = [
        ("POST", "/api/kernels"),
        ("POST", "/api/sessions"),
        ("GET", "/api/sessions"),
        ("GET", "/api/kernels"),
        ("POST", f"/api/kernels/{kernel_id}/restart"),
        ("POST", f"/api/kernels/{kernel_id}/interrupt"),
        ("POST", "/api/terminals"),
        ("GET", "/api/contents"),
        ("GET", "/api/contents/dashboard.ipynb"),
        ("PUT", "/api/contents/new.ipynb"),
        ("POST", "/api/contents"),
        ("PATCH", "/api/contents/dashboard.ipynb"),
        ("GET", "/voila/api/contents/dashboard.ipynb"),
        ("POST", "/voila/render/dashboard.ipynb"),
        ("POST", "/"),
        ("PUT", "/"),
    ]
    for method, path in calls:
        status, body, asked = request(server, path, method, headers)
        assert status in (403, 404, 405), (method, asked, status, body[:200])
        assert not leaked(body), (method, asked)
    # the one kernel call there is tells nothing but the kernel's own state
    status, body, _ = request(server, f"/api/kernels/{kernel_id}", headers=headers)
    assert status == 200 and set(json.loads(body)) <= {
        "id",
        "name",
        "last_activity",
        "execution_state",
        "connections",
    }
    assert {p.pid for p in kernel_processes(server)} - kernels == set()
    assert not (workdir / "new.ipynb").exists()


def hang_up(url: str) -> None:
    """Ask for the page and leave at once, as a client that gives up does."""
    conn = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=5)
    conn.request("GET", "/")
    conn.close()


def counted(url: str) -> int:
    """Every kernel the server says it has: viewers' and its pool's."""
    h = health(url)
    return int(h["viewers"] + h["preheated"] + h["warming"])


def test_a_preheated_kernel_taken_by_a_client_that_hung_up_counts_as_a_viewer(
    store: Source, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A client asks for the page and hangs up at once. Voilà still hands it the preheated
    kernel and renders the page: that kernel is a viewer's until the drop timeout ends it, so a
    server capped at one viewer turns the next visitor away meanwhile, and the server's count
    of kernels matches the kernel processes. (It once counted such a kernel nowhere: the cap
    let one more page in, and the machine ran one kernel more than the server reported.)"""
    folder = tmp_path_factory.mktemp("hung-up")
    with server_in(
        folder, store, preheat="1", max_kernels="1", cache="off", drop_timeout="20"
    ) as url:
        wait_for(lambda: health(url)["preheated"] == 1, 60, "the preheated kernel")
        hang_up(url)
        wait_for(lambda: health(url)["viewers"] == 1, 20, "the hung-up client's kernel")
        wait_for(lambda: health(url)["preheated"] == 1, 60, "the pool to refill")
        assert request(url, "/")[0] == 503
        assert counted(url) == 2
        wait_for(lambda: len(kernel_processes(url)) == 2, 10, "two kernel processes")
        wait_for(lambda: health(url)["viewers"] == 0, 60, "the hung-up client's kernel to go")
        wait_for(lambda: len(kernel_processes(url)) == 1, 10, "only the pool's kernel left")
        assert request(url, "/")[0] == 200


def test_the_kernel_cap_holds_when_many_ask_at_once(
    store: Source, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Eight page requests at the same moment on a server capped at two, with a preheated
    kernel: two pages, six 'at capacity' answers, no more kernels than the cap and the pool.
    Then clients that hang up right after asking: their kernels count under the cap too, and
    are shut down."""
    folder = tmp_path_factory.mktemp("cap")
    # One page gets the preheated kernel at once, the other waits for the pool's refill to
    # start and run the notebook (seconds on a busy machine): the drop timeout must outlast
    # that wait, or the first page's kernel (no WebSocket) is gone before they are counted.
    with server_in(
        folder, store, preheat="1", max_kernels="2", cache="off", drop_timeout="15"
    ) as url:
        wait_for(lambda: health(url)["preheated"] == 1, 60, "the preheated kernel")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: request(url, "/"), range(8)))
        statuses = sorted(a[0] for a in answers)
        assert statuses == [200, 200] + [503] * 6, statuses
        for status, body, _ in answers:
            if status == 503:
                assert b"at capacity" in body
        assert health(url)["viewers"] == 2
        # the two pages' kernels and at most one starting for the pool
        assert len(kernel_processes(url)) <= 3
        started = {p.pid for p in kernel_processes(url)}
        assert request(url, "/")[0] == 503
        assert {p.pid for p in kernel_processes(url)} - started == set()

        # no page opened a WebSocket: their kernels go, and the places are free again
        wait_for(lambda: health(url)["viewers"] == 0, 60, "the unused kernels to be shut down")
        for _ in range(6):
            hang_up(url)
        # Their kernels count while they start and until the drop timeout ends them; on a busy
        # machine one may already be gone when the last starts, so watch rather than wait for 2.
        seen = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and (not seen or seen[-1] != 0 or max(seen) == 0):
            h = health(url)
            seen.append(h["viewers"])
            assert h["viewers"] + h["preheated"] + h["warming"] <= 3, h
            # a kernel the server has just shut down may take a moment to exit; one it has
            # started is counted from the moment its process is launched
            wait_for(lambda: len(kernel_processes(url)) <= counted(url), 10, "no uncounted kernel")
            time.sleep(0.1)
        assert 1 <= max(seen) <= 2, seen
        wait_for(lambda: health(url)["viewers"] == 0, 60, "the hung-up requests' kernels to go")


# A notebook that runs until the test lets it finish: it says it is running (a file beside the
# gate), then waits for the gate file.
GATED_CELL = """\
import os, pathlib, time
gate = pathlib.Path(os.environ["DRIVENDATA_TEST_GATE"])
pathlib.Path(str(gate) + ".running").touch()
while not gate.exists():
    time.sleep(0.05)
print("the gate opened")
"""


def test_a_pool_kernel_is_preheated_only_once_it_has_run_the_notebook(
    store: Source, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """/healthz counts a pooled kernel as preheated only once it has run the notebook (a page
    given it is sent at once); while the notebook still runs, the kernel is 'warming'. A page
    then gets that very kernel, with the notebook's output."""
    folder = tmp_path_factory.mktemp("warming")
    gate = folder / "gate"
    notebook = folder / "gated.ipynb"
    cell = {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None}
    notebook.write_text(
        json.dumps(
            {
                "cells": [{**cell, "source": GATED_CELL}],
                "metadata": {
                    "kernelspec": {
                        "name": "python3",
                        "language": "python",
                        "display_name": "Python 3",
                    }
                },
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )
    with server_in(
        folder, store, preheat="1", max_kernels="2", notebook=str(notebook), test_gate=str(gate)
    ) as url:
        running = Path(str(gate) + ".running")
        wait_for(running.exists, 60, "the pool kernel to run the notebook")
        for _ in range(10):  # the notebook cannot end before the gate opens
            answer = health(url)
            assert (answer["preheated"], answer["warming"], answer["viewers"]) == (0, 1, 0)
            time.sleep(0.1)
        [pooled] = kernel_processes(url)
        gate.touch()
        wait_for(lambda: health(url)["preheated"] == 1, 60, "the notebook to end")
        assert health(url)["warming"] == 0
        status, body, _ = request(url, "/")
        assert status == 200
        assert b"the gate opened" in body
        kernel = re.search(rb'"kernelId": "([0-9a-f-]{36})"', body)
        assert kernel, body[:300]
        assert kernel.group(1).decode() in " ".join(pooled.cmdline())


# ---------------------------------------------------------------- kernel killed under a page


def test_a_killed_kernel_is_said_and_the_page_offers_a_reload(server: str) -> None:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(server, wait_until="commit")
            page.wait_for_function(SIX_PLOTS_DRAWN, timeout=90_000)
            kernel_id = page.evaluate(KERNEL_ID)
            viewers = health(server)["viewers"]
            (victim,) = [p for p in kernel_processes(server) if kernel_id in " ".join(p.cmdline())]
            os.kill(victim.pid, signal.SIGKILL)
            killed = time.monotonic()
            page.wait_for_selector("#dd-gone", timeout=30_000)
            took = time.monotonic() - killed
            banner = page.inner_text("#dd-gone")
            assert KERNEL_GONE in banner
            assert "Traceback" not in banner and "Error" not in banner
            assert page.locator("#dd-gone button").inner_text() == "Reload the page"
            shots = Path("/tmp/w")
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "kernel-gone.png"))
            # the dead kernel is not restarted blank, and its place under the cap is free
            assert get(f"{server}api/kernels/{kernel_id}")[0] == 404
            assert health(server)["viewers"] <= viewers - 1
            with page.expect_navigation(wait_until="commit"):
                page.click("#dd-gone button")
            # the reloaded page has a kernel of its own (drawing it is test_browser's business)
            page.wait_for_selector("#jupyter-config-data", state="attached", timeout=60_000)
            assert page.evaluate(KERNEL_ID) not in (None, kernel_id)
            assert page.locator("#dd-gone").count() == 0
            print(f"banner {took:.1f} s after the kill")
        finally:
            browser.close()
