"""The dashboard widget: controls, a status line and six live plotly FigureWidgets.

The same object displays in a JupyterLab cell and in the Voilà page. A refresh loop runs as an
asyncio task on the kernel's event loop; database work runs in one worker thread, so that the
controls stay responsive and at most one refresh is ever in flight. Each tick asks the source
for its cheap data version and recomputes the panels only when it or a control changed.
Figures are computed as plain data by :mod:`drivendata.figures` and applied in one place.
With a :class:`~drivendata.cache.ResultCache` (the settings turn one on), all viewers of a server
share each recomputation: one kernel runs the panels, the others read its results.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import html
import json
import logging
import sys
import threading
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go
import sqlalchemy as sa
from ipywidgets.widgets.widget import _put_buffers

from drivendata import figures as figs
from drivendata import settings
from drivendata.cache import ResultCache
from drivendata.database import Source, SourceError, explain, reader, source_from
from drivendata.panels import (
    FIELDS,
    WINDOW_LABELS,
    WINDOWS,
    Meter,
    Query,
    QueryError,
    compute_all,
    data_version,
)

TITLE = "DrivenData Dashboard"
INTERVALS: dict[str, float | None] = {"off": None, "2s": 2.0, "5s": 5.0, "15s": 15.0, "60s": 60.0}
INTERVAL_LABELS = {"off": "Off", "2s": "2 s", "5s": "5 s", "15s": "15 s", "60s": "60 s"}
# No row newer than this while refreshing is on: the status says the data is stale.
STALE_AFTER = timedelta(minutes=10)
# A moving window loses old rows without any new one arriving: recompute it this often anyway.
WINDOW_RECHECK = 60.0
# Seconds a refresh may take, with automatic refresh off, before the status says so.
SLOW_AFTER = 5.0
# Seconds between retries after consecutive failures; the last one repeats.
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)

Key = tuple[str, str, str]  # field, versus, window

# What a page may send: a control, an index into its options; a figure, what plotly.js reports
# (zoom, legend clicks, the edit it drew), in small messages. No other widget takes input.
FIGURE_INPUT = frozenset(
    {
        "_js2py_traceDeltas",
        "_js2py_layoutDelta",
        "_js2py_restyle",
        "_js2py_relayout",
        "_js2py_update",
        "_js2py_pointsCallback",
    }
)
MAX_FIGURE_INPUT = 64_000  # bytes; plotly.js reports a zoom or a drawn edit in far fewer

# In a kernel, sys.stderr is the page's output: notes for the operator go to the process's own
# stderr, which the server's log holds. So do the kernel's notes on messages to no comm or to
# no comm target, which would otherwise echo a tampering client's words to its page.
log = logging.getLogger(__name__)
for _name in (__name__, "Comm", "ipykernel.comm"):
    _logger = logging.getLogger(_name)
    if not _logger.handlers:
        _to_server = logging.StreamHandler(sys.__stderr__)
        _to_server.setFormatter(logging.Formatter(f"[{_name}] %(levelname)s | %(message)s"))
        _logger.addHandler(_to_server)
        _logger.propagate = False


@dataclass
class Snapshot:
    """The last good refresh: what was asked, what came back, and when."""

    key: Key
    query: Query
    version: str
    results: dict[str, Any]
    at: datetime
    took: float
    computed: float = field(default_factory=time.monotonic)
    shared: bool = False  # read from the shared cache: another viewer computed it
    scanned: int = 0  # bytes the source scanned for this refresh (Athena reports them)


@dataclass
class Outcome:
    key: Key
    version: str
    snapshot: Snapshot | None  # None when nothing changed and nothing was recomputed


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Dashboard(widgets.VBox):
    """The live dashboard: title, controls, status line and six panels in a grid.

    :param source: the database and table to show; ``None`` with ``problem`` set shows only
        the problem (a bad URL in the settings, for example).
    :param query: the first field, versus field and window; the settings' when not given.
    :param interval: refresh interval, one of ``off``, ``2s``, ``5s``, ``15s``, ``60s``.
    :param autostart: start the refresh loop on the running event loop, if there is one.
    :param problem: a sentence to show instead of data.
    :param cache: the result cache shared with other viewers; ``None`` (the default) queries
        the source directly. :meth:`from_settings` passes the one the settings describe.
    """

    def __init__(
        self,
        source: Source | None,
        *,
        query: Query | None = None,
        interval: str = "5s",
        autostart: bool = True,
        problem: str | None = None,
        cache: ResultCache | None = None,
    ) -> None:
        if interval not in INTERVALS:
            raise ValueError(
                f"{interval!r} is not a refresh interval; pick one of {', '.join(INTERVALS)}."
            )
        self.source = source
        self.problem = problem
        self.cache = cache
        q = query or Query()
        self.buckets, self.bins, self.people = q.buckets, q.bins, q.people
        self.computes = 0  # panel computations run, for tests and benchmarks
        self.snapshot: Snapshot | None = None
        self.error: str | None = None
        self.refused: str | None = None
        self.failures = 0
        self.retry_in: float | None = None
        self.paused: str | None = None  # why automatic refresh stopped (Athena's scan limit)
        self.waiting: float | None = None  # seconds the refresh in flight has taken, once slow
        self.costs: Costs | None = None
        if source is not None and source.kind == "athena":
            try:
                self.costs = Costs.from_settings()
            except settings.SettingError as exc:  # said in the status; the defaults apply
                self.costs, self.refused = Costs(5.0, 60.0, 10**10), str(exc)
        self._engine: sa.Engine | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drivendata")
        self._lock = threading.Lock()
        self._dirty = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._shown_key: Key | None = None

        self.field = _dropdown("Field", [(f.label, n) for n, f in FIELDS.items()], q.field)
        self.versus = _dropdown("Versus", [(f.label, n) for n, f in FIELDS.items()], q.versus)
        self.window = _dropdown("Window", [(WINDOW_LABELS[w], w) for w in WINDOWS], q.window)
        self.interval = _dropdown("Refresh", [(INTERVAL_LABELS[i], i) for i in INTERVALS], interval)
        for control in self.controls:
            control.observe(self._on_control, names="value")

        self.figures: dict[str, go.FigureWidget] = {}
        self.cards: dict[str, widgets.Box] = {}
        # The edit a view of each figure last reported having drawn, and when we last edited.
        self._drawn: dict[str, int | None] = dict.fromkeys(figs.NAMES)
        self._edited: dict[str, float] = dict.fromkeys(figs.NAMES, 0.0)
        self.repaired = 0  # figures redrawn because a view missed an update
        for name in figs.NAMES:
            spec = figs.placeholder(name, q)
            card = widgets.Box([], layout=widgets.Layout(min_width="0"))
            card.add_class("dd-card")
            card.add_class(f"dd-{name.replace('_', '-')}")
            self.cards[name] = card
            self._show(name, live_figure(data=spec["data"], layout={"template": figs.template()}))
            apply_figure(self.figures[name], spec)
        cards = list(self.cards.values())
        self.grid = widgets.GridBox(cards)
        self.grid.add_class("dd-grid")

        self.header = widgets.HTML(self._header_html())
        self.header.add_class("dd-header")
        bar = widgets.HBox(list(self.controls))
        bar.add_class("dd-controls")
        self.status = widgets.HTML(self._status_html())
        self.status.add_class("dd-status-box")
        style = widgets.HTML(f"<style>{CSS}</style>")
        style.add_class("dd-style")
        super().__init__([style, self.header, bar, self.status, self.grid])
        self.add_class("dd-dashboard")
        self._guard(self)
        if autostart:
            self.start()

    # ------------------------------------------------------------ construction

    @classmethod
    def from_settings(cls, **kwargs: Any) -> Dashboard:
        """Build the dashboard from the DRIVENDATA_* settings; a bad setting becomes the status.

        :param kwargs: passed on to the constructor (``interval``, ``autostart``, ``cache``).
        """
        problem = None
        if "cache" not in kwargs:
            try:
                kwargs["cache"] = ResultCache.from_settings()
            except settings.SettingError as exc:
                kwargs["cache"], problem = None, str(exc)
        try:
            query = Query.from_settings()
        except (QueryError, settings.SettingError) as exc:
            query, problem = Query(), str(exc)
        try:
            source: Source | None = source_from()
        except SourceError as exc:
            source, problem = None, str(exc)
        return cls(source, query=query, problem=problem, **kwargs)

    @property
    def controls(self) -> tuple[widgets.Dropdown, ...]:
        return (self.field, self.versus, self.window, self.interval)

    @property
    def query(self) -> Query:
        """The query the controls ask for now."""
        return Query(
            field=self.field.value,
            versus=self.versus.value,
            window=self.window.value,
            buckets=self.buckets,
            bins=self.bins,
            people=self.people,
        )

    def _key(self) -> Key:
        return (self.field.value, self.versus.value, self.window.value)

    # ------------------------------------------------------------ controls

    def _on_control(self, change: dict[str, Any]) -> None:
        """Take a new control value, refusing one outside its list without running a query."""
        owner, new = change["owner"], change["new"]
        choices: dict[str, Collection[str]] = {
            "field": FIELDS,
            "versus": FIELDS,
            "window": WINDOWS,
            "interval": INTERVALS,
        }
        allowed = choices[self._control_name(owner)]
        if new not in allowed:
            self.refused = (
                f"{new!r} is not an allowed {self._control_name(owner)}; "
                f"pick one of {', '.join(allowed)}."
            )
            with owner.hold_trait_notifications():
                owner.value = change["old"]
            self._render_status()
            return
        self.refused = None
        if owner is not self.interval:
            self._dirty = True
        self._wake.set()
        self._render_status()

    # ------------------------------------------------------------ messages from the page

    def _guard(self, widget: widgets.Widget) -> None:
        """Send what the page says to this widget, its layout, its style and its children
        through :meth:`_from_page`."""
        for part in (widget, getattr(widget, "layout", None), getattr(widget, "style", None)):
            comm = getattr(part, "comm", None)
            if isinstance(part, widgets.Widget) and comm is not None:
                comm.on_msg(functools.partial(self._from_page, part))
        for child in getattr(widget, "children", ()):
            self._guard(child)

    def _from_page(self, widget: widgets.Widget, msg: Any) -> None:
        """Take a message the page sent to a widget, refusing what no page has reason to send.

        This replaces ipywidgets' handler, which sets any synced trait the page names (a
        control's list of options among them) and answers a value that does not fit with a
        traceback sent to the page.
        """
        content = msg.get("content") if isinstance(msg, dict) else None
        data = content.get("data") if isinstance(content, dict) else None
        method = data.get("method") if isinstance(data, dict) else None
        if method == "request_state":
            widget.send_state()
            return
        reason = "it is not an update" if method != "update" else self._unfit(widget, msg)
        if reason is None:
            assert isinstance(data, dict)
            state = data["state"]
            try:
                if data.get("buffer_paths"):
                    _put_buffers(state, data["buffer_paths"], msg.get("buffers") or [])
                widget.set_state(state)
                return
            except Exception as exc:  # a value the widget cannot take: refused like the rest
                reason = f"the widget could not take it ({exc.__class__.__name__})"
        log.warning("Refused a message from the page to a %s: %s.", widget._model_name, reason)
        if widget in self.controls:
            self.refused = (
                f"A change to {widget.description} that is not one of its choices was refused."
            )
            widget.send_state("index")  # a page that shows something else is put right
            self._render_status()

    def _unfit(self, widget: widgets.Widget, msg: dict[str, Any]) -> str | None:
        """Return why an update from the page is refused, or None to take it."""
        data = msg["content"]["data"]
        state = data.get("state")
        if not isinstance(state, dict) or not state:
            return "its state is not a mapping of traits"
        if widget in self.controls:
            index = state.get("index")
            if set(state) != {"index"} or data.get("buffer_paths") or msg.get("buffers"):
                return "a control takes only an index"
            if type(index) is not int or not 0 <= index < len(widget.options):
                return "the index is not one of the control's choices"
            return None
        if isinstance(widget, go.FigureWidget):
            if not set(state) <= FIGURE_INPUT:
                return "a figure takes only what plotly.js reports"
            if not all(v is None or isinstance(v, dict) for v in state.values()):
                return "what plotly.js reports is a mapping"
            size = len(json.dumps(state, default=lambda _: None))
            size += sum(len(b) for b in msg.get("buffers") or [])
            if size > MAX_FIGURE_INPUT:
                return f"{size:,} bytes is more than plotly.js ever reports"
            return None
        return "this widget takes no input"

    def _control_name(self, control: widgets.Dropdown) -> str:
        names = {
            id(c): n
            for c, n in zip(self.controls, ("field", "versus", "window", "interval"), strict=True)
        }
        return names[id(control)]

    # ------------------------------------------------------------ refreshing

    def start(self) -> None:
        """Start the refresh loop on the running event loop (the kernel's), once."""
        if self._task is not None or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a plain script): refresh_now() still works
        self._task = loop.create_task(self._run())

    def stop(self) -> None:
        """Stop the refresh loop; the panels keep what they show."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def close(self) -> None:
        """Stop the refresh loop, release the database, and close the widgets."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        self.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        for fig in self.figures.values():
            fig.close()
        super().close()

    def refresh_now(self, force: bool = True) -> bool:
        """Run one refresh in this thread and apply it; return whether it succeeded.

        :param force: recompute the panels even when neither data nor controls changed.
        """
        key = self._key()
        began = time.monotonic()
        try:
            with self._lock:
                outcome = self._work(key, force or self._dirty)
            self._dirty = False
        except Exception as exc:  # every failure becomes one sentence in the status
            self._failed(exc, time.monotonic() - began)
            return False
        self._succeeded(outcome)
        return True

    async def refresh(self, force: bool = False) -> bool:
        """Run one refresh off the event loop and apply it; return whether it succeeded."""
        key = self._key()
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        work = loop.run_in_executor(self._executor, self._locked_work, key, force)
        # No other refresh starts meanwhile, however long this one takes; past the refresh
        # interval, the status says that the source is slow.
        patience = self._interval() or SLOW_AFTER
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=patience)
                if not work.done():
                    self.waiting = time.monotonic() - began
                    self._render_status()
            outcome = work.result()
        except Exception as exc:  # every failure becomes one sentence in the status
            self.waiting = None
            self._failed(exc, time.monotonic() - began)
            return False
        self.waiting = None
        self._succeeded(outcome)
        return True

    async def _run(self) -> None:
        while not self._closed:
            self._wake.clear()
            force, self._dirty = self._dirty, False
            ok = await self.refresh(force)
            self.repair_views()
            if not ok:
                self._dirty = self._dirty or force
                delay: float | None = BACKOFF[min(self.failures, len(BACKOFF)) - 1]
                self.retry_in = delay
                self._render_status()
            else:
                delay = self._interval()
                if delay is not None:
                    # on the clock's multiples of the interval: every viewer of the server
                    # refreshes at the same moments, so they share one probe and computation
                    delay -= time.time() % delay
            if delay is None:
                await self._wake.wait()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _interval(self) -> float | None:
        """Seconds to the next automatic refresh; None while it is off or paused."""
        delay = INTERVALS[self.interval.value]
        if delay is None or self.paused is not None:
            return None
        if self.costs is not None:
            delay = max(delay, self.costs.min_refresh)
        return delay

    def _locked_work(self, key: Key, force: bool) -> Outcome:
        with self._lock:
            return self._work(key, force)

    def _work(self, key: Key, force: bool) -> Outcome:
        """Poll the data version and recompute when needed; runs in a worker thread."""
        if self.source is None:
            raise SourceError(self.problem or "No source is configured.")
        if self._engine is None:
            self._engine = reader(self.source)
        began = time.monotonic()
        engine, source = self._engine, self.source

        def probe() -> str:
            with engine.connect() as conn:
                return data_version(conn, source)

        # One probe a tick for all the server's viewers when they share a cache; a refresh
        # asked for (a control, a button) reads the source itself.
        cache = self.cache
        version = probe() if cache is None else cache.version(source, probe, fresh=force)
        last = self.snapshot
        moving = key[2] != "all"
        unchanged = (
            last is not None
            and last.key == key
            and last.version == version
            and not (moving and time.monotonic() - last.computed > WINDOW_RECHECK)
        )
        if unchanged and not force:
            return Outcome(key, version, None)
        q = Query(
            field=key[0],
            versus=key[1],
            window=key[2],
            buckets=self.buckets,
            bins=self.bins,
            people=self.people,
        )
        self.computes += 1
        meter = Meter()

        def compute() -> dict[str, Any]:
            # the panels run at once, each on a connection of its own (two on the local
            # databases, all seven on Athena, where each waits on the service)
            return compute_all(engine, source, q, meter=meter)

        shared = False
        if self.cache is None:
            results = compute()
        else:
            results = self.cache.fetch(source, q, version, compute)
            shared = self.cache.stats.last in ("hit", "waited")
        snap = Snapshot(
            key,
            q,
            version,
            results,
            _utcnow(),
            time.monotonic() - began,
            shared=shared,
            scanned=meter.scanned_bytes,
        )
        return Outcome(key, version, snap)

    def _succeeded(self, outcome: Outcome) -> None:
        self.error = None
        self.failures = 0
        self.retry_in = None
        if outcome.snapshot is not None:
            if outcome.key != self._key():
                self._dirty = True  # a control changed meanwhile: the next tick recomputes
                self._wake.set()
            self.snapshot = outcome.snapshot
            self._apply(outcome.snapshot)
            if self.costs is not None:
                self.paused = self.costs.over_limit(outcome.snapshot.scanned)
        self.grid.remove_class("dd-stale")
        self._render_status()

    def _failed(self, exc: BaseException, took: float) -> None:
        self.failures += 1
        self.error = explain(exc, self.source) if self.source is not None else str(exc)
        if self._engine is not None:
            # Pooled connections may be dead; the next try opens fresh ones.
            self._engine.dispose()
        if self.snapshot is not None:
            self.grid.add_class("dd-stale")
        self._render_status()

    # ------------------------------------------------------------ applying

    def _apply(self, snap: Snapshot) -> None:
        """Put a snapshot's figures into the widgets: the one place figures change."""
        specs = figs.figures(snap.results, snap.query)
        for name, spec in specs.items():
            apply_figure(self.figures[name], spec)
            self._edited[name] = time.monotonic()
        self._shown_key = snap.key

    def _show(self, name: str, fig: go.FigureWidget) -> None:
        fig._config = {"displaylogo": False, "responsive": True}
        fig.observe(lambda change: self._on_drawn(name, change), names="_js2py_traceDeltas")
        self.figures[name] = fig
        self._drawn[name] = None
        self.cards[name].children = [fig]
        self._guard(fig)

    def _on_drawn(self, name: str, change: dict[str, Any]) -> None:
        if change["new"]:
            self._drawn[name] = int(change["new"]["trace_edit_id"])

    def repair_views(self, grace: float = 3.0) -> list[str]:
        """Redraw any figure whose view missed an update; return the names redrawn.

        A view reports the last edit of its traces that it drew (plotly's report of the
        layout never reaches Python in this version). An update sent while the page was still
        creating its views can be lost (seen on Voilà's first load), and with data that does
        not change no later update would repair it: such a figure is replaced by a fresh one
        built from its current state.

        :param grace: seconds an update may take to reach the views before it counts as lost.
        """
        redrawn = []
        for name, fig in list(self.figures.items()):
            drawn = self._drawn[name]
            if drawn is None or drawn >= fig._last_trace_edit_id:
                continue  # no view yet, or the view is up to date
            if time.monotonic() - self._edited[name] < grace:
                continue
            state = fig.to_dict()
            self._show(name, live_figure(data=state["data"], layout=state["layout"]))
            fig.close()
            redrawn.append(name)
        self.repaired += len(redrawn)
        return redrawn

    # ------------------------------------------------------------ status

    def _header_html(self) -> str:
        where = html.escape(self.source.label) if self.source is not None else "no source"
        return (
            f'<div class="dd-title">{TITLE}</div>'
            f'<div class="dd-subtitle">Live sessions from {where}</div>'
        )

    def _render_status(self) -> None:
        self.status.value = self._status_html()

    def _status_html(self) -> str:
        return status_html(
            source=self.source,
            snapshot=self.snapshot,
            error=self.error or (self.problem if self.source is None else None),
            refused=self.refused,
            retry_in=self.retry_in if self.error else None,
            live=INTERVALS[self.interval.value] is not None,
            now=_utcnow(),
            costs=self.costs,
            paused=self.paused,
            waiting=self.waiting,
        )


