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
- a small script in the page watches its kernel: when the kernel is gone (killed, or shut down
  after the page lost its connection) or the server cannot be reached, the page says so in one
  sentence and offers a reload, instead of showing panels that silently stopped updating; a
  kernel that dies is not restarted (a fresh kernel would not run the notebook, so the page
  would stay frozen) but removed, which also frees its place under the cap;
- requests whose path climbs out of a folder (``..`` in any encoding), or holds a backslash
  or a NUL byte, are refused before any handler sees them, and malformed template paths and
  ``/logout`` answer plainly instead of failing with a server error;
- access: off loopback, a viewer needs a shared token (jupyter_server's identity provider, as
  Voilà sets it up: ``/?token=...`` once, or the login page), unless the operator turns that
  off on purpose with DRIVENDATA_OPEN_ACCESS=1.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import gc
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
import urllib.parse
import uuid
import webbrowser
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import tornado.httputil
import tornado.routing
import tornado.web
from jupyter_events import EventLogger
from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import FileFindHandler, JupyterHandler
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado.ioloop import PeriodicCallback
from traitlets import Float, Instance, Integer, default
from traitlets.config import Config
from voila.app import Voila
from voila.request_info_handler import RequestInfoSocketHandler
from voila.static_file_handler import TemplateStaticFileHandler
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

# Put before the page's </body>: ask every few seconds whether the page's kernel still exists
# (a cheap call that starts nothing) and, once it does not or the server stops answering, say
# so above the panels with a reload button. Text is set as text, never as HTML.
KERNEL_GONE = (
    "The dashboard stopped on the server, so these panels no longer update; reload the page "
    "to start it again."
)
SERVER_GONE = (
    "The dashboard server cannot be reached, so these panels no longer update; reload the page "
    "once it is back."
)
KERNEL_WATCH = """<style>
#dd-gone { position: sticky; top: 0; z-index: 10000; display: flex;
  align-items: center; justify-content: center; gap: 16px; padding: 14px 20px;
  background: #fdecec; color: #8a1c1c; border-bottom: 1px solid #f5c6c6;
  font: 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  box-shadow: 0 2px 10px rgba(15, 23, 42, 0.15); }
#dd-gone button { font: inherit; font-weight: 600; padding: 6px 16px; border-radius: 8px;
  border: 1px solid #8a1c1c; background: #fff; color: #8a1c1c; cursor: pointer; }
body.dd-gone .dd-dashboard { opacity: 0.45; pointer-events: none; }
</style>
<script>
(() => {
  const config = document.getElementById("jupyter-config-data");
  const kernel = config && JSON.parse(config.textContent).kernelId;
  if (!kernel) return;
  const base = JSON.parse(config.textContent).baseUrl || "/";
  const url = new URL(base + "api/kernels/" + kernel, window.location.href);
  const say = (sentence) => {
    const box = document.createElement("div");
    box.id = "dd-gone";
    box.setAttribute("role", "alert");
    const text = document.createElement("span");
    text.textContent = sentence;
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Reload the page";
    button.addEventListener("click", () => window.location.reload());
    box.append(text, button);
    document.body.prepend(box);
    document.body.classList.add("dd-gone");
  };
  let misses = 0;
  const check = async () => {
    let status = 0;
    try {
      const reply = await fetch(url, {cache: "no-store", credentials: "same-origin"});
      status = reply.status;
    } catch (err) {
      status = 0;
    }
    if (status === 404) return say(GONE_TEXT);
    misses = status === 0 || status >= 500 ? misses + 1 : 0;
    if (misses >= 2) return say(AWAY_TEXT);
    window.setTimeout(check, EVERY_MS);
  };
  window.setTimeout(check, EVERY_MS);
})();
</script>
""".replace("GONE_TEXT", json.dumps(KERNEL_GONE))
KERNEL_WATCH = KERNEL_WATCH.replace("AWAY_TEXT", json.dumps(SERVER_GONE)).replace(
    "EVERY_MS", "3000"
)

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


@dataclass(eq=False)
class Admission:
    """A page request let past the cap; ``kernel_id`` once it has its kernel."""

    kernel_id: str | None = None


_ADMISSION: contextvars.ContextVar[Admission | None] = contextvars.ContextVar(
    "drivendata_admission", default=None
)


