"""The synthetic stream generator: the only part of DrivenData that writes."""

from __future__ import annotations

import collections
import itertools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from faker import Faker

from drivendata.database import (
    COLUMN_NAMES,
    Source,
    create_store_indexes,
    create_table,
    drop_store_indexes,
    explain,
    table_sql,
    writer,
)

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
PEOPLE = 5000


@dataclass
class People:
    """A pool of Romanian-locale people that sessions are drawn from."""

    person_name: list[str]
    user_name: list[str]
    email: list[str]
    personal_number: list[int]
    birth_date: list[str]
    address: list[str]
    phone_number: list[str]
    iban: list[str]

    @classmethod
    def make(cls, seed: int, count: int = PEOPLE) -> People:
        fake = Faker("ro_RO")
        fake.seed_instance(seed)
        people = cls([], [], [], [], [], [], [], [])
        for i in range(count):
            born = fake.date_of_birth(minimum_age=12, maximum_age=85)
            people.person_name.append(fake.name()[:50])
            # a number keeps user names distinct when Faker repeats one
            people.user_name.append(f"{fake.user_name()}{i}"[:50])
            people.email.append(fake.email()[:50])
            people.personal_number.append(int(fake.ssn()))
            people.birth_date.append(born.isoformat())
            people.address.append(fake.address().replace("\n", ", ")[:250])
            people.phone_number.append(fake.phone_number()[:25])
            people.iban.append(fake.iban()[:25])
        return people


