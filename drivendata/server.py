"""The server: Voilà on the dashboard notebook, with a kernel cap, a culler and a health check.

Voilà runs in this process with a few additions, all made here so that nothing else has to be
configured by hand:

- the served folder is a fresh temporary directory holding only a copy of the notebook, since
  Voilà serves any image file that sits beside the notebook;
- a kernel manager that shuts down a viewer's kernel once no WebSocket has been open to it for
  ``drop_timeout`` seconds (Voilà's stock culler never does when the dashboard's refresh loop
  keeps sending updates, and the page's own shutdown call on close is refused for want of an
  XSRF cookie, which the page handler below now sets);
- a cap on viewers' kernels: visitors beyond it get a short "at capacity" page (HTTP 503)
  instead of a kernel;
- ``/healthz``, which answers with JSON and starts no kernel;
- the page's two FontAwesome stylesheet links to a CDN are dropped, so that the page asks
  nothing of the internet (the dashboard uses no icon font);
- access: off loopback, a viewer needs a shared token (jupyter_server's identity provider, as
  Voilà sets it up: ``/?token=...`` once, or the login page), unless the operator turns that
  off on purpose with DRIVENDATA_OPEN_ACCESS=1.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import tornado.web
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado.ioloop import PeriodicCallback
from traitlets import Float, Integer
from traitlets.config import Config
from voila.app import Voila
from voila.tornado.handler import TornadoVoilaHandler

# Defaults of the serving settings; each can be set with DRIVENDATA_<NAME>.
MAX_KERNELS = 8
DROP_TIMEOUT = 15.0
PREHEAT = 1
HOST = "127.0.0.1"
TITLE = "DrivenData Dashboard"
PORT = 8866
LOOPBACK = ("127.0.0.1", "::1", "localhost")

CDN_LINKS = (
    '<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free'
    '@^5/css/all.min.css" type="text/css" />',
    '<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free'
    '@^5/css/v4-shims.min.css" type="text/css" />',
)

# Plotly's FigureWidget sends its 5 MB JavaScript bundle inside every figure's widget state, so
# six panels cost 30 MB on the WebSocket and six evaluations of the same code. In served
# kernels, a startup file (KERNEL_STARTUP) swaps in this small module, which imports the
# bundle once from this server, where the browser caches it.
BUNDLE_ROUTE = "drivendata/static/widgetbundle.js"
WIDGET_ESM = """\
const base = (document.body.dataset.baseUrl || "/voila/").replace(/voila\\/?$/, "");
const root = new URL(base, window.location.href);
const bundle = await import(new URL("%s?v=%s", root).href);
export default bundle.default;
"""

KERNEL_STARTUP = """\
# Written by drivendata.server: served FigureWidgets load plotly's bundle by URL.
import os

import plotly.basewidget

plotly.basewidget.BaseFigureWidget._esm = os.environ["DRIVENDATA_WIDGET_ESM"]
"""

CAPACITY_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{retry}">
<title>DrivenData Dashboard: at capacity</title>
<style>
  body {{ margin: 0; min-height: 100vh; display: flex; align-items: center;
         justify-content: center; background: #f2f4f8; color: #2b3442;
         font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }}
  main {{ background: #fff; border-radius: 12px; padding: 40px 48px; max-width: 480px;
         box-shadow: 0 4px 18px rgba(15, 23, 42, 0.10); text-align: center; }}
  h1 {{ color: #1a4d99; font-size: 22px; margin: 0 0 12px; }}
  p {{ font-size: 16px; line-height: 1.5; margin: 0 0 8px; }}
  .small {{ color: #6b778a; font-size: 14px; }}
</style>
</head>
<body>
<main>
  <h1>DrivenData Dashboard</h1>
  <p>The dashboard is at capacity: it is serving as many viewers as it can at once.</p>
  <p>Please try again shortly.</p>
  <p class="small">This page tries again by itself every {retry} seconds.</p>
</main>
</body>
</html>
"""


