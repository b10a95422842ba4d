"""The shared result cache: one set of panel queries per data change for all viewers.

Each Voilà viewer runs in a kernel of its own, so without help N viewers of one field and window
send N times the same queries. The cache keeps one refresh's results (the seven units) in a
SQLite file of its own that every kernel of the server opens, keyed by what decides them:

- the source's URL (as shown, without a password) and table,
- the data version the asking viewer just read from the source,
- the field, versus field, window, buckets and bins, and the SQL of every panel (so that a
  changed query never meets an old entry),
- a time slot of ``slot`` seconds. Every panel depends on the time it runs at (the window's
  start, "last 5 minutes", ages today, rows stamped in the future), so a key holds for one slot
  only: a viewer is never shown results computed more than ``slot`` seconds earlier, even when
  the data version did not change (a quiet table, or a moving window losing old rows).

A key names one data version exactly, so a result computed for an older version is never
served for a newer one. (The version is read before the panels run; rows that arrive meanwhile
can only make an entry newer than its key says, never older.)

When several kernels miss the same key at once, one computes while the others wait on a lock
file (``flock``: the kernel releases it if the holder dies) for at most ``wait`` seconds, then
read its entry. Entries are evicted least recently used first once their sizes pass
``max_bytes``. A damaged or deleted cache file is replaced by an empty one; any other failure
of the cache is counted and the panels are computed directly, so the cache never stops a
refresh. Entries are pickles: the directory is created for its owner only, and a directory
that another user owns or may write to is not used (the panels are then computed directly).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pickle
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from drivendata import settings
from drivendata.database import Source
from drivendata.panels import Query, statements

T = TypeVar("T")

FILE = "results.db"
# Lock files a key's hash is spread over: two keys rarely share one, and when they do the
# second only waits for the first, then computes its own.
LOCKS = 256
# How often a waiting kernel tries the lock again.
POLL = 0.02
EPOCH = datetime(1970, 1, 1)

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
  key TEXT PRIMARY KEY,
  version TEXT NOT NULL,
  value BLOB NOT NULL,
  bytes INTEGER NOT NULL,
  created REAL NOT NULL,
  used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_used ON entries (used);
CREATE TABLE IF NOT EXISTS versions (
  key TEXT PRIMARY KEY,
  version TEXT NOT NULL,
  created REAL NOT NULL
);
"""
# Shared data versions are kept this long, then dropped as later ones are stored.
VERSIONS_KEPT = 300.0


@dataclasses.dataclass
class Stats:
    """What this process's cache did: answers found, computed, waited for, and failures."""

    hits: int = 0
    computed: int = 0
    waited: int = 0
    errors: int = 0
    probed: int = 0  # data versions this process read from the source
    shared: int = 0  # data versions it took from another process that read them this second
    last: str = ""  # "hit", "waited", "computed" or "uncached": how the last fetch was answered