@dataclass
class Generator:
    """Make rows like the real ingestion pipeline's, the same for the same seed."""

    seed: int | None = None
    people: People = field(init=False)
    rng: np.random.Generator = field(init=False)
    ids: random.Random = field(init=False)

    def __post_init__(self) -> None:
        seed = self.seed if self.seed is not None else random.SystemRandom().randrange(2**32)
        self.people = People.make(seed)
        self.rng = np.random.default_rng(seed)
        self.ids = random.Random(seed)

    def rows(self, times: Sequence[datetime] | np.ndarray) -> list[Row]:
        """Return one row per arrival time, in the table's column order."""
        stamps = np.asarray(times, dtype="datetime64[us]")
        n = len(stamps)
        rng = self.rng
        who = rng.integers(0, len(self.people.person_name), n)
        duration = np.clip(rng.exponential(1800, n), 0, 36000).astype(np.int64)
        download = np.clip(rng.normal(300, 160, n), 0, 1000).astype(np.int64)
        upload = np.clip(download * rng.uniform(0.1, 0.9, n), 0, 800).astype(np.int64)
        # kB moved: a share of what the link could carry during the session
        traffic = np.clip(duration * download * rng.uniform(0.001, 0.12, n), 0, 2_000_000)
        traffic = traffic.astype(np.int64)
        accessed = np.char.replace(np.datetime_as_string(stamps, unit="us"), "T", " ")
        macs = rng.integers(0, 2**48, n, dtype=np.int64)
        ips = rng.integers(0, 2**32, n, dtype=np.int64)
        p = self.people
        out: list[Row] = []
        for i in range(n):
            k = int(who[i])
            mac = int(macs[i]).to_bytes(6, "big").hex(":")
            ip = ".".join(str(b) for b in int(ips[i]).to_bytes(4, "big"))
            out.append(
                (
                    p.person_name[k],
                    p.user_name[k],
                    p.email[k],
                    p.personal_number[k],
                    p.birth_date[k],
                    p.address[k],
                    p.phone_number[k],
                    mac,
                    ip,
                    p.iban[k],
                    str(accessed[i]),
                    int(duration[i]),
                    int(download[i]),
                    int(upload[i]),
                    int(traffic[i]),
                    str(uuid.UUID(int=self.ids.getrandbits(128), version=4)),
                )
            )
        return out

    def history(self, rows: int, days: float, now: datetime | None = None) -> Iterator[list[Row]]:
        """Yield batches of rows spread over the last ``days`` days, oldest first."""
        end = np.datetime64((now or _utcnow()).replace(tzinfo=None), "us")
        span = int(days * 86_400_000_000)
        offsets = np.sort(self.rng.integers(0, max(span, 1), rows))[::-1]
        stamps = end - offsets.astype("timedelta64[us]")
        for start in range(0, rows, 50_000):
            yield self.rows(stamps[start : start + 50_000])


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def insert(conn: sa.Connection, source: Source, rows: Sequence[Row]) -> None:
    """Insert rows in one transaction's worth of statements; COPY on PostgreSQL."""
    if not rows:
        return
    if source.kind == "postgresql":
        dbapi = conn.connection.driver_connection
        cols = ", ".join(COLUMN_NAMES)
        with (
            dbapi.cursor() as cur,  # type: ignore[union-attr]
            cur.copy(f"COPY {table_sql(source)} ({cols}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join("?" * len(COLUMN_NAMES))
    sql = f"INSERT INTO {table_sql(source)} ({', '.join(COLUMN_NAMES)}) VALUES ({marks})"
    conn.connection.driver_connection.executemany(sql, rows)  # type: ignore[union-attr]


def seed(
    source: Source,
    rows: int,
    days: float,
    *,
    seed: int | None = None,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Backfill ``rows`` sessions spread over the last ``days`` days; return the rows written."""
    engine = writer(source)
    done = 0
    try:
        bulk = source.kind == "sqlite" and rows >= 50_000
        with engine.begin() as conn:
            create_table(conn, source)
            if bulk:  # building the indexes once afterwards is several times faster
                drop_store_indexes(conn, source)
        gen = Generator(seed)
        for batch in gen.history(rows, days, now):
            with engine.begin() as conn:
                insert(conn, source, batch)
            done += len(batch)
            if progress:
                progress(done)
        if source.kind == "sqlite":
            with engine.begin() as conn:
                create_store_indexes(conn, source)
                conn.execute(sa.text(f"ANALYZE {source.table.schema or 'main'}"))
    finally:
        engine.dispose()
    return done


class Stream:
    """Insert rows continuously, keeping unwritten rows through an outage of the database.

    Rows are made at ``rate`` per second and written in batches. When a write fails, the batch
    stays in a bounded buffer and is written again after a backoff; after a failure whose outcome
    is unknown (the connection dropped around the commit), rows that did reach the table are
    found by their ``unique_id`` and not written twice.
    """

    def __init__(
        self,
        source: Source,
        rate: float,
        *,
        seed: int | None = None,
        buffer: int = 100_000,
        say: Callable[[str], None] = print,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.source = source
        self.rate = rate
        self.buffer: collections.deque[Row] = collections.deque()
        self.limit = buffer
        self.say = say
        self.clock = clock
        self.gen = Generator(seed)
        self.written = 0
        self.made = 0
        self.stop_event = threading.Event()
        self._engine: sa.Engine | None = None
        self._outage_since: float | None = None
        self._unsure = False

    def stop(self) -> None:
        self.stop_event.set()

    def run(self, *, max_rows: int | None = None, seconds: float | None = None) -> int:
        """Stream until stopped, ``max_rows`` made or ``seconds`` passed; return rows written."""
        began = time.monotonic()
        owed = 0.0
        last = began
        backoff = 0.5
        next_try = began
        while not self.stop_event.is_set():
            now = time.monotonic()
            if seconds is not None and now - began >= seconds:
                break
            owed += (now - last) * self.rate
            last = now
            due = int(owed)
            if max_rows is not None:
                due = min(due, max_rows - self.made)
            room = self.limit - len(self.buffer)
            if due > room and self._outage_since is not None:
                due = max(room, 0)  # pause making rows rather than drop any
            if due > 0:
                owed -= due
                stamp = self.clock()
                self.buffer.extend(self.gen.rows([stamp] * due))
                self.made += due
            if self.buffer and now >= next_try:
                if self._flush():
                    backoff = 0.5
                else:
                    next_try = now + backoff
                    backoff = min(backoff * 2, 10.0)
            if max_rows is not None and self.made >= max_rows and not self.buffer:
                break
            wait = 0.05 if self.rate >= 20 else min(0.5, 1 / self.rate)
            self.stop_event.wait(wait)
        while self.buffer and self._flush():  # every kept row, 10,000 at a time
            pass
        if self._engine is not None:
            self._engine.dispose()
        return self.written

    def _flush(self) -> bool:
        taken = list(itertools.islice(self.buffer, 10_000))
        batch = taken
        try:
            if self._engine is None:
                self._engine = writer(self.source)
                with self._engine.begin() as conn:
                    create_table(conn, self.source)
            if self._unsure:
                batch = self._not_yet_written(batch)
            with self._engine.begin() as conn:
                insert(conn, self.source, batch)
        except Exception as exc:  # any failure of the database: keep the rows, retry later
            self._unsure = True
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                kept = len(self.buffer)
                why = explain(exc, self.source)
                if why.startswith("The "):
                    why = "the " + why[4:]
                self.say(
                    f"Cannot write to the database (keeping {kept:,} unwritten "
                    f"row{'' if kept == 1 else 's'} until it is back): {why}"
                )
            return False
        for _ in taken:
            self.buffer.popleft()
        # rows that an uncertain commit did write count too: all of ``taken`` is in the table
        self.written += len(taken)
        self._unsure = False
        if self._outage_since is not None:
            gone = time.monotonic() - self._outage_since
            self.say(f"The database is back after {gone:.0f} s; wrote the kept rows.")
            self._outage_since = None
        return True

    def _not_yet_written(self, batch: list[Row]) -> list[Row]:
        assert self._engine is not None
        ids = [row[-1] for row in batch]
        found: set[str] = set()
        with self._engine.connect() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ", ".join(f":u{i}" for i in range(len(chunk)))
                params = {f"u{i}": v for i, v in enumerate(chunk)}
                sql = f"SELECT unique_id FROM {table_sql(self.source)} WHERE unique_id IN ({marks})"
                found.update(r[0] for r in conn.execute(sa.text(sql), params))
        return [row for row in batch if row[-1] not in found]