def setting(name: str, default: str) -> str:
    """Return a serving setting from drivendata.settings when declared there, else from the
    environment variable DRIVENDATA_<NAME>, else the default."""
    from drivendata import settings

    try:
        return settings.get(name)
    except KeyError:
        value = os.environ.get(f"DRIVENDATA_{name.upper()}", "").strip()
        return value or default


def _number(name: str, default: float, *, minimum: float) -> float:
    raw = setting(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise click.BadParameter(
            f"DRIVENDATA_{name.upper()}={raw!r} is not a number of {minimum:g} or more; "
            f"set it to one, for example {default:g}."
        )
    return value


class DashboardKernelManager(AsyncMappingKernelManager):
    """Shut down a kernel once no WebSocket has been open to it for ``drop_timeout`` seconds.

    A kernel whose page is still being rendered, or that waits in Voilà's preheated pool, is
    left alone; the clock starts when its page has been sent and no WebSocket is open to it.
    """

    drop_timeout = Float(
        DROP_TIMEOUT,
        config=True,
        help="Seconds a viewer's kernel may have no open WebSocket before it is shut down.",
    )
    check_interval = Float(5.0, config=True, help="Seconds between checks for dropped pages.")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._alone_since: dict[str, float] = {}
        self._rendering: set[str] = set()
        self._cold_starts = 0
        self._checker: PeriodicCallback | None = None

    async def start_kernel(self, **kwargs: Any) -> str:  # type: ignore[override]
        self._start_checker()
        env = kwargs.get("env") or {}
        cold = env.get("VOILA_PREHEAT") != "True"
        if cold:
            self._cold_starts += 1
        try:
            kernel_id: str = await super().start_kernel(**kwargs)
        finally:
            if cold:
                self._cold_starts -= 1
        if cold:
            self._rendering.add(kernel_id)
        return kernel_id

    def _start_checker(self) -> None:
        if self._checker is None:
            self._checker = PeriodicCallback(self.drop_abandoned, self.check_interval * 1000)
            self._checker.start()

    def rendering(self, kernel_id: str) -> None:
        """Note that a page is being sent for this kernel: do not shut it down meanwhile."""
        self._rendering.add(kernel_id)

    def rendered(self, kernel_id: str) -> None:
        """Note that the page for this kernel has been sent (or its request has gone)."""
        self._rendering.discard(kernel_id)
        self._alone_since[kernel_id] = time.monotonic()

    def pooled_kernel_ids(self) -> set[str]:
        """Return the kernels waiting in Voilà's preheated pool (none without preheat)."""
        ids = set()
        for pool in getattr(self, "_pools", {}).values():
            for task in pool:
                if task.done() and not task.cancelled() and task.exception() is None:
                    ids.add(task.result()["kernel_id"])
        return ids

    def pool_starting(self) -> int:
        return sum(
            1 for pool in getattr(self, "_pools", {}).values() for task in pool if not task.done()
        )

    def viewer_count(self) -> int:
        """Return how many kernels serve viewers, or are starting for one."""
        ids = set(self.list_kernel_ids()) - self.pooled_kernel_ids()
        # a pool kernel that is still starting is listed but not yet known to be pooled
        return max(len(ids) - self.pool_starting(), 0) + self._cold_starts

    async def drop_abandoned(self) -> None:
        """Shut down every viewer's kernel that has had no open WebSocket for too long."""
        now = time.monotonic()
        pooled = self.pooled_kernel_ids()
        for kernel_id in list(self._kernels):
            kernel = self._kernels.get(kernel_id)
            starting = getattr(kernel, "execution_state", "starting") == "starting"
            connected = self._kernel_connections.get(kernel_id, 0) > 0
            if kernel_id in pooled or kernel_id in self._rendering or connected or starting:
                self._alone_since.pop(kernel_id, None)
                continue
            since = self._alone_since.setdefault(kernel_id, now)
            if now - since >= self.drop_timeout:
                self.log.info(
                    "Shutting down kernel %s: no page has been connected to it for %.0f s.",
                    kernel_id,
                    now - since,
                )
                self._alone_since.pop(kernel_id, None)
                try:
                    await self.shutdown_kernel(kernel_id)
                except Exception:  # already gone, or dying on its own: nothing left to do
                    self.log.warning("Kernel %s was already shutting down.", kernel_id)
        for kernel_id in list(self._alone_since):
            if kernel_id not in self._kernels:
                del self._alone_since[kernel_id]
        self._rendering &= set(self._kernels)

    async def shutdown_all(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if self._checker is not None:
            self._checker.stop()
        await super().shutdown_all(*args, **kwargs)


_KERNEL_ID = re.compile(r'"kernelId": "([0-9a-f-]{36})"')


class PageHandler(TornadoVoilaHandler):
    """Voilà's page, behind the kernel cap, with an XSRF cookie and no CDN stylesheets."""

    kernel_id: str | None = None

    @tornado.web.authenticated
    async def get(self, path: str | None = None) -> None:
        app: DashboardVoila = self.settings["voila"]
        manager: DashboardKernelManager = self.kernel_manager
        if not path:
            count = manager.viewer_count()
            if count >= app.max_kernels:
                self.log.warning("At capacity (%d kernels): sent the capacity page.", count)
                self.set_status(503)
                self.set_header("Retry-After", "15")
                self.set_header("Cache-Control", "no-store")
                self.set_header("Content-Type", "text/html; charset=UTF-8")
                self.finish(CAPACITY_PAGE.format(retry=15))
                return
            # The page posts to /voila/api/shutdown/<kernel> when closed; without this cookie
            # that call is refused and the kernel waits for the culler.
            self.xsrf_token  # noqa: B018
        try:
            await super().get(path)
        finally:
            self._page_done()

    def write(self, chunk: Any) -> None:
        if isinstance(chunk, str):
            if self.kernel_id is None and (found := _KERNEL_ID.search(chunk)):
                self.kernel_id = found.group(1)
                self.kernel_manager.rendering(self.kernel_id)
            if "cdn.jsdelivr.net" in chunk:
                for link in CDN_LINKS:
                    chunk = chunk.replace(link, "")
        super().write(chunk)

    def on_connection_close(self) -> None:
        self._page_done()
        super().on_connection_close()

    def _page_done(self) -> None:
        if self.kernel_id is not None:
            self.kernel_manager.rendered(self.kernel_id)


class BundleHandler(tornado.web.StaticFileHandler):
    """Serve plotly's widget bundle, cached by the browser for a year (the URL is versioned)."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "public, max-age=31536000, immutable")
        self.set_header("Content-Type", "text/javascript; charset=UTF-8")


def _bundle_path() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "widgetbundle.js"


def widget_esm() -> str:
    """Return the small module that served FigureWidgets load instead of plotly's bundle."""
    import plotly

    return WIDGET_ESM % (BUNDLE_ROUTE, plotly.__version__)


class HealthHandler(tornado.web.RequestHandler):
    """Answer load balancers with a small JSON body; never starts a kernel."""

    def get(self) -> None:
        app: DashboardVoila = self.settings["voila"]
        manager: DashboardKernelManager = app.kernel_manager
        viewers = manager.viewer_count()
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(
            json.dumps(
                {
                    "status": "ok",
                    "viewers": viewers,
                    "max_kernels": app.max_kernels,
                    "at_capacity": viewers >= app.max_kernels,
                    "preheated": len(manager.pooled_kernel_ids()),
                }
            )
        )


class DashboardVoila(Voila):
    """Voilà with the page handler, the health check and the kernel cap."""

    max_kernels = Integer(MAX_KERNELS, config=True, help="Most kernels serving viewers at once.")

    def init_handlers(self) -> list[Any]:
        handlers = []
        for spec in super().init_handlers():
            if len(spec) > 1 and spec[1] is TornadoVoilaHandler:
                spec = (spec[0], PageHandler, *spec[2:])
            handlers.append(spec)
        return [
            (r"/healthz", HealthHandler),
            (
                r"/drivendata/static/(widgetbundle\.js)",
                BundleHandler,
                {"path": str(_bundle_path().parent)},
            ),
            *handlers,
        ]


def find_notebook() -> Path:
    """Return the dashboard notebook: the package's copy, else the repository's."""
    here = Path(__file__).resolve().parent
    for candidate in (
        here / "notebook" / "dashboard.ipynb",
        here.parent / "notebooks" / "dashboard.ipynb",
    ):
        if candidate.is_file():
            return candidate
    raise click.ClickException(
        "The dashboard notebook is missing: neither drivendata/notebook/dashboard.ipynb nor "
        "notebooks/dashboard.ipynb exists; reinstall the package, or pass --notebook."
    )


@contextmanager
def served_folder(notebook: Path) -> Iterator[Path]:
    """Yield the path of a copy of the notebook, alone in a fresh temporary folder.

    Beside that folder (never in it) goes the IPython profile the kernels start with.
    """
    top = Path(tempfile.mkdtemp(prefix="drivendata-serve-"))
    try:
        folder = top / "page"
        folder.mkdir()
        target = folder / "dashboard.ipynb"
        page = json.loads(notebook.read_text(encoding="utf-8"))
        # The browser tab's title; Voilà would show the file name.
        page.setdefault("metadata", {}).setdefault("title", TITLE)
        target.write_text(json.dumps(page), encoding="utf-8")
        startup = top / "ipython" / "profile_default" / "startup"
        startup.mkdir(parents=True)
        (startup / "00-drivendata.py").write_text(KERNEL_STARTUP)
        yield target
    finally:
        shutil.rmtree(top, ignore_errors=True)


def access_token(host: str) -> tuple[str | None, bool]:
    """Return the token viewers need (None: the page is open) and whether it was generated.

    The token comes from DRIVENDATA_TOKEN; without one, loopback serving is open and any other
    address gets a random token, unless DRIVENDATA_OPEN_ACCESS=1 opens it on purpose.
    """
    token = setting("token", "")
    open_access = setting("open_access", "0").lower() in ("1", "true", "yes", "on")
    if open_access and token:
        raise click.ClickException(
            "DRIVENDATA_OPEN_ACCESS=1 serves the page without a token, yet DRIVENDATA_TOKEN is "
            "set too; unset one of them."
        )
    if token or open_access:
        return token or None, False
    if host in LOOPBACK:
        return None, False
    return secrets.token_urlsafe(24), True


def voila_config(
    host: str,
    port: int,
    *,
    max_kernels: int,
    preheat: int,
    drop_timeout: float,
    token: str | None = None,
) -> Config:
    """Return the traitlets configuration of the Voilà app.

    :param token: the token a viewer needs; None for an open page.
    """
    c = Config()
    c.Voila.ip = host
    c.Voila.port = port
    c.Voila.port_retries = 0
    c.Voila.open_browser = False
    if token:
        c.Voila.token = token
        # A login cookie then stays valid across restarts and tasks that share the token.
        c.Voila.cookie_secret = hashlib.sha256(b"drivendata-cookie:" + token.encode()).digest()
        # The login page would otherwise let any viewer who has the token set a password.
        c.PasswordIdentityProvider.allow_password_change = False
    c.DashboardVoila.max_kernels = max_kernels
    vc = c.VoilaConfiguration
    vc.strip_sources = True
    vc.show_tracebacks = False
    vc.template = "lab"
    vc.theme = "light"
    # No ?template= or ?theme= from visitors: the preheated page only matches the defaults.
    vc.allow_template_override = "NO"
    vc.allow_theme_override = "NO"
    vc.multi_kernel_manager_class = DashboardKernelManager
    vc.preheat_kernel = preheat > 0
    vc.default_pool_size = max(preheat, 0)
    c.DashboardKernelManager.drop_timeout = drop_timeout
    c.DashboardKernelManager.check_interval = min(2.0, max(drop_timeout / 4, 0.5))
    return c


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise click.ClickException(
                f"Cannot listen on {host}:{port} ({exc.strerror}); stop what uses it or pick "
                "another port with --port."
            ) from None


def page_url(host: str, port: int) -> str:
    shown = "localhost" if host in LOOPBACK else host
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()
    return f"http://{shown}:{port}/"


def serve(
    host: str = HOST,
    port: int = PORT,
    *,
    notebook: Path | str | None = None,
    open_browser: bool = False,
    max_kernels: int | None = None,
    preheat: int | None = None,
    drop_timeout: float | None = None,
) -> None:
    """Serve the dashboard page with Voilà until interrupted.

    :param notebook: the notebook to serve; defaults to DRIVENDATA_NOTEBOOK, else the
        dashboard's.
    :param max_kernels: most viewers' kernels at once [env DRIVENDATA_MAX_KERNELS].
    :param preheat: kernels kept running the notebook before anyone asks, 0 for none
        [env DRIVENDATA_PREHEAT].
    :param drop_timeout: seconds a kernel may have no open page before it is shut down
        [env DRIVENDATA_DROP_TIMEOUT].
    """
    if max_kernels is None:
        max_kernels = int(_number("max_kernels", MAX_KERNELS, minimum=1))
    if preheat is None:
        preheat = int(_number("preheat", PREHEAT, minimum=0))
    if drop_timeout is None:
        drop_timeout = _number("drop_timeout", DROP_TIMEOUT, minimum=1)
    notebook = notebook or setting("notebook", "")
    source = Path(notebook) if notebook else find_notebook()
    if not source.is_file():
        raise click.ClickException(
            f"The notebook {source} does not exist; pass an existing one (or set "
            "DRIVENDATA_NOTEBOOK to one)."
        )
    token, generated = access_token(host)
    _check_port(host, port)
    config = voila_config(
        host,
        port,
        max_kernels=max_kernels,
        preheat=preheat,
        drop_timeout=drop_timeout,
        token=token,
    )
    if generated:
        click.echo(
            f"Viewers need a token; this one was made for this run: {page_url(host, port)}"
            f"?token={token} (set DRIVENDATA_TOKEN to choose one).",
            err=True,
        )
    elif token:
        click.echo(
            "Viewers need the token in DRIVENDATA_TOKEN: open the page with ?token=…", err=True
        )
    elif host not in LOOPBACK:
        click.echo("DRIVENDATA_OPEN_ACCESS=1: the page is open to anyone who reaches it.", err=True)
    with served_folder(source) as path:
        # Kernels inherit the server's environment; see WIDGET_ESM and KERNEL_STARTUP.
        os.environ["DRIVENDATA_WIDGET_ESM"] = widget_esm()
        os.environ["IPYTHONDIR"] = str(path.parent.parent / "ipython")
        app = DashboardVoila(config=config)
        app.initialize([str(path)])
        if open_browser:
            url = page_url(host, port)
            threading.Timer(1.0, webbrowser.open, (url,)).start()
        # Voilà's start() runs the event loop until Ctrl-C or SIGTERM, then stops every kernel.
        asyncio.set_event_loop(asyncio.new_event_loop())
        app.start()


def host_option(func: Any) -> Any:
    func = click.option(
        "--port", type=int, default=PORT, show_default=True, help="Port to listen on."
    )(func)
    func = click.option(
        "--host",
        default=HOST,
        show_default=True,
        help="Address to listen on; 0.0.0.0 for every interface.",
    )(func)
    return func


@click.command(name="serve")
@host_option
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
@click.option(
    "--notebook",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Serve this notebook instead of the dashboard's.",
)
def serve_command(host: str, port: int, open_browser: bool, notebook: Path | None) -> None:
    """Serve the live dashboard page with Voilà.

    Each visitor gets a kernel of their own, up to DRIVENDATA_MAX_KERNELS; a closed page's
    kernel stops within DRIVENDATA_DROP_TIMEOUT seconds. /healthz answers load balancers.

    Example: drivendata serve --host 0.0.0.0 --port 8866
    """
    click.echo(f"Serving the dashboard at {page_url(host, port)} (Ctrl-C to stop)", err=True)
    serve(host, port, notebook=notebook, open_browser=open_browser)


def _table_is_empty(source: Any) -> bool:
    import sqlalchemy as sa

    from drivendata.database import reader, table_sql

    engine = reader(source)
    try:
        with engine.connect() as conn:
            return (
                conn.execute(sa.text(f"SELECT 1 FROM {table_sql(source)} LIMIT 1")).first() is None
            )
    finally:
        engine.dispose()


@click.command(name="demo")
@host_option
@click.option(
    "--rows",
    type=click.IntRange(min=0),
    default=200_000,
    show_default=True,
    help="Rows of history to backfill when the table is empty.",
)
@click.option("--days", type=float, default=7.0, show_default=True, help="Days the history spans.")
@click.option("--rate", type=float, help="Rows per second to stream [env DRIVENDATA_STREAM_RATE].")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the generator.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
def demo_command(
    host: str,
    port: int,
    rows: int,
    days: float,
    rate: float | None,
    seed: int,
    open_browser: bool,
) -> None:
    """Run everything on this machine: the embedded store, history, the stream and the page.

    Creates the store if needed, backfills history when the table is empty, streams new rows
    in the background and serves the page; Ctrl-C stops it all.

    Example: drivendata demo --rows 1000000 --port 8866
    """
    run_demo(host, port, rows=rows, days=days, rate=rate, seed=seed, open_browser=open_browser)


def run_demo(
    host: str,
    port: int,
    *,
    rows: int = 200_000,
    days: float = 7.0,
    rate: float | None = None,
    seed: int = 42,
    open_browser: bool = False,
) -> None:
    """Create the store, backfill it when empty, stream into it and serve the page."""
    from drivendata import settings, stream
    from drivendata.database import SourceError, ensure_store, source_from

    try:
        source = source_from()
        ensure_store(source)
        empty = _table_is_empty(source)
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    _check_port(host, port)
    click.echo(f"Data: {source.label} at {source.display}", err=True)
    if empty and rows:
        click.echo(f"Backfilling {rows:,} rows over {days:g} days…", err=True)
        began = time.monotonic()
        stream.seed(source, rows=rows, days=days, seed=seed)
        click.echo(f"Backfilled in {time.monotonic() - began:.0f} s.", err=True)
    rate = rate if rate is not None else settings.get_float("stream_rate")
    streamer = stream.Stream(
        source, rate, seed=seed + 1, say=lambda text: click.echo(text, err=True)
    )
    worker = threading.Thread(target=streamer.run, name="drivendata-stream", daemon=True)
    worker.start()
    click.echo(f"Streaming {rate:g} rows per second.", err=True)
    click.echo(f"The dashboard is at {page_url(host, port)} (Ctrl-C to stop)", err=True)
    try:
        serve(host, port, open_browser=open_browser)
    finally:
        streamer.stop()
        worker.join(timeout=30)
        click.echo("Stopped the stream and the server.", err=True)


@click.command(name="container")
@click.option(
    "--host",
    default="0.0.0.0",
    show_default=True,
    help="Address to listen on; every interface, as a container needs.",
)
@click.option(
    "--port", type=int, envvar="PORT", default=PORT, show_default=True, help="Port [env PORT]."
)
def container_command(host: str, port: int) -> None:
    """Run as the container image does: the page on DRIVENDATA_DATABASE_URL when it is set,
    else the embedded demo (store, history, stream and page).

    Off loopback a viewer needs DRIVENDATA_TOKEN (or the random token printed at start).

    Example: PORT=8080 DRIVENDATA_TOKEN=s3cret python -m drivendata.server container
    """
    if os.environ.get("DRIVENDATA_DATABASE_URL", "").strip():
        click.echo(f"Serving the dashboard at {page_url(host, port)}", err=True)
        serve(host, port)
    else:
        click.echo("No DRIVENDATA_DATABASE_URL: running the embedded demo.", err=True)
        run_demo(host, port)


if __name__ == "__main__":
    group = click.Group(commands=[serve_command, demo_command, container_command])
    sys.exit(group())
