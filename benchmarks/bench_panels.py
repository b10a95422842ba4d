"""Benchmark the panels against the naive approach, on SQLite and PostgreSQL.

For each source and row count this seeds a store (or reuses one that already holds exactly
that many rows), then measures, each in a fresh subprocess so that peak memory is honest:

- ours: the seven units of :mod:`drivendata.panels` for one field (median of warm repeats),
  computed as the dashboard and ``drivendata panels`` compute them (compute_all: two
  statements at a time, on connections of their own), then the six figures of
  :mod:`drivendata.figures` serialized to plotly JSON;
- naive: ``SELECT *`` into pandas, the same panels in pandas, plotly express figures built
  from the raw rows (:mod:`naive`);
- floor: a plain full scan, ``SELECT count(*), sum(upload_speed)``;
- probe: :func:`drivendata.panels.data_version` (median of many calls).

It prints one table per source and size, checks the panels against the pandas results, and
prints PASS/MISS for the issue's targets. It always exits 0: the targets are information.

Peak memory is the subprocess's peak resident set size, read from ``VmHWM`` in
/proc/self/status when the measurement ends. (``ru_maxrss`` is not used on Linux: the kernel
carries the parent's peak across fork and exec into it.) It includes the interpreter and the
imported libraries; the peak already reached after the imports is shown too, and the
difference is what the measurement itself added.

Usage::

    .venv/bin/python benchmarks/bench_panels.py
    .venv/bin/python benchmarks/bench_panels.py --rows 100000 --sources sqlite --repeat 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TABLE = "streaming_layer.streaming_data"
FIELD = "upload_speed"
WINDOW = "all"
PG_BASE = "postgresql://postgres@127.0.0.1:5432"
KB = 1000
MB = 1024 * 1024

# The targets, at 1,000,000 rows for the times and at any row count for the rest.
SQLITE_SECONDS = 0.5
SQLITE_SPEEDUP = 12.0
PG_SECONDS = 1.0
PAYLOAD_BYTES = 120 * KB
PEAK_BYTES = 150 * MB
PROBE_SECONDS = 0.020


# ---------------------------------------------------------------- stores


def url_for(kind: str, rows: int, sqlite_dir: str, pg_base: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{Path(sqlite_dir, f'drivendata_bench_{rows}.db').resolve()}"
    return f"{pg_base.rstrip('/')}/drivendata_bench_{rows}"


def count_rows(url: str) -> int | None:
    """Return the table's row count, or None when the store or table does not exist."""
    import sqlalchemy as sa

    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            return None
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            conn.execute(f"ATTACH DATABASE 'file:{path}?mode=ro' AS streaming_layer")
            return int(conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])
        except sqlite3.DatabaseError:
            return None
        finally:
            conn.close()
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            if conn.execute(sa.text(f"SELECT to_regclass('{TABLE}')")).scalar() is None:
                return None
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {TABLE}")).scalar() or 0)
    finally:
        engine.dispose()


def prepare(kind: str, url: str, rows: int, days: float) -> str:
    """Make sure the store holds exactly ``rows`` seeded rows; return what was done."""
    import sqlalchemy as sa

    from drivendata.database import source_from
    from drivendata.stream import seed

    if kind == "postgresql":
        base, _, name = url.rpartition("/")
        admin = sa.create_engine(
            f"{base}/postgres".replace("postgresql://", "postgresql+psycopg://", 1),
            isolation_level="AUTOCOMMIT",
        )
        try:
            with admin.connect() as conn:
                found = conn.execute(
                    sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                ).first()
                if found is None:
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
    have = count_rows(url)
    if have == rows:
        return f"reused ({rows:,} rows)"
    if have is not None:
        if kind == "sqlite":
            path = Path(url.removeprefix("sqlite:///"))
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        else:
            engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE {TABLE}"))
            engine.dispose()
    began = time.perf_counter()
    seed(source_from(url, TABLE), rows, days, seed=1)
    took = time.perf_counter() - began
    if kind == "postgresql":
        # What autovacuum does to a real table soon after a bulk load; no index is added.
        engine = sa.create_engine(
            url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
        )
        with engine.connect() as conn:
            conn.execute(sa.text(f"VACUUM ANALYZE {TABLE}"))
        engine.dispose()
    return f"seeded {rows:,} rows in {took:.0f} s"


# ---------------------------------------------------------------- workers (subprocesses)


