"""Faults on storage while `drivendata stream` runs and a dashboard watches (issue 6).

Each test runs the real generator as a subprocess (``drivendata stream --seed``) and a real
:class:`~drivendata.dashboard.Dashboard` in this process on its own event loop (no browser),
breaks the database under them, clears the fault, and then checks that:

- the generator said what was wrong in one sentence on one line, once, with nothing on stderr,
  and went on by itself;
- the dashboard said it in one sentence while its source failed, kept the last panels, and
  recovered by itself (or, where readers are not affected, kept refreshing without an error);
- nothing was lost or written twice: the table holds exactly the first ``made`` unique_ids of
  the seeded generator, each once, where ``made`` is what the generator says on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from drivendata.dashboard import Dashboard
from drivendata.database import Source, source_from, table_sql
from drivendata.stream import Generator

from .conftest import stop

SEED = 61
RATE = 20  # rows per second, as a busy ingestion pipeline
DRIVENDATA = str(Path(sys.executable).with_name("drivendata"))


@functools.cache
def seeded_ids(count: int = 5000) -> list[str]:
    """The unique_ids `drivendata stream --seed SEED` makes, in order (they do not depend on
    the batches they are made in)."""
    rows = Generator(SEED).rows([datetime(2026, 1, 1)] * count)
    return [row[-1] for row in rows]


def one_sentence(text: str | None) -> str:
    """Check that ``text`` is one sentence on one line, with no traceback; return it."""
    assert text, "nothing was said"
    assert "\n" not in text.strip() and "Traceback" not in text, text
    assert text.rstrip().endswith("."), text
    assert len(re.findall(r"[.!?](?:\s+[A-Z]|\s*$)", text.strip())) == 1, text
    return text


class Streamer:
    """`drivendata stream` in a subprocess, its stdout and stderr in files."""

    def __init__(self, source: Source, logs: Path) -> None:
        self.out = logs / "stream.out"
        self.err = logs / "stream.err"
        self.source = source
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [DRIVENDATA, "stream", "--url", source.url.render_as_string(False)]
                + ["--rate", str(RATE), "--seed", str(SEED)],
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def said(self, start: str) -> list[str]:
        return [line for line in self.lines() if line.startswith(start)]

    def stop(self) -> tuple[int, int, int]:
        """Stop it as a service manager would (SIGTERM); return rows made, written and left."""
        stop(self.proc)
        assert self.proc.returncode == 0, self.report()
        assert self.err.read_text().strip() == "", self.report()
        last = self.lines()[-1]
        found = re.fullmatch(r"Made ([\d,]+) rows, wrote ([\d,]+); ([\d,]+) left unwritten\.", last)
        assert found, self.report()
        made, written, left = (int(n.replace(",", "")) for n in found.groups())
        return made, written, left

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def report(self) -> str:
        return f"stdout:\n{self.out.read_text()}\nstderr:\n{self.err.read_text()}"


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def rows_shown(d: Dashboard) -> int:
    return int(d.snapshot.results["summary"]["rows"]) if d.snapshot else -1


def stored_ids(source: Source) -> list[str]:
    """Every unique_id in the table; read-only, so that reading never creates a store."""
    if source.kind == "sqlite":
        uri = f"file:{source.sqlite_path.as_posix()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            sql = f"SELECT unique_id FROM {source.table.name}"
            return [row[0] for row in conn.execute(sql)]
    engine = sa.create_engine(source.url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            sql = f"SELECT unique_id FROM {table_sql(source)}"
            return list(conn.execute(sa.text(sql)).scalars())
    finally:
        engine.dispose()


def assert_said_once(streamer: Streamer) -> None:
    """The generator said the outage and the recovery once each: per outage, not per retry."""
    assert len(streamer.said("Cannot write")) == len(streamer.said("The database is back")) == 1


def assert_nothing_lost_or_doubled(streamer: Streamer, d: Dashboard) -> None:
    """Stop the generator and compare the table with what it says it made."""
    made, written, left = streamer.stop()
    ids = stored_ids(streamer.source)
    assert left == 0 and written == made, streamer.report()
    assert len(ids) == len(set(ids)) == made  # nothing twice, nothing missing
    assert made <= len(seeded_ids())  # so that the next line compares all of them
    assert set(ids) == set(seeded_ids()[:made])  # and exactly the rows it made
    # the dashboard, refreshed once more, shows exactly the table
    assert d.refresh_now()
    assert rows_shown(d) == made


async def streaming(streamer: Streamer, source: Source) -> Dashboard:
    """Wait for the generator's first rows, then open a dashboard on them."""
    await until(lambda: streamer.proc.poll() is not None or _count(source) > 0, 60, "rows")
    assert streamer.proc.poll() is None, streamer.report()
    d = Dashboard(source, interval="2s")  # its refresh loop runs on this event loop
    await until(lambda: d.snapshot is not None, 20, "the first panels")
    return d


