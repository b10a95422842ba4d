"""Measure the shared result cache: queries sent to the source by 1 and by 10 viewers.

For each source (SQLite, PostgreSQL) this seeds a fresh table, then, while
:class:`drivendata.stream.Stream` inserts rows at the default rate for ``--seconds``, runs four
groups of simulated viewers at once, each viewer a process of its own running the dashboard's
refresh logic (:meth:`Dashboard._work`: probe the data version, recompute when it changed) every
``--interval`` seconds, starting at staggered times as real visitors do:

- 1 viewer without the cache, 1 viewer with a cache of its own,
- 10 viewers without the cache, 10 viewers sharing one cache directory.

Every statement a viewer's engine sends is counted with a SQLAlchemy ``before_cursor_execute``
listener, split into version probes and panel queries. The figures are not drawn (that touches
no database). A viewer that falls behind would see fewer data versions and so send fewer
queries; the table shows how many data versions each group saw, to make that visible. All four
groups share the machine, so the refresh times are under the load of all of them together.

The PostgreSQL table lives in a database of its own, ``drivendata_cache_bench``, created when
missing and reseeded on every run.

Usage::

    .venv/bin/python benchmarks/bench_cache.py
    .venv/bin/python benchmarks/bench_cache.py --sources sqlite --seconds 20 --interval 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from drivendata.cache import ResultCache
from drivendata.dashboard import Dashboard
from drivendata.database import Source, reader, source_from, writer
from drivendata.panels import dialect_for, version_sql
from drivendata.stream import Stream, seed

TABLE = "streaming_layer.streaming_data"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_DATABASE = "drivendata_cache_bench"
GROUPS = (("1 viewer", 1, False), ("1 viewer", 1, True), ("10 viewers", 10, False))
GROUPS += (("10 viewers", 10, True),)
CTX = mp.get_context("fork")


def viewer(
    source: Source,
    cache_dir: str | None,
    interval: float,
    seconds: float,
    start: Any,
    out: Any,
    offset: float,
    group: int,
    ready: Any,
) -> None:
    """One simulated viewer: the dashboard's refresh logic every ``interval`` seconds."""
    cache = ResultCache(cache_dir, max_bytes=64_000_000) if cache_dir else None
    d = Dashboard(source, interval="2s", autostart=False, cache=cache)
    d._engine = reader(source)
    # the text before the first parameter: drivers rewrite ":name" into their own style
    probe = version_sql(dialect_for(source)).sql.split(":")[0]
    counts = {"probe": 0, "panel": 0}

    @sa.event.listens_for(d._engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counts["probe" if statement.startswith(probe) else "panel"] += 1

    versions: set[str] = set()
    took: list[float] = []
    ready.put(group)  # building the widgets takes a second or two: start the clock after it
    began = start.get()  # every viewer starts from the same clock reading
    tick = began + offset
    while tick < began + seconds:
        time.sleep(max(0.0, tick - time.time()))
        t0 = time.monotonic()
        outcome = d._locked_work(d._key(), False)
        took.append(time.monotonic() - t0)
        if outcome.snapshot is not None:
            d.snapshot = outcome.snapshot
        versions.add(outcome.version)
        tick += interval
    out.put(
        {
            "group": group,
            "probe": counts["probe"],
            "panel": counts["panel"],
            "computes": d.computes,
            "computed": cache.stats.computed if cache else d.computes,
            "versions": sorted(versions),
            "ticks": len(took),
            "took": took,
        }
    )
    d.close()


def streamer(source: Source, seconds: float, start: Any, ready: Any) -> None:
    ready.put(-1)
    time.sleep(max(0.0, start.get() - time.time()))
    Stream(source, rate=0.5, seed=11, say=lambda _: None).run(seconds=seconds)


def prepare(kind: str, rows: int, folder: Path) -> Source:
    if kind == "sqlite":
        source = source_from(f"sqlite:///{folder / 'cache_bench.db'}", TABLE)
    else:
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            found = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": PG_DATABASE}
            ).first()
            if found is None:
                conn.execute(sa.text(f'CREATE DATABASE "{PG_DATABASE}"'))
        admin.dispose()
        source = source_from(f"postgresql://postgres@127.0.0.1:5432/{PG_DATABASE}", TABLE)
        engine = writer(source)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA IF EXISTS streaming_layer CASCADE"))
        engine.dispose()
    seed(source, rows=rows, days=3, seed=1)
    return source


def measure(kind: str, rows: int, seconds: float, interval: float) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="drivendata-cache-bench-") as tmp:
        folder = Path(tmp)
        source = prepare(kind, rows, folder)
        rng = random.Random(5)
        out, ready, starts = CTX.Queue(), CTX.Queue(), []
        procs = []
        for index, (_, n, cached) in enumerate(GROUPS):
            cache_dir = str(folder / f"cache-{index}") if cached else None
            for _ in range(n):
                start = CTX.Queue()
                starts.append(start)
                offset = rng.uniform(0, interval)
                args = (source, cache_dir, interval, seconds, start, out, offset, index, ready)
                procs.append(CTX.Process(target=viewer, args=args))
        stream_start = CTX.Queue()
        starts.append(stream_start)
        procs.append(CTX.Process(target=streamer, args=(source, seconds, stream_start, ready)))
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=300)
        began = time.time() + 0.5
        for start in starts:
            start.put(began)
        results = [out.get(timeout=seconds + 120) for _ in range(len(procs) - 1)]
        for p in procs:
            p.join(timeout=60)
        streamed = count_rows(source) - rows
    print(
        f"\n{kind}: {rows:,} rows seeded, {streamed} streamed in {seconds:.0f} s "
        f"(rate 0.5/s), refresh every {interval:g} s"
    )
    print(
        "| viewers | cache | statements | version probes | panel queries | panel computations "
        "| data versions seen | refresh median / p95 (s) |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    rows_out = []
    for index, (label, _, cached) in enumerate(GROUPS):
        mine = [r for r in results if r["group"] == index]
        took = sorted(t for r in mine for t in r["took"])
        row = {
            "source": kind,
            "viewers": label,
            "cache": "on" if cached else "off",
            "probes": sum(r["probe"] for r in mine),
            "panels": sum(r["panel"] for r in mine),
            "computed": sum(r["computed"] for r in mine),
            "versions": len({v for r in mine for v in r["versions"]}),
            "median": statistics.median(took),
            "p95": took[int(0.95 * (len(took) - 1))],
        }
        rows_out.append(row)
        print(
            f"| {label} | {row['cache']} | {row['probes'] + row['panels']:,} | {row['probes']:,} "
            f"| {row['panels']:,} | {row['computed']:,} | {row['versions']:g} "
            f"| {row['median']:.3f} / {row['p95']:.3f} |",
            flush=True,
        )
    return rows_out


def count_rows(source: Source) -> int:
    engine = reader(source)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT COUNT(*) FROM {TABLE}")).scalar_one()
    engine.dispose()
    return int(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    for kind in args.sources:
        measure(kind, args.rows, args.seconds, args.interval)


if __name__ == "__main__":
    main()