def _peak_bytes() -> int:
    """The process's peak resident set size so far (VmHWM, or ru_maxrss off Linux)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _rss_parts() -> dict[str, int]:
    """The resident set now, split into anonymous memory and mapped files (Linux only)."""
    status = Path("/proc/self/status")
    parts = {}
    if status.exists():
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                parts[key] = int(value.split()[0]) * 1024
    return parts


def _median_time(func: Any, repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - began)
    return statistics.median(times), out


def _payload(figs: dict[str, Any]) -> int:
    import plotly.graph_objects as go

    return sum(len(go.Figure(f).to_json()) for f in figs.values())


def our_figures(results: dict[str, Any], q: Any) -> tuple[dict[str, Any], str]:
    """Build the six figures with drivendata.figures, or an equivalent fallback if absent."""
    try:
        from drivendata import figures
    except Exception as exc:  # the module is being written by someone else
        return _fallback_figures(results, q), f"fallback figures ({type(exc).__name__})"
    return figures.figures(results, q), "drivendata.figures"


def _fallback_figures(results: dict[str, Any], q: Any) -> dict[str, Any]:
    import plotly.graph_objects as go

    tt, tp, tl = results["top_traffic"], results["top_people"], results["timeline"]
    d, h, ag = results["distribution"], results["histogram"], results["age_groups"]
    return {
        "top_traffic": go.Figure(
            go.Scatter(x=tt[q.field], y=tt[q.versus], text=tt["person_name"], mode="markers")
        ),
        "top_people": go.Figure(go.Bar(x=tp["value"], y=tp["person_name"], orientation="h")),
        "timeline": go.Figure(
            [go.Scatter(x=tl["bucket"], y=tl[c], name=c) for c in ("max", "min", "mean")]
        ),
        "distribution": go.Figure(
            go.Box(
                q1=[d["q1"]],
                median=[d["median"]],
                q3=[d["q3"]],
                lowerfence=[d["min"]],
                upperfence=[d["max"]],
                mean=[d["mean"]],
            )
        ),
        "histogram": go.Figure(go.Bar(x=(h["lo"] + h["hi"]) / 2, y=h["count"])),
        "age_groups": go.Figure(go.Pie(labels=ag["age_group"], values=ag["share"], hole=0.5)),
    }


def worker(kind: str, url: str, repeat: int, now: datetime, out: Path) -> None:
    """Run one measurement in this (fresh) process and write its figures to ``out``."""
    import sqlalchemy as sa

    from drivendata.database import reader, source_from
    from drivendata.panels import PANELS, Query, compute, compute_all, data_version, run

    if kind == "naive":
        import naive
    import plotly.graph_objects  # noqa: F401 - imported before the baseline, as a client would

    baseline = _peak_bytes()
    source = source_from(url, TABLE)
    engine = reader(source)
    q = Query(field=FIELD, window=WINDOW, now=now)
    report: dict[str, Any] = {"baseline_bytes": baseline}
    with engine.connect() as conn:
        if kind == "ours":
            # as the dashboard and `drivendata panels` refresh: two statements at a time, on
            # connections of their own
            compute_all(engine, source, q, workers=2)  # warm: connections, page cache
            report["panels_s"], results = _median_time(
                lambda: compute_all(engine, source, q, workers=2), repeat
            )

            def build() -> tuple[int, str]:
                figs, how = our_figures(results, q)
                return _payload(figs), how

            report["figures_s"], (report["payload_bytes"], report["figures"]) = _median_time(
                build, repeat
            )
            report["results"] = normalize(results)
            figs, _ = our_figures(results, q)
            report["payload_each"] = {k: _payload({k: f}) for k, f in figs.items()}
            each = {}
            for name in PANELS:
                began = time.perf_counter()
                run(conn, source, name, q)
                each[name] = time.perf_counter() - began
            report["panel_each_s"] = each
            # one statement after another on one connection, as a notebook's compute() runs
            compute(conn, source, q)
            report["serial_s"], _ = _median_time(lambda: compute(conn, source, q), repeat)
        elif kind == "naive":
            times: dict[str, list[float]] = {"load_s": [], "pandas_s": [], "figures_s": []}
            for _ in range(repeat):
                began = time.perf_counter()
                df = naive.load(conn)
                loaded = time.perf_counter()
                results = naive.panels(df, FIELD, now)
                computed = time.perf_counter()
                report["payload_bytes"] = _payload(naive.figures(df, results, FIELD))
                done = time.perf_counter()
                times["load_s"].append(loaded - began)
                times["pandas_s"].append(computed - loaded)
                times["figures_s"].append(done - computed)
                del df
            report.update({k: statistics.median(v) for k, v in times.items()})
            report["panels_s"] = report["load_s"] + report["pandas_s"]
            report["results"] = normalize(results)
        elif kind == "floor":
            sql = sa.text(f"SELECT count(*), sum({FIELD}) FROM {TABLE}")
            conn.execute(sql).all()
            report["panels_s"], row = _median_time(lambda: conn.execute(sql).one(), repeat)
            report["count"], report["sum"] = int(row[0]), int(row[1])
        elif kind == "probe":
            data_version(conn, source)
            times_ = []
            for _ in range(repeat):
                began = time.perf_counter()
                data_version(conn, source)
                times_.append(time.perf_counter() - began)
            report["panels_s"] = statistics.median(times_)
            report["max_s"] = max(times_)
        report["rss_now"] = _rss_parts()  # before the connections close and unmap the store
    engine.dispose()
    report["peak_bytes"] = _peak_bytes()
    out.write_text(json.dumps(report, default=str))


def normalize(results: dict[str, Any]) -> dict[str, Any]:
    """Turn panel results into plain, comparable JSON values."""
    import pandas as pd

    def plain(v: Any) -> Any:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return None
        if isinstance(v, pd.Timestamp | datetime):
            return pd.Timestamp(v).isoformat(sep=" ")
        if isinstance(v, str):
            return v
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, float):
            return float(f"{v:.9g}")
        return v

    out: dict[str, Any] = {}
    for name, value in results.items():
        if isinstance(value, pd.DataFrame):
            out[name] = {col: [plain(v) for v in value[col].tolist()] for col in value.columns}
        elif isinstance(value, dict):
            out[name] = {
                k: ({kk: plain(vv) for kk, vv in v.items()} if isinstance(v, dict) else plain(v))
                for k, v in value.items()
            }
        else:
            out[name] = plain(value)
    return out


def measure(kind: str, url: str, repeat: int, now: datetime) -> dict[str, Any]:
    """Run one measurement in a fresh subprocess and return its report."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "report.json")
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            kind,
            "--url",
            url,
            "--repeat",
            str(repeat),
            "--now",
            now.isoformat(sep=" "),
            "--out",
            str(out),
        ]
        done = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            return {"error": " | ".join(tail) or f"exit {done.returncode}"}
        return json.loads(out.read_text())


