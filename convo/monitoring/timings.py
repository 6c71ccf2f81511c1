"""Per-operation timings: ``timing_record``, ``timed``, and the merged stats (seed 000's
``recordPerformance`` and ``getPerformanceStats``), shared by every process.

Recording must cost microseconds on the request path, and the figures must cover every gunicorn
worker and the django-q2 cluster. So a record only adds one to a per-process count, keyed by
(operation, outcome, minute, histogram bucket), and observes the Prometheus histogram; a daemon
thread of each process adds those counts to the shared store (``timing_stores.py``) every
``TIMINGS_FLUSH_SECONDS``, sooner when they pile up, and once more at exit. The stats read the
store, so they lag by at most one flush interval. Nothing here ever raises into the caller: a
broken store loses timings, and says so once in the log.

With ``TIMINGS_FLUSH_SECONDS = 0`` (the test settings) no thread is started and counts wait for
``timings_flush()``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.db import connection

from convo.monitoring.histogram import bucket_of, histogram_merge, histogram_percentiles
from convo.monitoring.prometheus import prometheus_observe
from convo.monitoring.timing_stores import TimingStore, timing_store_default

logger = logging.getLogger(__name__)

#: The operations convo times (docs/operations.md, "Timings").
OPERATIONS = (
    "ingest_ack",
    "batch_insert",
    "embedding_call",
    "cache_lookup",
    "search",
    "context_build",
    "cluster_assignment",
    "answer_lookup",
)
#: Distinct keys a process holds before its flusher is woken early, and the most it keeps when
#: no flusher runs (further keys are dropped until the next flush).
_WAKE_KEYS = 2_000
_MAX_KEYS = 50_000

P = ParamSpec("P")
R = TypeVar("R")


class _Recorder:
    """The per-process counts and their flusher thread."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # A forked child must neither flush its parent's counts again nor think the parent's
        # thread (which did not survive the fork) is running.
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, bool, int, int], int] = {}
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.thread_wanted = True
        self.dropped = 0
        self.failures_logged = False
        self.pruned_minute = 0

    def add(self, operation: str, ok: bool, seconds: float) -> None:
        key = (operation, ok, int(time.time()) // 60, bucket_of(seconds))
        with self.lock:
            counts = self.counts
            size = len(counts)
            if size >= _MAX_KEYS and key not in counts:
                self.dropped += 1
                return
            counts[key] = counts.get(key, 0) + 1
        if self.thread is None and self.thread_wanted:
            self._start()
        elif size >= _WAKE_KEYS:
            self.wake.set()

    def _start(self) -> None:
        with self.lock:
            if self.thread is not None or not self.thread_wanted:
                return
            interval: float = settings.TIMINGS_FLUSH_SECONDS
            if interval <= 0:
                self.thread_wanted = False
                return
            self.thread = threading.Thread(target=self._run, args=(interval,), name="convo-timings-flush", daemon=True)
            self.thread.start()
        atexit.register(self.flush)

    def _run(self, interval: float) -> None:
        while self.thread_wanted:
            self.wake.wait(interval)
            self.wake.clear()
            self.flush()
            # This thread's own database connection: returned to the pool (or closed) between
            # flushes, so an idle process holds no connection for its timings.
            connection.close()

    def flush(self, store: TimingStore | None = None) -> int:
        """Add the counts held so far to ``store`` (the default store). Returns the timings
        flushed; on failure they are dropped and the failure is logged once per process."""
        with self.lock:
            counts, self.counts = self.counts, {}
            dropped, self.dropped = self.dropped, 0
        if dropped:
            logger.warning("%d timings were dropped: the flusher did not keep up", dropped)
        if not counts:
            return 0
        try:
            target = store or timing_store_default()
            target.add(counts=counts)
            minute = int(time.time()) // 60
            if minute != self.pruned_minute:
                self.pruned_minute = minute
                target.prune(before_minute=minute - max(settings.TIMINGS_WINDOWS_MINUTES) - 1)
        except Exception:
            if not self.failures_logged:
                self.failures_logged = True
                logger.exception("timings could not be stored; they are dropped (logged once per process)")
            return 0
        return sum(counts.values())


_recorder = _Recorder()


def timing_record(*, operation: str, seconds: float, ok: bool) -> None:
    """Record one run of ``operation`` that took ``seconds`` and succeeded (``ok``) or failed.
    Costs about a microsecond or two (``manage.py convo_benchmark_timings``); never raises."""
    try:
        _recorder.add(operation, ok, seconds)
        prometheus_observe(operation=operation, ok=ok, seconds=seconds)
    except Exception:
        if not _recorder.failures_logged:
            _recorder.failures_logged = True
            logger.exception("timing of %s not recorded (logged once per process)", operation)


class timed:  # used like a function: ``with timed("search"):``, ``@timed("search")``
    """Time a block or a function as ``operation``: failed when it raises (the exception goes on)."""

    __slots__ = ("operation", "started")

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.started = 0.0

    def __enter__(self) -> timed:
        self.started = time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        timing_record(operation=self.operation, seconds=time.perf_counter() - self.started, ok=kind is None)

    def __call__(self, function: Callable[P, R]) -> Callable[P, R]:
        operation = self.operation

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            ok = False
            try:
                result = function(*args, **kwargs)
                ok = True
                return result
            finally:
                timing_record(operation=operation, seconds=time.perf_counter() - started, ok=ok)

        return wrapper


def timings_flush(*, store: TimingStore | None = None) -> int:
    """Flush this process's counts now (tests, benchmarks, and before a process ends)."""
    return _recorder.flush(store)


def timings_discard() -> None:
    """Forget this process's unflushed counts (tests start from nothing)."""
    with _recorder.lock:
        _recorder.counts = {}


@dataclass(frozen=True)
class TimingStats:
    operation: str
    window_minutes: int
    outcome: str  # "ok" or "error"
    count: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def timing_stats(*, windows: Sequence[int] | None = None, store: TimingStore | None = None) -> list[TimingStats]:
    """p50/p95/p99 per operation, window (minutes, the current one included) and outcome, over
    every process's flushed timings. Every known operation is listed, with count 0 when idle."""
    wanted: list[int] = list(windows or settings.TIMINGS_WINDOWS_MINUTES)
    per_window = (store or timing_store_default()).read(now_minute=int(time.time()) // 60, windows=wanted)
    stats: list[TimingStats] = []
    for window, counts in zip(wanted, per_window, strict=True):
        operations = list(OPERATIONS) + sorted({op for op, _ in counts} - set(OPERATIONS))
        for operation in operations:
            for ok in (True, False):
                histogram = counts.get((operation, ok), {})
                p50, p95, p99 = histogram_percentiles(counts=histogram, quantiles=(0.5, 0.95, 0.99))
                stats.append(
                    TimingStats(
                        operation=operation,
                        window_minutes=window,
                        outcome="ok" if ok else "error",
                        count=sum(histogram.values()),
                        p50_ms=_ms(p50),
                        p95_ms=_ms(p95),
                        p99_ms=_ms(p99),
                    )
                )
    return stats


def timing_window_percentiles(
    *, window: int, quantile: float, store: TimingStore | None = None
) -> dict[str, tuple[float | None, int]]:
    """Per operation, one percentile (milliseconds) over both outcomes and its sample count, for
    the last ``window`` minutes: what an alert rule compares with its threshold (a provider that
    only times out must count too)."""
    (counts,) = (store or timing_store_default()).read(now_minute=int(time.time()) // 60, windows=[window])
    result: dict[str, tuple[float | None, int]] = {}
    for operation in {op for op, _ in counts} | set(OPERATIONS):
        merged = histogram_merge(counts.get((operation, ok), {}) for ok in (True, False))
        (value,) = histogram_percentiles(counts=merged, quantiles=(quantile,))
        result[operation] = (_ms(value), sum(merged.values()))
    return result
