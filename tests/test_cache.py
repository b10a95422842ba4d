"""The shared result cache, with real processes on a real SQLite store and PostgreSQL server."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from drivendata.cache import ResultCache
from drivendata.dashboard import Dashboard
from drivendata.database import Source, reader, source_from
from drivendata.panels import Query, compute_all, data_version, statements
from drivendata.stream import Generator, Stream, insert
from tests.conftest import NOW, ROWS, Dataset, load

# Fork: the children start at once with everything imported; each opens its own connections.
CTX = mp.get_context("fork")
Q = Query(field="download_speed", versus="consumed_traffic", window="24h", now=NOW)


def counted(engine: sa.Engine) -> list[str]:
    """Record every statement the engine sends to the source."""
    sent: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    return sent


def same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if isinstance(a[name], pd.DataFrame):
            pd.testing.assert_frame_equal(a[name], b[name])
        else:
            assert a[name] == b[name], name


def viewer(
    source: Source, directory: Path, q: Query, barrier: Any, out: Any, seconds: float = 0.0
) -> None:
    """One viewer's refresh in a process of its own: probe the version, fetch the panels.

    With ``seconds``, keep refreshing that long (the dashboard's loop without a pause) and
    report every answer.
    """
    engine = reader(source)
    sent = counted(engine)
    cache = ResultCache(directory, max_bytes=50_000_000, wait=30)
    barrier.wait()
    began = time.monotonic()
    while True:
        with engine.connect() as conn:
            version = data_version(conn, source)
        before = len(sent)
        # a looping viewer asks at the time it is, as the dashboard does
        asked = dataclasses.replace(q, now=Query().now) if seconds else q
        results = cache.fetch(
            source, asked, version, lambda asked=asked: compute_all(engine, source, asked)
        )
        out.put((version, cache.stats.last, len(sent) - before, results))
        if time.monotonic() - began >= seconds:
            break
    out.put(None)
    engine.dispose()


def run_viewers(
    source: Source,
    directory: Path,
    q: Query,
    n: int,
    seconds: float = 0.0,
    started: Callable[[], None] | None = None,
) -> list[tuple[str, str, int, dict[str, Any]]]:
    """Run ``n`` viewers, each in a process of its own, and return their answers.

    :param started: called once every process is forked. Threads are started here, never
        before: a process forked while another thread holds a lock inherits it held for good
        (this test once hung for 60 s when the generator's thread was started first).
    """
    barrier, out = CTX.Barrier(n), CTX.Queue()
    procs = [
        CTX.Process(target=viewer, args=(source, directory, q, barrier, out, seconds))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    answers, done = [], 0
    if started is not None:
        started()
    while done < n:
        item = out.get(timeout=60)
        if item is None:
            done += 1
        else:
            answers.append(item)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return answers


def direct(source: Source, q: Query) -> dict[str, Any]:
    engine = reader(source)
    try:
        return compute_all(engine, source, q)
    finally:
        engine.dispose()


def test_many_viewers_asking_at_once_cause_one_computation(
    dataset: Dataset, tmp_path: Path
) -> None:
    answers = run_viewers(dataset.source, tmp_path / "cache", Q, n=6)
    how = [a[1] for a in answers]
    assert how.count("computed") == 1, how
    assert set(how) <= {"computed", "waited", "hit"}
    # the one computing viewer sent every panel's statement (once each, panels that share one
    # sharing it); the others sent none
    built = statements(dataset.source, Q).values()
    distinct = len({(s.sql, tuple(sorted(s.params.items()))) for s in built})
    for _, answered, queries, _ in answers:
        assert queries >= distinct if answered == "computed" else queries == 0
    expected = direct(dataset.source, Q)
    for answer in answers:
        same(answer[3], expected)


def holds_lock_file(pid: int) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd).endswith(".lock") for fd in fds.iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_viewer_that_misses_waits_for_the_one_computing(dataset: Dataset, tmp_path: Path) -> None:
    """This process plays the computing viewer, holding the key's lock until it stores."""
    source, directory = dataset.source, tmp_path / "cache"
    engine = reader(source)
    with engine.connect() as conn:
        version = data_version(conn, source)
    engine.dispose()
    mine = ResultCache(directory, max_bytes=10_000_000)
    key = mine.key(source, Q, version)
    barrier, out = CTX.Barrier(2), CTX.Queue()
    # started before the lock is taken, so that it inherits no lock file of ours
    child = CTX.Process(target=viewer, args=(source, directory, Q, barrier, out))
    child.start()
    assert child.pid is not None
    pid = child.pid
    with mine._lock(key) as held:
        assert held is False
        barrier.wait()
        wait_for(lambda: holds_lock_file(pid))  # it missed and now waits on the lock
        expected = direct(source, Q)
        mine._put(key, version, expected)
    answer = out.get(timeout=30)
    assert out.get(timeout=30) is None
    child.join(timeout=30)
    assert answer[1] == "waited" and answer[2] == 0
    same(answer[3], expected)


def grow(source: Source, rows: int, seed: int) -> None:
    from drivendata.database import writer

    gen = Generator(seed)
    engine = writer(source)
    with engine.begin() as conn:
        insert(conn, source, gen.rows([NOW - timedelta(seconds=i) for i in range(rows)]))
    engine.dispose()


def version_of(source: Source) -> str:
    engine = reader(source)
    try:
        with engine.connect() as conn:
            return data_version(conn, source)
    finally:
        engine.dispose()


def test_a_new_data_version_is_never_answered_from_an_older_entry(
    empty_source: Source, tmp_path: Path
) -> None:
    source, directory = empty_source, tmp_path / "cache"
    load(source, ROWS[:1000])
    first = run_viewers(source, directory, Q, n=2)
    assert sorted(a[1] for a in first)[0] == "computed"
    old = first[0][0]
    grow(source, 500, seed=3)
    # PostgreSQL's statistics reach the version probe within about a second
    wait_for(lambda: version_of(source) != old)
    second = run_viewers(source, directory, Q, n=3)
    assert [a[1] for a in second].count("computed") == 1
    for version, _, _, results in second:
        assert version != old
        same(results, direct(source, Q))
        assert results["summary"]["rows"] > first[0][3]["summary"]["rows"]


def components(version: str) -> tuple[int, ...]:
    # SQLite: MAX(rowid); PostgreSQL: inserted.deleted.updated.size, each only growing here
    return tuple(int(part) for part in version.split("."))


def test_while_rows_stream_in_every_answer_is_at_least_as_new_as_asked(
    empty_source: Source, tmp_path: Path
) -> None:
    """The summary carries the version read in the same statement as its counts."""
    source = empty_source
    load(source, ROWS[:1000])
    streamer = Stream(source, rate=40, seed=5, say=lambda _: None)
    thread = threading.Thread(target=streamer.run, kwargs={"seconds": 4}, daemon=True)
    q = dataclasses.replace(Q, window="all")
    try:
        answers = run_viewers(source, tmp_path / "cache", q, n=4, seconds=3, started=thread.start)
    finally:
        streamer.stop_event.set()
        if thread.ident is not None:
            thread.join(timeout=30)
    assert len({a[0] for a in answers}) > 1, "the version never changed while streaming"
    assert any(a[1] in ("hit", "waited") for a in answers)
    for asked, _, _, results in answers:
        served = results["summary"]["version"]
        assert all(s >= a for s, a in zip(components(served), components(asked), strict=True))
    computed = sum(a[1] == "computed" for a in answers)
    # At most one computation per version and time slot: in these 3 s at most one slot boundary
    # (DRIVENDATA_CACHE_SLOT, 60 s) can pass, and a version seen on both sides of it is
    # computed once in each slot.
    assert computed <= len({a[0] for a in answers}) + 1


# ---------------------------------------------------------------- in one process


@pytest.fixture
def sqlite_source(tmp_path: Path) -> Source:
    from drivendata.database import source_from

    source = source_from(f"sqlite:///{tmp_path / 'store.db'}", "streaming_layer.streaming_data")
    load(source, ROWS[:300])
    return source


def test_size_bound_evicts_least_recently_used(sqlite_source: Source, tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", max_bytes=50_000)
    blob = b"x" * 10_000
    queries = [dataclasses.replace(Q, window=w) for w in ("15m", "1h", "24h", "7d", "all")]
    queries += [dataclasses.replace(Q, field=f) for f in ("session_duration", "upload_speed")]
    first = queries[0]
    for i, q in enumerate(queries):
        cache.fetch(sqlite_source, q, "v1", lambda i=i: (i, blob))
        # the first entry is read after every store, so it stays the most recently used
        assert cache.fetch(sqlite_source, first, "v1", lambda: pytest.fail("evicted")) == (0, blob)
        entries, size = cache.size()
        assert size <= 50_000
    assert entries == 4
    assert cache.stats.computed == len(queries)
    # a result larger than the whole cache is returned but not kept
    big = b"y" * 60_000
    assert cache.fetch(sqlite_source, queries[1], "v2", lambda: big) == big
    assert cache.fetch(sqlite_source, queries[1], "v2", lambda: b"again") == b"again"
    assert cache.path.stat().st_size < 4 * 50_000


def test_a_damaged_or_missing_cache_file_is_replaced(sqlite_source: Source, tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "cache", max_bytes=10_000_000)
    expected = direct(sqlite_source, Q)
    compute = lambda: direct(sqlite_source, Q)  # noqa: E731
    same(cache.fetch(sqlite_source, Q, "1", compute), expected)
    assert cache.stats.last == "computed"
    for suffix in ("-wal", "-shm"):
        Path(f"{cache.path}{suffix}").unlink(missing_ok=True)
    cache.path.write_bytes(b"this is not a SQLite file" * 100)
    same(cache.fetch(sqlite_source, Q, "1", compute), expected)
    assert cache.stats.last == "computed"
    same(cache.fetch(sqlite_source, Q, "1", compute), expected)
    assert cache.stats.last == "hit"
    # a damaged entry is forgotten and computed again
    with sqlite3.connect(cache.path) as conn:
        conn.execute("UPDATE entries SET value = x'00ff'")
    same(cache.fetch(sqlite_source, Q, "1", compute), expected)
    assert cache.stats.last == "computed"
    # the whole directory gone
    import shutil

    shutil.rmtree(cache.directory)
    same(cache.fetch(sqlite_source, Q, "1", compute), expected)
    same(cache.fetch(sqlite_source, Q, "1", compute), expected)
    assert cache.stats.last == "hit"
    # a directory that cannot be created: the panels are computed, uncached
    blocked = tmp_path / "file"
    blocked.write_text("")
    nowhere = ResultCache(blocked / "cache", max_bytes=10_000_000)
    same(nowhere.fetch(sqlite_source, Q, "1", compute), expected)
    assert nowhere.stats.last == "uncached"
    # a directory others may write to holds no entries of ours
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    open_to_all = ResultCache(shared, max_bytes=10_000_000)
    same(open_to_all.fetch(sqlite_source, Q, "1", compute), expected)
    assert open_to_all.stats.last == "uncached"
    assert list(shared.iterdir()) == []


def test_a_key_holds_for_one_time_slot_and_one_version(sqlite_source: Source) -> None:
    cache = ResultCache("/nonexistent", max_bytes=1, slot=60)
    at = dataclasses.replace(Q, now=NOW)  # NOW is on a whole minute
    key = cache.key(sqlite_source, at, "7")
    assert key == cache.key(
        sqlite_source, dataclasses.replace(at, now=NOW + timedelta(seconds=59)), "7"
    )
    assert key != cache.key(
        sqlite_source, dataclasses.replace(at, now=NOW + timedelta(seconds=60)), "7"
    )
    assert key != cache.key(sqlite_source, at, "8")
    assert key != cache.key(sqlite_source, dataclasses.replace(at, versus="upload_speed"), "7")
    assert key != cache.key(sqlite_source, dataclasses.replace(at, bins=20), "7")
    all_time = dataclasses.replace(at, window="all")
    assert cache.key(sqlite_source, all_time, "7") != cache.key(
        sqlite_source, dataclasses.replace(all_time, now=NOW + timedelta(minutes=1)), "7"
    )


def test_settings_turn_the_cache_off_and_place_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DRIVENDATA_CACHE", "off")
    assert ResultCache.from_settings() is None
    monkeypatch.setenv("DRIVENDATA_CACHE", "on")
    monkeypatch.setenv("DRIVENDATA_CACHE_DIR", str(tmp_path / "here"))
    monkeypatch.setenv("DRIVENDATA_CACHE_MEGABYTES", "2")
    made = ResultCache.from_settings()
    assert made is not None and made.directory == tmp_path / "here"
    assert made.max_bytes == 2_000_000
    monkeypatch.setenv("DRIVENDATA_CACHE_SLOT", "soon")
    d = Dashboard.from_settings(autostart=False)
    try:
        assert d.cache is None and d.problem and "DRIVENDATA_CACHE_SLOT" in d.problem
    finally:
        d.close()


@pytest.fixture
def shared_settings(sqlite_source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dashboards built from the settings read the SQLite store and share one cache."""
    monkeypatch.setenv("DRIVENDATA_DATABASE_URL", str(sqlite_source.url))
    monkeypatch.setenv("DRIVENDATA_TABLE", str(sqlite_source.table))
    monkeypatch.setenv("DRIVENDATA_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.usefixtures("shared_settings")
def test_dashboards_share_one_computation(sqlite_source: Source) -> None:
    first = Dashboard.from_settings(autostart=False)
    second = Dashboard.from_settings(autostart=False)
    try:
        assert first.cache is not None and second.cache is not None
        assert first.refresh_now()
        assert first.snapshot is not None and not first.snapshot.shared
        second._engine = reader(sqlite_source)
        sent = counted(second._engine)
        assert second.refresh_now()
        assert second.snapshot is not None and second.snapshot.shared
        assert len(sent) == 1  # the version probe only
        assert "(shared)" in second.status.value
        same(second.snapshot.results, first.snapshot.results)
    finally:
        first.close()
        second.close()


def test_one_process_reads_the_data_version_each_second_for_all(
    sqlite_source: Source, tmp_path: Path
) -> None:
    """Two caches on one directory stand for two kernels of one server."""
    one = ResultCache(tmp_path / "cache", max_bytes=10_000_000)
    two = ResultCache(tmp_path / "cache", max_bytes=10_000_000)
    probes: list[str] = []

    def probe(answer: str) -> Any:
        def read() -> str:
            probes.append(answer)
            return answer

        return read

    assert one.version(sqlite_source, probe("7"), at=1000.2) == "7"
    assert two.version(sqlite_source, probe("8"), at=1000.9) == "7"  # the same second: shared
    assert probes == ["7"] and (one.stats.probed, two.stats.shared) == (1, 1)
    assert two.version(sqlite_source, probe("9"), at=1001.0) == "9"  # the next: read again
    assert one.version(sqlite_source, probe("10"), at=1001.5, fresh=True) == "10"  # asked for
    assert two.version(sqlite_source, probe("11"), at=1001.7) == "10"
    assert probes == ["7", "9", "10"]
    # another table of the same source is another version
    other = source_from(str(sqlite_source.url), "elsewhere.sessions")
    assert two.version(other, probe("12"), at=1001.8) == "12"


@pytest.mark.usefixtures("shared_settings")
def test_dashboards_on_the_same_tick_send_one_probe_and_one_computation(
    sqlite_source: Source,
) -> None:
    boards = [Dashboard.from_settings(autostart=False) for _ in range(3)]
    try:
        logs: list[list[str]] = []
        for board in boards:
            board._engine = reader(sqlite_source)
            logs.append(counted(board._engine))
        while time.time() % 1 > 0.5:  # the three ticks fall in one second of the clock
            time.sleep(0.05)
        outcomes = [board._locked_work(board._key(), False) for board in boards]
        sent = [statement for log in logs for statement in log]
        versions = [s for s in sent if s.startswith("SELECT MAX(rowid)")]
        assert len(versions) == 1, sent
        assert [o.snapshot is not None for o in outcomes] == [True, True, True]
        assert sum(b.cache.stats.computed for b in boards if b.cache) == 1
    finally:
        for board in boards:
            board.close()