def _load_malloc_trim() -> Any:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim()
# Seconds after a kernel goes before the server hands freed memory back to the system, so that
# kernels closed together (a page and the pool's refill, several tabs) share one trim.
TRIM_DELAY = 2.0


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
        # Pages let past the cap that have no kernel yet; kernels started for Voilà's pool and
        # not yet handed to a page, with the pool's task of each; viewers' kernels still
        # starting (not yet listed).
        self._admissions: set[Admission] = set()
        self._pool_tasks: dict[str, asyncio.Task[Any] | None] = {}
        self._starting: set[str] = set()
        self._checker: PeriodicCallback | None = None
        self._trim_pending = False
        # With preheat, Voilà makes this class the base of its pooling manager, whose
        # get_rendered_notebook hands a pool kernel to a page: from that moment it is the
        # page's, even if the page's request ends before the page names it.
        take = getattr(self, "get_rendered_notebook", None)
        if take is not None:

            async def get_rendered_notebook(*args: Any, **kwargs: Any) -> Any:
                taken = await take(*args, **kwargs)
                self.settle(_ADMISSION.get(), taken[2])  # (render task, cells, kernel id)
                return taken

            self.get_rendered_notebook = get_rendered_notebook

    async def start_kernel(self, **kwargs: Any) -> str:  # type: ignore[override]
        self._start_checker()
        env = kwargs.get("env") or {}
        kernel_id = kwargs.setdefault("kernel_id", str(uuid.uuid4()))
        pooled = env.get("VOILA_PREHEAT") == "True"
        if pooled:
            # Voilà starts each pool kernel in the task its pool holds
            self._pool_tasks[kernel_id] = asyncio.current_task()
        else:
            # a page's own kernel: from now on it counts as a kernel, not as an admission
            self._starting.add(kernel_id)
            self.settle(_ADMISSION.get(), kernel_id)
        try:
            started: str = await super().start_kernel(**kwargs)
        except BaseException:
            self._pool_tasks.pop(kernel_id, None)
            raise
        finally:
            self._starting.discard(kernel_id)
        if not pooled:
            self._rendering.add(started)
        return started

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
        """Return the kernels started for Voilà's preheated pool (none without preheat) and not
        yet handed to a page, whether or not they have started and run the notebook yet."""
        waiting = {id(task) for task in self._pool_entries()}
        return {k for k, task in self._pool_tasks.items() if id(task) in waiting}

    def preheated_kernel_ids(self) -> set[str]:
        """Return the pooled kernels that have run the notebook: a page given one is sent at
        once. A pooled kernel joins the pool as soon as its process is launched, seconds
        before it has started and run the notebook; a page given it meanwhile waits for that.
        """
        return {
            content["kernel_id"]
            for content in self._pooled()
            if _succeeded(content.get("task"))  # Voilà's task rendering the notebook
        }

    def _pool_entries(self) -> Iterator[Any]:
        """Voilà's pool: a task for each kernel it holds, started or not."""
        for pool in getattr(self, "_pools", {}).values():
            yield from pool

    def _pooled(self) -> Iterator[dict[str, Any]]:
        for task in self._pool_entries():
            if _succeeded(task):
                yield task.result()

    def admit(self) -> Admission:
        """Count a page let past the cap until it has a kernel (or its request ends).

        Called in the same step of the event loop as the cap check, so that pages asked for
        at the same moment cannot all pass it before any of them has a kernel. The admission
        follows the request's task (a context variable) into :meth:`start_kernel`.
        """
        admission = Admission()
        self._admissions.add(admission)
        _ADMISSION.set(admission)
        return admission

    def settle(self, admission: Admission | None, kernel_id: str | None) -> None:
        """End an admission: its page has this kernel now, or none (``None``) at all.

        A kernel from the pool counts as a viewer's from here on, even when the request
        has gone meanwhile: Voilà goes on rendering its page.
        """
        if kernel_id is not None:
            self._pool_tasks.pop(kernel_id, None)
        if admission is None or admission not in self._admissions:
            return
        self._admissions.discard(admission)
        if kernel_id is not None:
            admission.kernel_id = kernel_id

    def viewer_count(self) -> int:
        """Return how many kernels serve viewers, or are being readied for one."""
        kernels = set(self._kernels) | self._starting
        return len(self._admissions) + len(kernels - self._pool_tasks.keys())

    def remove_kernel(self, kernel_id: str) -> Any:
        self._pool_tasks.pop(kernel_id, None)
        # Voilà keeps each preheated page's request details by kernel id and never drops them.
        RequestInfoSocketHandler._cache.pop(kernel_id, None)
        self._trim_soon()
        return super().remove_kernel(kernel_id)

    def _trim_soon(self) -> None:
        """Hand the memory a closed page used back to the system shortly after its kernel goes.

        glibc keeps the heap a page's messages and handlers freed: without this the server's
        resident memory climbed about 0.25 MB for every page opened and closed (+13 % in an
        hour's soak), with no Python object left behind to account for it."""
        if _MALLOC_TRIM is None or self._trim_pending:
            return
        self._trim_pending = True

        def trim() -> None:
            self._trim_pending = False
            gc.collect()
            _MALLOC_TRIM(0)

        asyncio.get_running_loop().call_later(TRIM_DELAY, trim)

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


def _succeeded(task: Any) -> bool:
    """Return whether an asyncio task (or future) has ended with a result."""
    return (
        isinstance(task, asyncio.Future)
        and task.done()
        and not task.cancelled()
        and task.exception() is None
    )


_KERNEL_ID = re.compile(r'"kernelId": "([0-9a-f-]{36})"')


