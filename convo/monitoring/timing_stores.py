"""Where the timings of every process meet: Redis when configured, else the database.

Both keep per-minute counts of the fixed histogram buckets (``convo/monitoring/histogram.py``)
for each (operation, outcome): a flush adds counts, a read sums the minutes of a window. Adding
counts is commutative, so any number of processes flush in any order without coordination, and a
window's percentile comes from its merged counts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Protocol

from django.conf import settings
from django.db import connection, transaction

logger = logging.getLogger(__name__)

#: (operation, ok, minute since the epoch, bucket) -> count
Counts = Mapping[tuple[str, bool, int, int], int]
#: (operation, ok) -> {bucket: count}, one per window asked for
WindowCounts = dict[tuple[str, bool], dict[int, int]]


class TimingStore(Protocol):
    """Shared per-minute histogram counts. ``add`` may raise (the caller logs and drops)."""

    name: str

    def add(self, *, counts: Counts) -> None: ...

    def read(self, *, now_minute: int, windows: Sequence[int]) -> list[WindowCounts]:
        """Counts of the last ``window`` minutes (the current one included), one per window."""
        ...

    def prune(self, *, before_minute: int) -> None: ...


class DatabaseTimingStore:
    """A row per (minute, operation, outcome, bucket), upserted in one statement per flush."""

    name = "database"

    def add(self, *, counts: Counts) -> None:
        from convo.monitoring.models import TimingBucket

        if not counts:
            return
        # Sorted, so two processes flushing at once lock rows in the same order (no deadlock).
        keys = sorted(counts)
        table = TimingBucket._meta.db_table
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (minute, operation, ok, bucket, count) "
                "SELECT * FROM unnest(%s::integer[], %s::text[], %s::boolean[], %s::smallint[], %s::bigint[]) "
                f"ON CONFLICT (minute, operation, ok, bucket) DO UPDATE SET count = {table}.count + EXCLUDED.count",
                [
                    [key[2] for key in keys],
                    [key[0] for key in keys],
                    [key[1] for key in keys],
                    [key[3] for key in keys],
                    [counts[key] for key in keys],
                ],
            )

    def read(self, *, now_minute: int, windows: Sequence[int]) -> list[WindowCounts]:
        from convo.monitoring.models import TimingBucket

        if not windows:
            return []
        sums = ", ".join("sum(count) FILTER (WHERE minute > %s)" for _ in windows)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT operation, ok, bucket, {sums} FROM {TimingBucket._meta.db_table} "
                "WHERE minute > %s GROUP BY operation, ok, bucket",
                [*(now_minute - window for window in windows), now_minute - max(windows)],
            )
            rows = cursor.fetchall()
        results: list[WindowCounts] = [{} for _ in windows]
        for operation, ok, bucket, *per_window in rows:
            for result, count in zip(results, per_window, strict=True):
                if count:
                    result.setdefault((operation, ok), {})[bucket] = int(count)
        return results

    def prune(self, *, before_minute: int) -> None:
        from convo.monitoring.models import TimingBucket

        TimingBucket.objects.filter(minute__lt=before_minute).delete()


class RedisTimingStore:
    """A hash per minute (``<prefix>:<minute>``), field ``<operation>|<ok>|<bucket>``, incremented
    with HINCRBY in one pipeline per flush and expiring after the longest window."""

    name = "redis"

    def __init__(self, *, url: str, prefix: str, retention_minutes: int) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.prefix = prefix
        self.ttl_seconds = (retention_minutes + 2) * 60

    def add(self, *, counts: Counts) -> None:
        if not counts:
            return
        pipe = self.client.pipeline(transaction=False)
        minutes = set()
        for (operation, ok, minute, bucket), count in counts.items():
            pipe.hincrby(f"{self.prefix}:{minute}", f"{operation}|{int(ok)}|{bucket}", count)
            minutes.add(minute)
        for minute in minutes:
            pipe.expire(f"{self.prefix}:{minute}", self.ttl_seconds)
        pipe.execute()

    def read(self, *, now_minute: int, windows: Sequence[int]) -> list[WindowCounts]:
        if not windows:
            return []
        minutes = list(range(now_minute - max(windows) + 1, now_minute + 1))
        pipe = self.client.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(f"{self.prefix}:{minute}")
        hashes = pipe.execute()
        results: list[WindowCounts] = [{} for _ in windows]
        for minute, fields in zip(minutes, hashes, strict=True):
            for field, raw in fields.items():
                operation, ok, bucket = field.decode().rsplit("|", 2)
                key = (operation, ok == "1")
                for window, result in zip(windows, results, strict=True):
                    if minute > now_minute - window:
                        histogram = result.setdefault(key, {})
                        histogram[int(bucket)] = histogram.get(int(bucket), 0) + int(raw)
        return results

    def prune(self, *, before_minute: int) -> None:
        """Nothing to do: every minute's hash expires on its own."""


@lru_cache(maxsize=1)
def timing_store_default() -> TimingStore:
    """The store chosen by ``TIMINGS_STORE`` (``auto``: Redis with ``REDIS_URL``, else the
    database). Cached per process; tests that change the settings call ``cache_clear()``."""
    choice: str = settings.TIMINGS_STORE
    url: str = settings.REDIS_URL
    if choice == "redis" or (choice == "auto" and url):
        return RedisTimingStore(
            url=url, prefix=settings.TIMINGS_REDIS_PREFIX, retention_minutes=max(settings.TIMINGS_WINDOWS_MINUTES)
        )
    return DatabaseTimingStore()