def _count(source: Source) -> int:
    try:
        return len(stored_ids(source))
    except (sa.exc.DBAPIError, sqlite3.Error):
        return 0  # no table yet


# ---------------------------------------------------------------- PostgreSQL stopped


@dataclass
class Cluster:
    version: str
    name: str
    port: int

    def ctl(self, action: str) -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action],
            check=True,
            capture_output=True,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def _pg_version() -> str:
    """The newest PostgreSQL installed here with a server (the directory names may vary)."""
    versions = [
        v.name
        for v in Path("/etc/postgresql").glob("*")
        if Path("/usr/lib/postgresql", v.name, "bin", "initdb").exists()
    ]
    if not versions:
        pytest.fail("No PostgreSQL server is installed (/etc/postgresql is empty); install it.")
    return max(versions, key=lambda v: float(v))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drop_leftovers(version: str) -> None:
    """Drop clusters that earlier runs of this test left behind (their process is gone)."""
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout
    for line in listing.splitlines():
        parts = line.split()
        found = re.fullmatch(r"ddfaults_(\d+)", parts[1]) if len(parts) > 1 else None
        if found and parts[0] == version and not Path("/proc", found.group(1)).exists():
            subprocess.run(["pg_dropcluster", "--stop", version, parts[1]], capture_output=True)


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A PostgreSQL cluster of this test's own, on a free port, dropped afterwards.

    Other people's tests use the main cluster while this one runs, so it is never the one
    stopped. Made with the Debian cluster tools, as root (as in CI); fsync is off because the
    test stops the server cleanly and its data are thrown away.
    """
    if shutil.which("pg_createcluster") is None or os.geteuid() != 0:
        pytest.fail(
            "This test makes a PostgreSQL cluster of its own: run it as root on a machine with "
            "postgresql-common (pg_createcluster, pg_ctlcluster)."
        )
    version = _pg_version()
    _drop_leftovers(version)
    cluster = Cluster(version, f"ddfaults_{os.getpid()}", _free_port())
    subprocess.run(["pg_dropcluster", "--stop", version, cluster.name], capture_output=True)
    try:
        subprocess.run(
            ["pg_createcluster", "--quiet", "--start-conf=manual", "--port", str(cluster.port)]
            + ["-o", "fsync=off", "-o", "shared_buffers=16MB", version, cluster.name]
            + ["--", "--auth=trust", "--no-sync"],
            check=True,
            capture_output=True,
        )
        cluster.ctl("start")
        yield cluster
    finally:
        subprocess.run(["pg_dropcluster", "--stop", version, cluster.name], capture_output=True)


def test_postgresql_stopped_and_started_while_streaming(
    own_cluster: Cluster, tmp_path: Path
) -> None:
    """`pg_ctlcluster stop`, then `start`, under the generator and a dashboard: both say the
    server cannot be reached, both recover by themselves, every row made lands exactly once."""
    source = source_from(own_cluster.url)
    streamer = Streamer(source, tmp_path)

    async def scenario() -> None:
        d = await streaming(streamer, source)
        try:
            before = rows_shown(d)
            await asyncio.to_thread(own_cluster.ctl, "stop")
            await until(lambda: d.error is not None, 15, "the dashboard to notice")
            await until(lambda: bool(streamer.said("Cannot write")), 15, "the generator to notice")
            for said in (d.error, streamer.said("Cannot write")[0]):
                assert "cannot be reached" in one_sentence(said), said
            # the last panels stay, marked stale
            assert "dd-error" in d.status.value and "(stale)" in d.status.value

            await asyncio.to_thread(own_cluster.ctl, "start")
            await until(lambda: d.error is None and rows_shown(d) > before, 30, "the dashboard")
            await until(
                lambda: bool(streamer.said("The database is back")), 30, "the generator to write"
            )
            assert "dd-error" not in d.status.value
            assert "dd-stale" not in d.grid._dom_classes
            assert_nothing_lost_or_doubled(streamer, d)
            assert_said_once(streamer)
        finally:
            d.close()

    try:
        asyncio.run(scenario())
    finally:
        streamer.kill()


# ---------------------------------------------------------------- SQLite store faults


class Fault:
    """One way the embedded store fails, how to cause it and how to clear it."""

    generator_says = ""
    dashboard_says: str | None = None  # None: readers are not affected and must not fail

    def folder(self, tmp_path: Path) -> Path:
        return tmp_path

    def cause(self, path: Path) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Undo whatever is left of the fault, even when the test failed."""


