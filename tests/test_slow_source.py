"""A source slower than the refresh interval: refreshes never pile up, and the status says so.

In-process, on the real PostgreSQL server. The slowness is real: another session holds an
ACCESS EXCLUSIVE lock on the test's own table (in a schema of its own, dropped afterwards; no
user table is touched), so every query of the dashboard's waits in PostgreSQL, as it would
behind a long migration or a VACUUM FULL, for three refresh intervals. Meanwhile the viewer
changes the controls, each of which asks for a refresh at once.

What counts as "in flight" is a call of :meth:`Dashboard.refresh` (the one the refresh loop
awaits), from its start until it returns; it is counted by wrapping the real method. The
database's view is sampled too: how many sessions wait behind the lock.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import sqlalchemy as sa

from drivendata.dashboard import Dashboard
from drivendata.database import source_from, table_sql
from tests.conftest import POSTGRES_URL, ROWS, load

INTERVAL = 2.0  # the dashboard's shortest refresh interval ("2s")
HOLD = 3 * INTERVAL


def test_a_slow_source_never_has_two_refreshes_in_flight(pg_schema: str) -> None:
    source = source_from(POSTGRES_URL, f"{pg_schema}.streaming_data")
    load(source, ROWS)
    admin = sa.create_engine(source.url)

    async def scenario() -> dict[str, Any]:
        d = Dashboard(source, interval="2s")
        seen: dict[str, Any] = {"most": 0, "started": [], "waiters": 0, "slow_status": ""}
        in_flight = 0
        real = d.refresh

        async def counted(force: bool = False) -> bool:
            nonlocal in_flight
            in_flight += 1
            seen["most"] = max(seen["most"], in_flight)
            seen["started"].append(time.monotonic())
            try:
                return await real(force)
            finally:
                in_flight -= 1

        d.refresh = counted  # type: ignore[method-assign]
        try:
            deadline = time.monotonic() + 30
            while d.snapshot is None:
                assert time.monotonic() < deadline, "no first refresh"
                await asyncio.sleep(0.05)
            with admin.connect() as locker:
                locker.execute(sa.text(f"LOCK TABLE {table_sql(source)} IN ACCESS EXCLUSIVE MODE"))
                pid = locker.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
                locked = time.monotonic()
                seen["locked"] = locked
                changes = iter(
                    [
                        (d.field, "download_speed"),
                        (d.window, "7d"),
                        (d.field, "session_duration"),
                        (d.versus, "download_speed"),
                    ]
                )
                with admin.connect() as watcher:
                    while time.monotonic() - locked < HOLD:
                        control, value = next(changes, (None, None))
                        if control is not None:
                            control.value = value  # each change wakes the refresh loop
                        for _ in range(10):
                            await asyncio.sleep(0.1)
                            waiters = watcher.execute(
                                sa.text(
                                    "SELECT count(*) FROM pg_stat_activity "
                                    "WHERE :pid = ANY(pg_blocking_pids(pid))"
                                ),
                                {"pid": pid},
                            ).scalar_one()
                            seen["waiters"] = max(seen["waiters"], waiters)
                        if "slow" in d.status.value:
                            seen["slow_status"] = d.status.value
                    seen["in_flight_at_release"] = in_flight
                locker.rollback()  # ends the lock
            released = time.monotonic()
            seen["released"] = released
            deadline = released + 30
            while d.snapshot is None or d.snapshot.key != d._key() or d.waiting is not None:
                assert time.monotonic() < deadline, "the panels never caught up"
                await asyncio.sleep(0.05)
            seen["caught_up"] = time.monotonic() - released
            seen["key"] = d.snapshot.key
            seen["status"] = d.status.value
        finally:
            d.close()
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        admin.dispose()

    # one refresh at a time, always
    assert seen["most"] == 1
    # the source really was slow: the dashboard's queries waited behind the lock (two panels
    # run at once, on connections of their own), one refresh's worth and no more
    assert 1 <= seen["waiters"] <= 2
    assert seen["in_flight_at_release"] == 1
    during = [t for t in seen["started"] if seen["locked"] <= t < seen["released"]]
    assert len(during) <= 1, during  # the one that waited; none queued behind it
    # after the lock: the refresh that waited, then one for the controls changed meanwhile
    assert seen["key"] == ("session_duration", "download_speed", "7d")
    assert "The source is slow: this refresh has been running for" in seen["slow_status"]
    assert "slow" not in seen["status"] and "dd-error" not in seen["status"]
