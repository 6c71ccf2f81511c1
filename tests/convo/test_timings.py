"""Timings: the fixed histogram, recording, the stores, and the merge across processes."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from convo.monitoring import timings
from convo.monitoring.histogram import (
    MAX_BUCKET,
    RELATIVE_ERROR,
    bucket_of,
    bucket_seconds,
    histogram_percentiles,
)
from convo.monitoring.models import TimingBucket
from convo.monitoring.timing_stores import DatabaseTimingStore, RedisTimingStore, timing_store_default
from convo.monitoring.timings import (
    TimingStats,
    timed,
    timing_record,
    timing_stats,
    timing_window_percentiles,
    timings_discard,
    timings_flush,
)
from tests.convo.monitoring_support import run_child


@pytest.fixture(autouse=True)
def _no_leftover_timings() -> Iterator[None]:
    timings_discard()
    yield
    timings_discard()


def _row(stats: list[TimingStats], operation: str, window: int, outcome: str = "ok") -> TimingStats:
    (row,) = [s for s in stats if s.operation == operation and s.window_minutes == window and s.outcome == outcome]
    return row


@pytest.mark.parametrize("seconds", [1e-6, 3.7e-5, 0.001, 0.0199, 0.5, 7.3, 1234.5])
def test_a_bucket_stands_for_its_durations_within_the_stated_error(seconds):
    reported = bucket_seconds(bucket_of(seconds))
    assert abs(reported - seconds) / seconds <= RELATIVE_ERROR + 1e-12


def test_tiny_negative_nan_and_huge_durations_land_in_the_end_buckets():
    assert bucket_of(0.0) == bucket_of(-1.0) == bucket_of(math.nan) == 0
    assert bucket_of(1e9) == MAX_BUCKET
    assert bucket_seconds(0) == 0.0


def test_percentiles_of_merged_counts_follow_the_nearest_rank():
    counts: dict[int, int] = {}
    for ms in range(1, 101):  # 1 .. 100 ms, once each
        index = bucket_of(ms / 1000)
        counts[index] = counts.get(index, 0) + 1
    p50, p95, p99 = histogram_percentiles(counts=counts, quantiles=(0.5, 0.95, 0.99))
    for value, expected in ((p50, 0.050), (p95, 0.095), (p99, 0.099)):
        assert value is not None
        assert abs(value - expected) / expected <= RELATIVE_ERROR + 1e-12
    assert histogram_percentiles(counts={}, quantiles=(0.5,)) == [None]


@pytest.mark.django_db
def test_recorded_timings_are_stored_and_read_per_operation_window_and_outcome():
    for ms in range(1, 101):
        timing_record(operation="search", seconds=ms / 1000, ok=True)
    for _ in range(3):
        timing_record(operation="search", seconds=2.0, ok=False)
    assert timings_flush() == 103
    assert timings_flush() == 0  # flushed counts are gone from the process

    stats = timing_stats(windows=[5, 60])
    for window in (5, 60):
        ok = _row(stats, "search", window)
        assert ok.count == 100
        assert ok.p95_ms is not None
        assert abs(ok.p95_ms - 95) / 95 <= RELATIVE_ERROR + 1e-9
        error = _row(stats, "search", window, "error")
        assert error.count == 3
        assert error.p50_ms is not None
        assert abs(error.p50_ms - 2000) / 2000 <= RELATIVE_ERROR + 1e-9
    idle = _row(stats, "answer_lookup", 5)
    assert (idle.count, idle.p50_ms) == (0, None)
    # A second flush adds to the same rows instead of repeating them.
    timing_record(operation="search", seconds=0.05, ok=True)
    timings_flush()
    assert _row(timing_stats(windows=[5]), "search", 5).count == 101


@pytest.mark.django_db
def test_windows_only_sum_their_own_minutes():
    now = int(time.time()) // 60
    DatabaseTimingStore().add(counts={("search", True, now - 10, bucket_of(0.5)): 7, ("search", True, now, 40): 1})
    stats = timing_stats(windows=[5, 60])
    assert _row(stats, "search", 5).count == 1
    assert _row(stats, "search", 60).count == 8


@pytest.mark.django_db
def test_old_minutes_are_pruned_on_flush():
    now = int(time.time()) // 60
    DatabaseTimingStore().add(counts={("search", True, now - 500, 10): 1})
    timing_record(operation="search", seconds=0.01, ok=True)
    timings._recorder.pruned_minute = 0
    timings_flush()
    assert not TimingBucket.objects.filter(minute=now - 500).exists()
    assert TimingBucket.objects.filter(minute__gte=now - 1).exists()


@pytest.mark.django_db
def test_timed_records_success_and_failure_and_lets_the_exception_through():
    @timed("cluster_assignment")
    def assign(fail: bool) -> str:
        if fail:
            raise RuntimeError("boom")
        return "done"

    assert assign(False) == "done"
    with pytest.raises(RuntimeError, match="boom"):
        assign(True)
    with pytest.raises(ValueError, match="inner"), timed("cache_lookup"):
        raise ValueError("inner")
    with timed("cache_lookup"):
        pass
    timings_flush()
    stats = timing_stats(windows=[5])
    assert (_row(stats, "cluster_assignment", 5).count, _row(stats, "cluster_assignment", 5, "error").count) == (1, 1)
    assert (_row(stats, "cache_lookup", 5).count, _row(stats, "cache_lookup", 5, "error").count) == (1, 1)


class BrokenStore:
    name = "broken"

    def __init__(self) -> None:
        self.calls = 0

    def add(self, *, counts: Any) -> None:
        self.calls += 1
        raise ConnectionError("store is down")

    def read(self, *, now_minute: int, windows: Any) -> list[Any]:
        raise ConnectionError("store is down")

    def prune(self, *, before_minute: int) -> None:
        raise ConnectionError("store is down")


def test_a_broken_store_loses_timings_and_logs_once(caplog):
    store = BrokenStore()
    timings._recorder.failures_logged = False
    with caplog.at_level(logging.ERROR, logger="convo.monitoring.timings"):
        for _ in range(3):
            timing_record(operation="search", seconds=0.01, ok=True)
            assert timings_flush(store=store) == 0
    assert store.calls == 3
    assert len([r for r in caplog.records if "could not be stored" in r.getMessage()]) == 1
    assert timings_flush(store=store) == 0  # what failed was dropped, not kept to grow without bound


def test_recording_a_nonsense_duration_never_raises():
    timing_record(operation="search", seconds=float("nan"), ok=True)
    timing_record(operation="search", seconds=-3.0, ok=False)


@pytest.mark.django_db(transaction=True)
def test_timings_of_another_process_merge_with_this_ones_in_the_database():
    """The child records and exits: its flusher thread's exit flush puts its timings in the
    shared table, where this process's flush adds to them."""
    run_child(
        "from convo.monitoring.timings import timing_record\n"
        "for ms in range(1, 201):\n"
        "    timing_record(operation='batch_insert', seconds=ms / 1000, ok=True)\n"
        "timing_record(operation='batch_insert', seconds=0.3, ok=False)\n",
        TIMINGS_FLUSH_SECONDS="30",
        TIMINGS_STORE="database",
    )
    for _ in range(100):
        timing_record(operation="batch_insert", seconds=0.001, ok=True)
    timings_flush()
    stats = timing_stats(windows=[5])
    assert _row(stats, "batch_insert", 5).count == 300
    assert _row(stats, "batch_insert", 5, "error").count == 1
    # 200 of the 300 are the child's 1..200 ms: the merged p95 is its 185 ms.
    p95 = _row(stats, "batch_insert", 5).p95_ms
    assert p95 is not None
    assert abs(p95 - 185) / 185 <= RELATIVE_ERROR + 1e-9


