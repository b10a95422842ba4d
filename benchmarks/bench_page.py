"""Benchmark the live page: first paint, control change to all panels updated, kernel memory.

Starts ``drivendata serve`` on a free port against a seeded SQLite store and drives headless
Chromium. Each start (``--starts``) measures, per table size:

- **cold**: no preheated kernel, ``--loads`` page loads;
- **first visitor**: the first page load after a server with one preheated kernel starts, once
  ``/healthz`` reports that kernel preheated;
- **preheated**: the later loads on that server (each once the pool has refilled);
- **early visitor** (``--early``): the first page load on a fresh preheating server as soon as
  ``/healthz`` answers at all, preheated kernel or not.

Prints a table: first paint, when the page's HTML had all arrived (``html``), control change,
kernel memory; median (min-max) over every load of the case.

Example: python benchmarks/bench_page.py --rows 1000000 --loads 3 --starts 3 --early
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import psutil
from playwright.sync_api import sync_playwright

from drivendata import stream
from drivendata.database import source_from

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DRAWN = """() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  const status = document.querySelector('.dd-status');
  return plots.length >= 6 && plots.every(p => p.data && p.data.length && p.layout)
    && !!status && status.innerText.includes('refreshed');
}"""
TITLES = "() => [...document.querySelectorAll('.js-plotly-plot')].map(p => p.layout.title.text)"
KERNEL_ID = "() => JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId"


def wait_for(condition: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Condition not met in {timeout} s.")
        time.sleep(0.1)
    return value


def health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "healthz", timeout=5) as resp:
        return json.loads(resp.read())


@contextmanager
def server(
    db_url: str, preheat: int, *, wait_preheated: bool = True
) -> Iterator[tuple[str, psutil.Process]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "DRIVENDATA_DATABASE_URL": db_url,
        "DRIVENDATA_PREHEAT": str(preheat),
        "DRIVENDATA_MAX_KERNELS": "16",
    }
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, after the server stops
    proc = subprocess.Popen(
        [sys.executable, "-m", "drivendata.server", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"

    def ready() -> bool:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"The server died:\n{log.read().decode()}")
        try:
            answer = health(url)
            return bool(answer) and (
                preheat == 0 or not wait_preheated or answer["preheated"] >= preheat
            )
        except OSError:
            return False

    try:
        wait_for(ready, 120)
        yield url, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def kernel_rss(server_proc: psutil.Process, kernel_id: str) -> float:
    """Return the resident memory of one kernel process, in MB."""
    for child in server_proc.children(recursive=True):
        try:
            if any(kernel_id in part for part in child.cmdline()):
                return float(child.memory_info().rss) / 1e6
        except psutil.NoSuchProcess:
            continue
    return float("nan")


def measure(
    url: str, server_proc: psutil.Process, browser: Any, preheat: int, *, wait: bool = True
) -> dict[str, float]:
    if preheat and wait:
        wait_for(lambda: health(url)["preheated"] >= preheat, 120)  # the pool refilled
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    began = time.monotonic()
    page.goto(url, wait_until="commit")
    page.wait_for_function(DRAWN, timeout=180_000, polling=50)
    first_paint = time.monotonic() - began
    html = page.evaluate("() => performance.getEntriesByType('navigation')[0].responseEnd") / 1000
    kernel_id = page.evaluate(KERNEL_ID)

    before = page.evaluate(TITLES)
    began = time.monotonic()
    page.locator(".dd-control:has(label:text-is('Field')) select").select_option(
        label="Download speed"
    )
    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')].slice(0, 5)"
        ".every(p => p.layout.title.text.includes('Download speed'))",
        timeout=60_000,
        polling=20,
    )
    control = time.monotonic() - began
    rss = kernel_rss(server_proc, kernel_id)
    page.close(run_before_unload=True)
    assert before[1].endswith("Upload speed"), before
    return {"first_paint": first_paint, "html": html, "control": control, "rss": rss}


def ensure_store(rows: int, folder: Path) -> str:
    path = folder / f"drivendata_bench_page_{rows}.db"
    url = f"sqlite:///{path}"
    if not path.exists():
        click.echo(f"Seeding {rows:,} rows into {path}…", err=True)
        stream.seed(source_from(url), rows=rows, days=7, seed=1)
    return url


KEYS = ("first_paint", "html", "control", "rss")


@click.command()
@click.option(
    "--rows", "sizes", type=int, multiple=True, default=(100_000, 1_000_000), show_default=True
)
@click.option("--loads", type=int, default=3, show_default=True, help="Page loads per start.")
@click.option(
    "--starts",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Server starts per case; each gives one first visitor.",
)
@click.option(
    "--early",
    is_flag=True,
    help="Also measure a visitor who arrives as soon as /healthz answers after a start.",
)
@click.option(
    "--folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(tempfile.gettempdir()),
    show_default=True,
    help="Where the seeded stores are kept between runs.",
)
def main(sizes: tuple[int, ...], loads: int, starts: int, early: bool, folder: Path) -> None:
    """Measure the page at each table size: cold, first visitor, preheated (and early)."""
    results: list[dict[str, Any]] = []
    modes = ("cold", "first visitor", "preheated", *(("early visitor",) if early else ()))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for rows in sizes:
            db_url = ensure_store(rows, folder)
            runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
            for _ in range(starts):
                with server(db_url, 0) as (url, proc):
                    runs["cold"] += [measure(url, proc, browser, 0) for _ in range(loads)]
                with server(db_url, 1) as (url, proc):
                    loaded = [measure(url, proc, browser, 1) for _ in range(loads)]
                runs["first visitor"].append(loaded[0])
                runs["preheated"] += loaded[1:]
                if early:
                    with server(db_url, 1, wait_preheated=False) as (url, proc):
                        runs["early visitor"].append(measure(url, proc, browser, 1, wait=False))
                click.echo(json.dumps({"rows": rows, **runs}), err=True)
            for mode in modes:
                if runs[mode]:
                    results.append(
                        {
                            "rows": rows,
                            "mode": mode,
                            **{k: [r[k] for r in runs[mode]] for k in KEYS},
                        }
                    )
        browser.close()

    cpu = os.cpu_count()
    load = os.getloadavg()[0]
    click.echo(
        f"\n{cpu} CPUs, load average {load:.1f} at the end; median (min-max) over n loads; "
        f"{starts} start(s) of the server per case."
    )
    click.echo(
        f"{'rows':>10}  {'case':<14} {'n':>2} {'first paint s':>20} {'html s':>20} "
        f"{'control change s':>20} {'kernel RSS MB':>14}"
    )

    def spread(xs: list[float]) -> str:
        return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"

    for r in results:
        click.echo(
            f"{r['rows']:>10,}  {r['mode']:<14} {len(r['first_paint']):>2} "
            f"{spread(r['first_paint']):>20} {spread(r['html']):>20} "
            f"{spread(r['control']):>20} {statistics.median(r['rss']):>14.0f}"
        )


if __name__ == "__main__":
    main()