def live_figure(**kwargs: Any) -> go.FigureWidget:
    """A FigureWidget whose updates of data restate its axes' types.

    plotly.js guesses an axis's type again whenever an update changes a trace's data, unless
    the same update sets the type, and it takes the timeline's times (milliseconds since 1970,
    the shortest form to send) for plain numbers: after the first refresh that brought new
    buckets the time axis read 1.7953T. The widget sends only what changed, so the types that
    did not change are added to each such update here."""
    fig = go.FigureWidget(**kwargs)
    send = fig._send_update_msg

    def send_with_types(
        restyle_data: dict[str, Any],
        relayout_data: dict[str, Any],
        trace_indexes: Any = None,
        source_view_id: Any = None,
    ) -> None:
        if restyle_data:
            axes = ("xaxis", "yaxis")
            types = {f"{a}.type": fig.layout[a].type for a in axes if fig.layout[a].type}
            relayout_data = types | relayout_data
        send(restyle_data, relayout_data, trace_indexes, source_view_id)

    fig._send_update_msg = send_with_types
    return fig


def apply_figure(fig: go.FigureWidget, spec: figs.Figure) -> None:
    """Update a live figure in place from a plain figure dict, in one batch."""
    layout = dict(spec["layout"])
    if fig.layout.uirevision != layout.get("uirevision"):
        # What the axes mean changed: drop any zoom the user had, so autorange applies again.
        for axis in ("xaxis", "yaxis"):
            if axis in layout:
                layout[axis] = {**layout[axis], "autorange": True, "range": None}
    with fig.batch_update():
        for trace, data in zip(fig.data, spec["data"], strict=True):
            props = {k: v for k, v in data.items() if k != "type"}
            stale = set(trace.to_plotly_json()) - set(props) - {"type", "uid"}
            for key in stale:
                trace[key] = None
            trace.update(props, overwrite=True)
        # update() merges arrays and skips empty ones: annotations are set whole.
        fig.layout.annotations = layout.pop("annotations", [])
        fig.layout.update(layout)
    # The messages above reach only views that exist; a view opened later (Voilà connects after
    # the first refresh) starts from the widget's state, which plotly sets only on display.
    fig._widget_data = copy.deepcopy(fig._data)
    fig._widget_layout = copy.deepcopy(fig._layout_obj._props)