class ResultCache:
    """Panel results shared by every process that opens the same directory.

    :param directory: where the cache file and its lock files live; created when missing.
    :param max_bytes: most bytes of stored results; least recently used entries go first.
    :param wait: most seconds to wait for another process computing the same key.
    :param slot: seconds an entry answers for, however the data changes (see the module).
    """

    def __init__(
        self, directory: Path | str, *, max_bytes: int, wait: float = 30.0, slot: float = 60.0
    ) -> None:
        self.directory = Path(directory).expanduser()
        self.max_bytes = max_bytes
        self.wait = wait
        self.slot = slot
        self.stats = Stats()

    @classmethod
    def from_settings(cls) -> ResultCache | None:
        """Build the cache the DRIVENDATA_CACHE* settings describe; ``None`` when it is off."""
        if settings.get("cache").lower() in ("0", "off", "false", "no"):
            return None
        return cls(
            settings.get("cache_dir"),
            max_bytes=settings.get_int("cache_megabytes") * 1_000_000,
            wait=settings.get_float("cache_wait"),
            slot=settings.get_float("cache_slot"),
        )

    @property
    def path(self) -> Path:
        return self.directory / FILE

    # ------------------------------------------------------------ keys

    def key(self, source: Source, q: Query, version: str) -> str:
        """Return the key of a refresh's results: source, table, version, query and time slot."""
        slot = int((q.now - EPOCH).total_seconds() // self.slot)
        # The statements as they run at the slot's start: their SQL and every parameter, with
        # the moving time replaced by one that is the same for the whole slot.
        at = EPOCH + timedelta(seconds=slot * self.slot)
        fixed = dataclasses.replace(q, now=at)
        parts = {
            "source": source.display,
            "table": str(source.table),
            "version": version,
            "query": [q.field, q.versus, q.window, q.buckets, q.bins, q.people],
            "slot": [self.slot, slot],
            "sql": {name: s.literal() for name, s in statements(source, fixed).items()},
        }
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    # ------------------------------------------------------------ the shared data version

    def version(
        self,
        source: Source,
        probe: Callable[[], str],
        at: float | None = None,
        fresh: bool = False,
    ) -> str:
        """Return the source's data version for this second of the clock: read by the first
        process that asks, and shared with every other process that asks in the same second.

        Viewers refresh on the same ticks of the clock (see the dashboard), so with this the
        source answers one probe a tick, and then one computation, however many viewers there
        are. The probe's failures reach the caller; the cache's own never do.

        :param fresh: read the source even when this second's version is known (a refresh
            someone asked for), and share that.
        """
        second = int(time.time() if at is None else at)
        try:
            self._ensure_directory()
            text = json.dumps(["version", source.display, str(source.table), second])
            key = hashlib.sha256(text.encode()).hexdigest()
        except Exception:  # no usable directory
            self.stats.errors += 1
            self.stats.probed += 1
            return probe()
        with self._lock(key) as held:
            known = held is not None and not fresh
            found = self._safely(self._get_version, key) if known else None
            if found is not None:
                self.stats.shared += 1
                return str(found)
            value = probe()
            self.stats.probed += 1
            if held is not None:
                self._safely(self._put_version, key, value)
            return value

    def _get_version(self, key: str) -> str | None:
        with self._db() as conn:
            row = conn.execute("SELECT version FROM versions WHERE key = ?", (key,)).fetchone()
            return None if row is None else str(row[0])

    def _put_version(self, key: str, version: str) -> None:
        now = time.time()
        with self._db() as conn:
            conn.execute("INSERT OR REPLACE INTO versions VALUES (?, ?, ?)", (key, version, now))
            conn.execute("DELETE FROM versions WHERE created < ?", (now - VERSIONS_KEPT,))

    # ------------------------------------------------------------ the one entry point

    def fetch(self, source: Source, q: Query, version: str, compute: Callable[[], T]) -> T:
        """Return the results for a query at a data version: stored, or computed once for all.

        :param version: the data version the caller just read from the source.
        :param compute: runs the panels; called only when no process has the results. Its
            failures reach the caller; the cache's own never do.
        """
        try:
            self._ensure_directory()
            key = self.key(source, q, version)
        except Exception:  # no usable directory, or a query the key cannot describe
            self.stats.errors += 1
            self.stats.last = "uncached"
            return compute()
        found = self._safely(self._get, key, version)
        if found is not None:
            self.stats.hits += 1
            self.stats.last = "hit"
            return found[0]
        with self._lock(key) as held:
            if held is not None:
                # Whoever held the lock before us may have stored the results meanwhile.
                found = self._safely(self._get, key, version)
                if found is not None:
                    if held:
                        self.stats.waited += 1
                    else:
                        self.stats.hits += 1
                    self.stats.last = "waited" if held else "hit"
                    return found[0]
            value = compute()
            self.stats.computed += 1
            self.stats.last = "computed"
            self._safely(self._put, key, version, value)
            return value

    def _safely(self, action: Callable[..., Any], *args: Any) -> Any:
        """Run a cache operation; on a failure of the cache itself count it and return None."""
        try:
            return action(*args)
        except (sqlite3.Error, OSError, pickle.PicklingError, TypeError):
            self.stats.errors += 1
            return None

    # ------------------------------------------------------------ storage

    def _ensure_directory(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = self.directory.stat()
        if mode.st_uid != os.geteuid() or mode.st_mode & 0o022:
            # entries are pickles: nobody else may be able to write them
            raise PermissionError(f"{self.directory} is writable by other users")

    def _connect(self) -> sqlite3.Connection:
        self._ensure_directory()
        conn = sqlite3.connect(self.path, timeout=max(self.wait, 5.0), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection to the cache file; a damaged file is replaced by a new one, once."""
        try:
            conn = self._connect()
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise
            self.clear()
            conn = self._connect()
        try:
            yield conn
        except sqlite3.DatabaseError as exc:
            if _damaged(exc):
                self.clear()
            raise
        finally:
            conn.close()

    def _get(self, key: str, version: str) -> tuple[Any] | None:
        with self._db() as conn:
            row = conn.execute(
                "SELECT version, value FROM entries WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            if row[0] != version:  # cannot happen (the key holds the version); never serve it
                return None
            try:
                value = pickle.loads(row[1])
            except Exception:  # a damaged entry: forget it, compute again
                conn.execute("DELETE FROM entries WHERE key = ?", (key,))
                return None
            conn.execute("UPDATE entries SET used = ? WHERE key = ?", (time.time(), key))
            return (value,)

    def _put(self, key: str, version: str, value: Any) -> None:
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        if len(blob) > self.max_bytes:
            return  # larger than the whole cache: not worth evicting everything for
        now = time.time()
        with self._db() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                    (key, version, blob, len(blob), now, now),
                )
                self._evict(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _evict(self, conn: sqlite3.Connection) -> None:
        total = conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM entries").fetchone()[0]
        if total <= self.max_bytes:
            return
        doomed = []
        for key, size in conn.execute("SELECT key, bytes FROM entries ORDER BY used, created"):
            if total <= self.max_bytes:
                break
            doomed.append((key,))
            total -= size
        conn.executemany("DELETE FROM entries WHERE key = ?", doomed)

    def size(self) -> tuple[int, int]:
        """Return the number of entries and their bytes."""
        with self._db() as conn:
            n, total = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM entries"
            ).fetchone()
            return int(n), int(total)

    def clear(self) -> None:
        """Remove the cache file (and its journal); the next use starts an empty one."""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    # ------------------------------------------------------------ locks

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[bool | None]:
        """Hold the key's lock file and yield whether that meant waiting; yield ``None``
        without it after ``wait`` seconds or when the lock cannot be had at all."""
        fd = self._safely(self._open_lock, key)
        if fd is None:
            yield None
            return
        try:
            held = self._safely(self._acquire, fd)
            try:
                yield held
            finally:
                if held is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _open_lock(self, key: str) -> int:
        locks = self.directory / "locks"
        locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{int(key[:8], 16) % LOCKS:03d}.lock"
        return os.open(locks / name, os.O_RDWR | os.O_CREAT, 0o600)

    def _acquire(self, fd: int) -> bool | None:
        deadline = time.monotonic() + self.wait
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return waited
            except BlockingIOError:
                pass
            if time.monotonic() >= deadline:
                return None
            waited = True
            time.sleep(POLL)


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "disk image" in text