class LongWriter(Fault):
    """Another process holds a write transaction on the store (a migration, a bulk load).

    Readers of a WAL store are not blocked by it, so the dashboard keeps refreshing; the
    generator waits its 5 s busy timeout, says the store is locked, and catches up afterwards.
    """

    generator_says = "is locked by another writer"
    HOLD = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('BEGIN IMMEDIATE')\n"
        "conn.execute(\"INSERT INTO streaming_data (unique_id) VALUES ('long writer')\")\n"
        "print('holding', flush=True)\n"
        "sys.stdin.readline()\n"
        "conn.execute('ROLLBACK')\n"
    )

    def cause(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.HOLD, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "holding\n"

    def clear(self) -> None:
        out, _ = self.proc.communicate("done\n", timeout=30)
        assert self.proc.returncode == 0

    def release(self) -> None:
        if hasattr(self, "proc") and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Missing(Fault):
    """The store file is moved away (`mv`, its -wal and -shm left in place), then put back.

    Open SQLite handles would keep reading the moved file; the readers' pool drops them, so the
    dashboard says the store is missing. The generator must not create an empty store in its
    place (that would split the rows between two files and take over the old WAL).
    """

    generator_says = "is missing (moved or deleted)"
    dashboard_says = "is missing (moved or deleted)"

    def cause(self, path: Path) -> None:
        self.path, self.away = path, path.with_suffix(".away")
        path.rename(self.away)

    def clear(self) -> None:
        assert not self.path.exists(), "something made a new store in the missing one's place"
        self.away.rename(self.path)

    def release(self) -> None:
        if hasattr(self, "away") and self.away.exists() and not self.path.exists():
            self.away.rename(self.path)


class DiskFull(Fault):
    """The store's filesystem fills up (another program's file takes the last free byte).

    A tmpfs of 8 MB mounted for the test holds the store: the sandbox and CI run as root and
    allow mounts, so neither a loop-mounted image nor RLIMIT_FSIZE on the generator is needed.
    Readers need no space, so the dashboard keeps refreshing.
    """

    generator_says = "is full; free space on it"

    def folder(self, tmp_path: Path) -> Path:
        self.mount = tmp_path / "small-disk"
        self.mount.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(self.mount)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.fail(f"Cannot mount a small tmpfs ({done.stderr.strip()}); run as root.")
        return self.mount

    def cause(self, path: Path) -> None:
        self.filler = path.parent / "filler"
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC: the disk is full
        finally:
            os.close(fd)
        fd = os.open(self.filler, os.O_WRONLY | os.O_APPEND)
        try:  # the last partial block
            while os.write(fd, b"\0" * 512):
                pass
        except OSError as exc:
            assert exc.errno == 28
        finally:
            os.close(fd)

    def clear(self) -> None:
        self.filler.unlink()

    def release(self) -> None:
        if hasattr(self, "mount"):
            subprocess.run(["umount", "--lazy", str(self.mount)], capture_output=True)


@pytest.mark.parametrize("fault", [LongWriter, Missing, DiskFull], ids=lambda f: f.__name__)
def test_sqlite_store_fault_while_streaming(fault: type[Fault], tmp_path: Path) -> None:
    """The store is locked, missing or on a full disk while the generator writes and a
    dashboard reads: one sentence each, no crash, and everything lands once it is cleared."""
    trouble = fault()
    path = trouble.folder(tmp_path) / "store.db"
    source = source_from(f"sqlite:///{path}")
    streamer = Streamer(source, tmp_path)

    async def scenario() -> None:
        d = await streaming(streamer, source)
        try:
            before = rows_shown(d)
            trouble.cause(path)
            await until(lambda: bool(streamer.said("Cannot write")), 20, "the generator")
            said = one_sentence(streamer.said("Cannot write")[0])
            assert trouble.generator_says in said and str(path) in said, said
            if trouble.dashboard_says is None:
                # the source still answers: a refresh during the fault succeeds
                assert await d.refresh(force=True), d.error
                assert d.failures == 0 and rows_shown(d) >= before
            else:
                await until(lambda: d.error is not None, 10, "the dashboard to notice")
                assert trouble.dashboard_says in one_sentence(d.error), d.error
                assert "dd-error" in d.status.value and "(stale)" in d.status.value
            assert streamer.proc.poll() is None, streamer.report()

            stuck = rows_shown(d)  # the rows written before the fault
            trouble.clear()
            await until(
                lambda: bool(streamer.said("The database is back")), 30, "the generator to write"
            )
            await until(
                lambda: d.error is None and rows_shown(d) > stuck, 20, "the dashboard to catch up"
            )
            assert "dd-stale" not in d.grid._dom_classes
            assert_nothing_lost_or_doubled(streamer, d)
            assert_said_once(streamer)
        finally:
            d.close()

    try:
        asyncio.run(scenario())
    finally:
        streamer.kill()
        trouble.release()