def status_html(
    *,
    source: Source | None,
    snapshot: Snapshot | None,
    error: str | None,
    refused: str | None = None,
    retry_in: float | None = None,
    live: bool = True,
    now: datetime | None = None,
    costs: Costs | None = None,
    paused: str | None = None,
    waiting: float | None = None,
) -> str:
    """Return the status line: what is shown and how fresh it is, or what is wrong.

    :param waiting: seconds the refresh in flight has taken, when that is too long.
    """
    now = now or _utcnow()
    esc = html.escape
    parts: list[str] = []
    level = "ok"
    if source is not None:
        parts.append(f"<b>{esc(source.label)}</b>")
    if snapshot is not None:
        summary = snapshot.results.get("summary") or {}
        q = snapshot.query
        window = WINDOW_LABELS[q.window].lower()
        rows = int(summary.get("rows") or 0)
        parts.append(f"{rows:,} rows in {esc(window)}")
        newest = summary.get("newest")
        if newest is not None:
            parts.append(f"newest {newest:%Y-%m-%d %H:%M:%S} UTC")
        top = snapshot.results.get("top_people")
        f = FIELDS[q.field]
        if top is not None and len(top):
            best = figs._format(top["value"].iloc[0], f)
            who = esc(str(top["person_name"].iloc[0]))
            parts.append(f"highest {esc(f.label.lower())}: <b>{who}</b> ({esc(best)})")
        shared = " (shared)" if snapshot.shared else ""
        parts.append(f"refreshed {snapshot.at:%H:%M:%S} UTC in {snapshot.took:.2f} s{shared}")
        if costs is not None:
            parts.append(esc(costs.describe(snapshot.scanned)))
        if rows == 0:
            level = "info"
            parts.insert(1, f"No sessions in {esc(window)} yet; the panels fill in as rows arrive")
        elif newest is not None and live and now - newest > STALE_AFTER:
            level = "warn"
            parts.insert(1, f"Stale: no new rows for {_ago(now - newest)}")
    elif error is None:
        parts.append("Loading the panels…")
        level = "info"
    if error is not None:
        level = "error"
        text = esc(error)
        if snapshot is not None:
            text += f" Showing the panels from {snapshot.at:%H:%M:%S} UTC (stale)"
            text += f"; retrying in {retry_in:.0f} s." if retry_in else "."
        elif retry_in:
            text += f" Retrying in {retry_in:.0f} s."
        parts.insert(0, text)
    if paused is not None and error is None:
        parts.insert(0, esc(paused))
        level = "warn"
    if waiting is not None:
        parts.insert(
            0,
            f"The source is slow: this refresh has been running for {waiting:.0f} s, and the "
            "next one starts when it ends",
        )
        level = "error" if level == "error" else "warn"
    if refused is not None:
        parts.insert(0, esc(refused))
        level = "error" if level == "error" else "warn"
    body = ' <span class="dd-sep">·</span> '.join(parts)
    return f'<div class="dd-status dd-{level}"><span class="dd-dot"></span>{body}</div>'


