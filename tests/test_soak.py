"""A short soak of the live page: a real Voilà server, a few viewers, rows streaming.

The short variant of ``benchmarks/bench_load.py --soak``: three viewers' kernel sessions
driven over the kernel WebSocket (as the page's widget manager does) plus one page that closes
and reopens, on a small SQLite table, for 45 seconds (about 100 s in all). Fails when the Voilà
server's or a steady kernel's resident memory grows by more than 10 % after warm-up, when the
pages stop showing new rows, or when a kernel is left behind after every page closed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_load import soak, sqlite_store

ROWS = 20_000


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("soak")


def test_memory_holds_and_closed_pages_leave_no_kernels(store: Path) -> None:
    source = sqlite_store(ROWS, store)
    result = soak(
        source,
        store,
        viewers=3,
        seconds=45,
        warmup=15,
        rate=10,
        churn=20,
        drop_timeout=5,
        sample_every=2,
        settle=10,
    )
    assert result.samples >= 12
    assert result.churned >= 1
    assert result.kernel_growth, "no steady kernel was sampled through the soak"
    growth = {"server": result.server_growth, **result.kernel_growth}
    grown = {k: f"{100 * g:+.1f} %" for k, g in growth.items() if g > 0.10}
    assert not grown, f"memory grew by more than 10 % after warm-up: {grown} ({result})"
    assert result.left_behind == 0, f"{result.left_behind} kernel(s) left after pages closed"
    assert result.rows_seen > 0, "the pages showed no new rows while the stream ran"
