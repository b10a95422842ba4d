"""What a closed page leaves behind in the Voilà server process.

A one-hour soak had the server grow 0.25 MB for every page opened and closed. Most of it was
heap that glibc kept (``DashboardKernelManager`` now trims it shortly after a kernel goes,
measured in ``benchmarks/bench_load.py --soak``); two things really stayed, one of each per page:
Voilà's record of the page's request, and a logger of jupyter_events per kernel manager. These
tests hold the server's kernel manager in process, with kernel managers that start no kernel.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from voila.request_info_handler import RequestInfoSocketHandler

from drivendata import server


def event_loggers() -> set[str]:
    names = logging.Logger.manager.loggerDict
    return {n for n in names if n.startswith("jupyter_events.logger.")}


def test_a_closed_pages_kernel_leaves_no_request_record_and_no_logger() -> None:
    app = server.DashboardVoila()
    manager = server.DashboardKernelManager(parent=app)
    before = event_loggers()

    async def open_and_close(pages: int) -> None:
        for _ in range(pages):
            kernel_id = str(uuid.uuid4())
            kernel = manager.kernel_manager_factory(parent=manager, log=manager.log)
            assert kernel.event_logger is app.event_logger  # one for the server, not one a page
            manager._kernels[kernel_id] = kernel
            RequestInfoSocketHandler._cache[kernel_id] = {"window.location": "/"}
            manager.remove_kernel(kernel_id)
            assert kernel_id not in RequestInfoSocketHandler._cache
        await asyncio.sleep(server.TRIM_DELAY + 0.5)  # the trim runs on the loop, once

    asyncio.run(open_and_close(5))
    assert len(event_loggers() - before) <= 1  # the server's own
    assert not manager._trim_pending