class PageHandler(TornadoVoilaHandler):
    """Voilà's page, behind the kernel cap, with an XSRF cookie and no CDN stylesheets."""

    kernel_id: str | None = None
    admission: Admission | None = None

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
            # no await since the check: no other page can slip in between
            self.admission = manager.admit()
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
                self.kernel_manager.settle(self.admission, self.kernel_id)
            if "cdn.jsdelivr.net" in chunk:
                for link in CDN_LINKS:
                    chunk = chunk.replace(link, "")
            if self.kernel_id is not None and "</body>" in chunk:
                chunk = chunk.replace("</body>", KERNEL_WATCH + "</body>", 1)
        super().write(chunk)

    def on_connection_close(self) -> None:
        # The request's task goes on without its client: it still takes a kernel and renders
        # the page, so its admission holds until ``get`` ends. Only a kernel it already has
        # starts its clock now.
        if self.kernel_id is not None:
            self.kernel_manager.rendered(self.kernel_id)
        super().on_connection_close()

    def _page_done(self) -> None:
        self.kernel_manager.settle(self.admission, None)
        # a kernel started for this page that the page never named is left to the culler too
        kernel_id = self.kernel_id or (self.admission.kernel_id if self.admission else None)
        if kernel_id is not None:
            self.kernel_manager.rendered(kernel_id)


class TemplateFileHandler(TemplateStaticFileHandler):
    """Voilà's template files, answering 404 to a path that names no file (Voilà fails)."""

    def parse_url_path(self, url_path: str) -> str:
        parts = url_path.split("/", 2)
        if len(parts) < 3 or parts[1] != "static" or not parts[2].strip("/"):
            raise tornado.web.HTTPError(404)
        return str(super().parse_url_path(url_path))


class PlainErrors(tornado.web.RequestHandler):
    """Answer errors with tornado's one-line page."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        tornado.web.RequestHandler.write_error(self, status_code)


class LogoutHandler(JupyterHandler):
    """Forget the login cookie and say so (jupyter_server's page fails under Voilà)."""

    @allow_unauthenticated
    def get(self) -> None:
        self.identity_provider.clear_login_cookie(self)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{TITLE}: signed out</title></head><body>"
            '<p>You are signed out. <a href="./">Open the dashboard again</a>.</p></body></html>'
        )


def unsafe_path(path: str) -> bool:
    """Return whether a request path climbs out of its folder or holds a backslash or NUL.

    The path is decoded up to three times, so ``%2e%2e``, ``%252e%252e`` and the like count.
    """
    for _ in range(4):
        if "\\" in path or "\x00" in path:
            return True
        if ".." in path.split("/"):
            return True
        decoded = urllib.parse.unquote(path, errors="strict")
        if decoded == path:
            return False
        path = decoded
    return True  # still encoded after three decodings: nothing here needs that


class UnsafePath(tornado.routing.Matcher):
    """Match the requests :func:`unsafe_path` refuses."""

    def match(self, request: tornado.httputil.HTTPServerRequest) -> dict[str, Any] | None:
        try:
            return {} if unsafe_path(request.path) else None
        except UnicodeDecodeError:
            return {}


class RefusedHandler(tornado.web.RequestHandler):
    """Answer 404 to any method: the path is refused before a handler sees it."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)


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
        pooled = manager.pooled_kernel_ids()
        preheated = manager.preheated_kernel_ids()
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(
            json.dumps(
                {
                    "status": "ok",
                    "viewers": viewers,
                    "max_kernels": app.max_kernels,
                    "at_capacity": viewers >= app.max_kernels,
                    # pooled kernels that have run the notebook, and those still starting
                    # or running it (a page given one of those waits until it is done)
                    "preheated": len(preheated),
                    "warming": len(pooled - preheated),
                }
            )
        )


class DashboardVoila(Voila):
    """Voilà with the page handler, the health check and the kernel cap."""

    max_kernels = Integer(MAX_KERNELS, config=True, help="Most kernels serving viewers at once.")
    # jupyter_server's kernel managers use their grandparent's event logger, or else each makes
    # one of its own whose logger ("jupyter_events.logger.<id>") stays in logging's registry
    # for good: one more for every page.
    event_logger = Instance(EventLogger)

    @default("event_logger")
    def _default_event_logger(self) -> EventLogger:
        return EventLogger(parent=self)

    def init_handlers(self) -> list[Any]:
        handlers = []
        replaced = {
            TornadoVoilaHandler: PageHandler,
            TemplateStaticFileHandler: TemplateFileHandler,
        }
        for spec in super().init_handlers():
            if len(spec) > 1 and spec[1] in replaced:
                spec = (spec[0], replaced[spec[1]], *spec[2:])
            elif len(spec) > 1 and str(spec[0]).endswith("/logout"):
                spec = (spec[0], LogoutHandler, *spec[2:])
            elif len(spec) > 1 and issubclass(spec[1], FileFindHandler):
                # labextensions and themes: their error page would use jupyter_server's
                # template, which fails under Voilà
                plain = type(f"Plain{spec[1].__name__}", (PlainErrors, spec[1]), {})
                spec = (spec[0], plain, *spec[2:])
            handlers.append(spec)
        return [
            (UnsafePath(), RefusedHandler),
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
    # A restarted kernel would not run the notebook: the page would stay frozen on a blank
    # kernel. With no restart, a dead kernel is removed and the page's watch says so.
    c.KernelRestarter.restart_limit = 0
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