@pytest.mark.django_db(transaction=True)
def test_the_flusher_thread_stores_timings_on_its_own_connection(settings):
    settings.TIMINGS_FLUSH_SECONDS = 0.05
    recorder = timings._Recorder()
    try:
        for _ in range(5):
            recorder.add("context_build", True, 0.002)
        assert recorder.thread is not None
        assert recorder.thread is not threading.current_thread()
        for _ in range(200):  # waits for the thread, bounded; asserts nothing about speed
            if TimingBucket.objects.filter(operation="context_build").exists():
                break
            time.sleep(0.05)
        assert _row(timing_stats(windows=[5]), "context_build", 5).count == 5
    finally:
        recorder.thread_wanted = False
        recorder.wake.set()
        if recorder.thread is not None:
            recorder.thread.join(10)
        connection.close()


@pytest.fixture
def redis_store(redis_url: str, settings: Any) -> Iterator[RedisTimingStore]:
    prefix = f"convo-tests:timings:{uuid.uuid4().hex}"
    settings.TIMINGS_STORE = "redis"
    settings.REDIS_URL = redis_url
    settings.TIMINGS_REDIS_PREFIX = prefix
    timing_store_default.cache_clear()
    store = timing_store_default()
    assert isinstance(store, RedisTimingStore)
    yield store
    keys = list(store.client.scan_iter(f"{prefix}:*"))
    if keys:
        store.client.delete(*keys)
    timing_store_default.cache_clear()


def test_timings_of_another_process_merge_with_this_ones_in_redis(redis_store, redis_url):
    run_child(
        "from convo.monitoring.timings import timing_record, timings_flush\n"
        "for _ in range(40):\n"
        "    timing_record(operation='embedding_call', seconds=0.8, ok=True)\n"
        "timings_flush()\n",
        TIMINGS_STORE="redis",
        REDIS_URL=redis_url,
        TIMINGS_REDIS_PREFIX=redis_store.prefix,
    )
    for _ in range(10):
        timing_record(operation="embedding_call", seconds=0.01, ok=True)
    timings_flush()
    stats = timing_stats(windows=[5, 60])
    assert _row(stats, "embedding_call", 5).count == 50
    p95 = _row(stats, "embedding_call", 60).p95_ms
    assert p95 is not None
    assert abs(p95 - 800) / 800 <= RELATIVE_ERROR + 1e-9
    value, samples = timing_window_percentiles(window=5, quantile=0.5)["embedding_call"]
    assert samples == 50
    assert value is not None
    assert abs(value - 800) / 800 <= RELATIVE_ERROR + 1e-9
    ttl = redis_store.client.ttl(f"{redis_store.prefix}:{int(time.time()) // 60}")
    assert 0 < ttl <= (60 + 2) * 60  # the minute expires after the longest window