@dataclass(frozen=True)
class Costs:
    """What Athena charges for, and the limits that keep a dashboard left open cheap."""

    price_per_tb: float
    min_refresh: float
    max_scan_bytes: int

    @classmethod
    def from_settings(cls) -> Costs:
        return cls(
            price_per_tb=settings.get_float("athena_price_per_tb"),
            min_refresh=float(settings.get_int("athena_min_refresh", minimum=0)),
            max_scan_bytes=int(settings.get_float("athena_max_scan_gb") * 1e9),
        )

    def describe(self, scanned: int) -> str:
        """Bytes one refresh scanned and their price, for the status line."""
        price = scanned / 1e12 * self.price_per_tb
        return f"scanned {_bytes(scanned)} (${price:,.4f})"

    def over_limit(self, scanned: int) -> str | None:
        """The sentence that pauses automatic refresh, when a refresh scanned too much."""
        if scanned <= self.max_scan_bytes:
            return None
        return (
            f"The last refresh scanned {_bytes(scanned)}, more than "
            f"DRIVENDATA_ATHENA_MAX_SCAN_GB allows ({_bytes(self.max_scan_bytes)}); automatic "
            "refresh is paused: pick a shorter window, or change a control to refresh once."
        )


def _bytes(count: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{count} B"


def _ago(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} days"


def _dropdown(label: str, options: list[tuple[str, str]], value: str) -> widgets.Dropdown:
    control = widgets.Dropdown(
        options=options,
        value=value,
        description=label,
        style={"description_width": "initial"},
        layout=widgets.Layout(width="auto"),
    )
    control.add_class("dd-control")
    return control


CSS = """
.dd-dashboard {
  --dd-bg: #f2f4f8; --dd-card: #ffffff; --dd-ink: #2b3442; --dd-muted: #6b778a;
  --dd-blue: #1a4d99;
  background: var(--dd-bg); padding: 24px 28px 32px; box-sizing: border-box;
  font-family: Inter, "Segoe UI", Roboto, "Helvetica Neue", "Noto Sans", "Liberation Sans",
    Arial, sans-serif;
  color: var(--dd-ink); width: 100%; border-radius: 0;
}
body:has(.dd-dashboard), body:has(.dd-dashboard) .jp-Notebook,
body:has(.dd-dashboard) #rendered_cells, body:has(.dd-dashboard) main {
  background: #f2f4f8 !important;
}
.dd-dashboard .dd-header { margin: 0 0 14px; }
.dd-dashboard .dd-title {
  font-size: 28px; font-weight: 700; color: var(--dd-blue); letter-spacing: -0.01em;
  line-height: 1.2;
}
.dd-dashboard .dd-subtitle { font-size: 14px; color: var(--dd-muted); margin-top: 4px; }
.dd-dashboard .dd-controls {
  display: flex; flex-wrap: wrap; gap: 10px 22px; align-items: center;
  background: var(--dd-card); border-radius: 12px; padding: 12px 16px; margin-bottom: 12px;
  box-shadow: 0 1px 2px rgba(16, 24, 40, 0.06), 0 2px 8px rgba(16, 24, 40, 0.06);
}
.dd-dashboard .dd-control { margin: 0; }
.dd-dashboard .dd-control label, .dd-dashboard .dd-control .widget-label {
  font-size: 13px; font-weight: 600; color: var(--dd-muted); padding-right: 8px;
}
.dd-dashboard .dd-control select {
  font-size: 14px; min-width: 150px; height: 32px; border-radius: 8px;
  border: 1px solid #d0d7e2; background-color: #fbfcfe; color: var(--dd-ink); padding: 0 8px;
}
.dd-dashboard .dd-status-box { margin: 0 0 18px; width: 100%; }
.dd-dashboard .dd-status {
  font-size: 13.5px; line-height: 1.5; padding: 9px 14px; border-radius: 10px;
  background: #e8f1fd; color: #23406e; border: 1px solid #cfe0f7; white-space: normal;
}
.dd-dashboard .dd-status b { font-weight: 600; }
.dd-dashboard .dd-sep { color: #9aa6b8; margin: 0 4px; }
.dd-dashboard .dd-dot {
  display: inline-block; width: 8px; height: 8px; border-radius: 50%; margin-right: 8px;
  background: #2e9e5b; vertical-align: 1px;
}
.dd-dashboard .dd-info .dd-dot { background: #3f7fd9; }
.dd-dashboard .dd-warn { background: #fff6e5; color: #7a4b00; border-color: #f6dca8; }
.dd-dashboard .dd-warn .dd-dot { background: #e69a1e; }
.dd-dashboard .dd-error { background: #fdecec; color: #8a1c1c; border-color: #f5c6c6; }
.dd-dashboard .dd-error .dd-dot { background: #d93b3b; }
.dd-dashboard .dd-grid {
  display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 20px; width: 100%;
}
@media (max-width: 980px) {
  .dd-dashboard .dd-grid { grid-template-columns: minmax(0, 1fr); }
}
.dd-dashboard .dd-card {
  background: var(--dd-card); border-radius: 14px; padding: 8px; overflow: hidden;
  box-shadow: 0 1px 3px rgba(16, 24, 40, 0.08), 0 6px 18px rgba(16, 24, 40, 0.07);
  display: block; min-width: 0; transition: opacity 0.3s;
}
.dd-dashboard .dd-card > * { width: 100% !important; }
.dd-dashboard .dd-grid.dd-stale .dd-card { opacity: 0.55; }
"""
