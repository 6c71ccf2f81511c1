"""gunicorn server hooks (``--config python:convo.gunicorn_hooks``, as ``make run`` starts it).

``child_exit``: a worker that exited leaves its Prometheus files in ``PROMETHEUS_MULTIPROC_DIR``;
``mark_process_dead`` drops its live-gauge files (its counters and histograms stay summed, which
is what a scrape should show). convo keeps no live-mode gauges today: the queue gauges are read
at scrape time. The hook is here so any added later stays correct.
"""

from __future__ import annotations

import os
from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