# ---------------------------------------------------------------- comparing and printing


def differences(ours: dict[str, Any], oracle: dict[str, Any]) -> list[str]:
    """Say where our panel results differ from the pandas results over the same rows."""
    found = []
    for name, want in oracle.items():
        got = ours.get(name)
        if isinstance(want, dict) and isinstance(got, dict):
            for key in want:
                if key == "share" or key not in got:
                    continue
                if not _same(got[key], want[key]):
                    found.append(
                        f"{name}.{key}: ours {_short(got[key])} vs pandas {_short(want[key])}"
                    )
            for key in got.keys() - want.keys() - {"version"}:  # pandas has no data version
                found.append(f"{name}.{key}: only in ours")
        elif not _same(got, want):
            found.append(f"{name}: ours {_short(got)} vs pandas {_short(want)}")
    return found


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    return a == b


def _short(v: Any) -> str:
    text = json.dumps(v, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _s(v: float | None) -> str:
    return "-" if v is None else (f"{v * 1000:.2f} ms" if v < 0.1 else f"{v:.3f} s")


def _kb(v: int | None) -> str:
    return "-" if v is None else f"{v / KB:,.1f} KB"


def _mb(v: int | None) -> str:
    return "-" if v is None else f"{v / MB:,.0f} MB"


def table(label: str, rows: int, note: str, reports: dict[str, dict[str, Any]]) -> list[str]:
    """Print the table for one source and size; return its target lines."""
    print(f"\n== {label}, {rows:,} rows ({note}); field {FIELD}, window {WINDOW} ==")
    head = (
        f"{'approach':<10}{'query+compute':>15}{'figures':>11}{'total':>11}"
        f"{'payload':>14}{'peak RSS':>11}{'after imports':>15}"
    )
    print(head)
    print("-" * len(head))
    for kind in ("ours", "naive", "floor", "probe"):
        r = reports[kind]
        if "error" in r:
            print(f"{kind:<10}failed: {r['error']}")
            continue
        figs = r.get("figures_s")
        total = r["panels_s"] + (figs or 0.0)
        print(
            f"{kind:<10}{_s(r['panels_s']):>15}{_s(figs):>11}{_s(total):>11}"
            f"{_kb(r.get('payload_bytes')):>14}{_mb(r['peak_bytes']):>11}"
            f"{_mb(r['baseline_bytes']):>15}"
        )
    ours, naive_, floor, probe = (reports[k] for k in ("ours", "naive", "floor", "probe"))
    if "naive" in reports and "load_s" in naive_:
        print(
            f"naive breakdown: SELECT * {_s(naive_['load_s'])}, pandas panels "
            f"{_s(naive_['pandas_s'])}, px figures + JSON {_s(naive_['figures_s'])}"
        )
    if "max_s" in probe:
        print(f"probe: median of {probe.get('calls', '?')} calls, slowest {_s(probe['max_s'])}")
    if "figures" in ours:
        print(f"figures built with {ours['figures']}")
    if ours.get("rss_now"):
        parts = ", ".join(f"{k} {_mb(v)}" for k, v in ours["rss_now"].items())
        print(
            f"ours resident set at the end, before closing: {parts} (RssFile counts the "
            "SQLite store's mapped pages)"
        )
    if "serial_s" in ours:
        print(
            "ours is compute_all, two statements at a time on connections of their own (as the "
            "dashboard and `drivendata panels` refresh); on one connection, one after another "
            f"(compute): {_s(ours['serial_s'])}"
        )
    if "panel_each_s" in ours:
        each = sorted(ours["panel_each_s"].items(), key=lambda kv: -kv[1])
        print("ours per panel (one run): " + ", ".join(f"{k} {_s(v)}" for k, v in each))
        sizes = sorted(ours["payload_each"].items(), key=lambda kv: -kv[1])
        print("ours payload per figure: " + ", ".join(f"{k} {_kb(v)}" for k, v in sizes))
    if "error" in ours or "error" in naive_:
        return []
    ours_total = ours["panels_s"] + ours["figures_s"]
    naive_total = naive_["panels_s"] + naive_["figures_s"]
    print(
        f"ratios naive/ours: time {naive_total / ours_total:,.1f}x "
        f"(query+compute alone {naive_['panels_s'] / ours['panels_s']:,.1f}x), "
        f"payload {naive_['payload_bytes'] / ours['payload_bytes']:,.0f}x, "
        f"peak RSS {naive_['peak_bytes'] / ours['peak_bytes']:,.1f}x"
    )
    if "error" not in floor:
        print(
            f"ours vs floor: {ours['panels_s'] / floor['panels_s']:,.1f}x a full-scan "
            f"count+sum (floor count {floor['count']:,})"
        )
    diffs = differences(ours["results"], naive_["results"])
    if diffs:
        print(f"panels vs pandas: {len(diffs)} difference(s)")
        for line in diffs:
            print(f"  DIFF {line}")
    else:
        print("panels vs pandas: all seven units agree")

    lines = []
    at_1m = "" if rows >= 1_000_000 else " (target is at 1,000,000 rows)"

    def check(ok: bool, text: str) -> None:
        lines.append(f"  {'PASS' if ok else 'MISS'}  {text}")

    if label.startswith("SQLite"):
        check(
            ours["panels_s"] <= SQLITE_SECONDS,
            f"all panels {_s(ours['panels_s'])} <= {SQLITE_SECONDS} s{at_1m}",
        )
        speedup = naive_total / ours_total
        check(
            speedup >= SQLITE_SPEEDUP,
            f"{speedup:.1f}x faster than naive >= {SQLITE_SPEEDUP:.0f}x{at_1m}",
        )
    else:
        check(
            ours["panels_s"] <= PG_SECONDS,
            f"all panels {_s(ours['panels_s'])} <= {PG_SECONDS} s{at_1m}",
        )
    check(
        ours["payload_bytes"] <= PAYLOAD_BYTES,
        f"payload {_kb(ours['payload_bytes'])} <= {_kb(PAYLOAD_BYTES)}",
    )
    check(
        ours["peak_bytes"] <= PEAK_BYTES,
        f"client peak RSS {_mb(ours['peak_bytes'])} <= {_mb(PEAK_BYTES)}",
    )
    if "error" not in probe:
        check(
            probe["panels_s"] <= PROBE_SECONDS,
            f"data version probe {_s(probe['panels_s'])} <= {_s(PROBE_SECONDS)}",
        )
    print("targets:")
    for line in lines:
        print(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--sources", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"]
    )
    parser.add_argument("--repeat", type=int, default=3, help="warm repeats (median)")
    parser.add_argument("--naive-repeat", type=int, default=1, help="repeats of the naive run")
    parser.add_argument("--probe-calls", type=int, default=200)
    parser.add_argument("--days", type=float, default=30, help="history the seed spreads over")
    parser.add_argument("--sqlite-dir", default="/tmp", help="where the SQLite stores live")
    parser.add_argument("--pg-base", default=PG_BASE, help="server URL without a database")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--now", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        worker(args.worker, args.url, args.repeat, datetime.fromisoformat(args.now), Path(args.out))
        return 0

    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; repeats: ours/floor "
        f"{args.repeat}, naive {args.naive_repeat}, probe {args.probe_calls}"
    )
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)  # the table's times are UTC
    for kind in args.sources:
        for rows in args.rows:
            url = url_for(kind, rows, args.sqlite_dir, args.pg_base)
            note = prepare(kind, url, rows, args.days)
            reports = {
                "floor": measure("floor", url, args.repeat, now),
                "ours": measure("ours", url, args.repeat, now),
                "naive": measure("naive", url, args.naive_repeat, now),
                "probe": measure("probe", url, args.probe_calls, now),
            }
            reports["probe"]["calls"] = args.probe_calls
            label = "SQLite" if kind == "sqlite" else "PostgreSQL"
            table(label, rows, note, reports)
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
