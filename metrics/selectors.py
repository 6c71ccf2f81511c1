"""What the dashboard charts, read from the metric views and small indexed tables only.

No read here touches the message, conversation or feedback tables: those grow without bound, and
the views already hold their aggregates (refreshed on a schedule). The other reads are bounded by
construction: the embedding-cache stats have a row per model and day, the largest clusters come
from the (tenant, size) index with a LIMIT, and the timings store keeps an hour of histograms.

``tenant_id=None`` means every tenant (the dashboard is staff-only). Days and hours are UTC.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from clustering.models import Cluster
from conversations.models import EmbeddingCacheStats
from metrics.matviews import CONVERSATION_METRICS, PERFORMANCE_STATS
from metrics.services import metric_view_is_populated

EMBEDDING_STATES = ("pending", "processing", "done", "failed", "skipped")
FEEDBACK_COLUMNS = (
    ("thumbs up", "feedback_thumbs_up"),
    ("thumbs down", "feedback_thumbs_down"),
    ("1", "feedback_rating_1"),
    ("2", "feedback_rating_2"),
    ("3", "feedback_rating_3"),
    ("4", "feedback_rating_4"),
    ("5", "feedback_rating_5"),
)


@dataclass(frozen=True)
class Daily:
    """Values per UTC day, one list per series, aligned with ``days`` (missing days are 0/None)."""

    days: list[dt.date]
    series: dict[str, list[float | None]]


@dataclass(frozen=True)
class TimeSeries:
    """Values per point in time (hours, or minutes for the timings), aligned with ``times``."""

    times: list[dt.datetime]
    series: dict[str, list[float | None]]


@dataclass(frozen=True)
class Ranked:
    labels: list[str]
    values: list[float]


def _rows(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def _tenant_clause(tenant_id: int | None, params: list[Any]) -> str:
    if tenant_id is None:
        return ""
    params.append(tenant_id)
    return " AND tenant_id = %s"


def _day_range(days: int) -> list[dt.date]:
    today = timezone.now().date()
    return [today - dt.timedelta(days=offset) for offset in range(days - 1, -1, -1)]


def metric_views_ready() -> bool:
    """Both views have been computed once (before that, reading them is an error)."""
    return metric_view_is_populated(view=CONVERSATION_METRICS) and metric_view_is_populated(view=PERFORMANCE_STATS)


def ingest_per_day(*, days: int, tenant_id: int | None) -> Daily:
    """Messages stored per day, one series per channel (channels with none in the window left out)."""
    axis = _day_range(days)
    params: list[Any] = [axis[0]]
    where = _tenant_clause(tenant_id, params)
    rows = _rows(
        f"SELECT day, channel, sum(messages)::bigint FROM {CONVERSATION_METRICS} WHERE day >= %s{where} "
        "GROUP BY day, channel HAVING sum(messages) > 0",
        params,
    )
    position = {day: index for index, day in enumerate(axis)}
    series: dict[str, list[float | None]] = {}
    for day, channel, messages in rows:
        series.setdefault(channel, [0] * len(axis))[position[day]] = float(messages)
    return Daily(days=axis, series=dict(sorted(series.items())))


def embedding_lag_per_day(*, days: int, tenant_id: int | None) -> Daily:
    """p50 and p95 seconds from a message's arrival to its vector, per day of arrival. Across
    tenants and channels the view's percentiles cannot be merged exactly: the worst one is shown
    (an upper bound; exact for one tenant on one channel)."""
    axis = _day_range(days)
    params: list[Any] = [axis[0]]
    where = _tenant_clause(tenant_id, params)
    rows = _rows(
        f"SELECT day, max(embedding_lag_p50_seconds), max(embedding_lag_p95_seconds) FROM {CONVERSATION_METRICS} "
        f"WHERE day >= %s{where} GROUP BY day",
        params,
    )
    position = {day: index for index, day in enumerate(axis)}
    p50: list[float | None] = [None] * len(axis)
    p95: list[float | None] = [None] * len(axis)
    for day, day_p50, day_p95 in rows:
        p50[position[day]], p95[position[day]] = day_p50, day_p95
    return Daily(days=axis, series={"p50": p50, "p95": p95})


def embedding_states(*, tenant_id: int | None) -> dict[str, int]:
    """Messages in each embedding state, over all time (a backlog from any day counts)."""
    params: list[Any] = []
    where = _tenant_clause(tenant_id, params)
    sums = ", ".join(f"coalesce(sum(messages_{state}), 0)::bigint" for state in EMBEDDING_STATES)
    (row,) = _rows(f"SELECT {sums} FROM {CONVERSATION_METRICS} WHERE true{where}", params)
    return dict(zip(EMBEDDING_STATES, (int(value) for value in row), strict=True))


def feedback_by_rating(*, days: int, tenant_id: int | None) -> dict[str, int]:
    """Feedback received in the window: thumbs up and down, and ratings 1 to 5."""
    params: list[Any] = [_day_range(days)[0]]
    where = _tenant_clause(tenant_id, params)
    sums = ", ".join(f"coalesce(sum({column}), 0)::bigint" for _, column in FEEDBACK_COLUMNS)
    (row,) = _rows(f"SELECT {sums} FROM {CONVERSATION_METRICS} WHERE day >= %s{where}", params)
    return {label: int(value) for (label, _), value in zip(FEEDBACK_COLUMNS, row, strict=True)}


def performance_per_hour(*, tenant_id: int | None) -> TimeSeries:
    """The last 7 days by hour: messages, ingest batches and their mean and largest size, and the
    embedding latency p95 (worst over tenants, as for the daily lag)."""
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    axis = [now - dt.timedelta(hours=offset) for offset in range(7 * 24 - 1, -1, -1)]
    params: list[Any] = [axis[0]]
    where = _tenant_clause(tenant_id, params)
    rows = _rows(
        "SELECT hour, sum(messages)::bigint, sum(ingest_batches)::bigint, max(batch_size_max), "
        f"max(embedding_latency_p95_seconds) FROM {PERFORMANCE_STATS} WHERE hour >= %s{where} GROUP BY hour",
        params,
    )
    position = {hour: index for index, hour in enumerate(axis)}
    names = ("messages", "batches", "batch size (mean)", "batch size (max)", "embedding p95")
    series: dict[str, list[float | None]] = {name: [None] * len(axis) for name in names}
    for hour, messages, batches, batch_max, latency_p95 in rows:
        index = position.get(hour)
        if index is None:  # the view was refreshed before the hour turned; its oldest hour is gone
            continue
        series["messages"][index] = float(messages)
        series["batches"][index] = float(batches)
        series["batch size (mean)"][index] = float(messages) / batches if batches else None
        series["batch size (max)"][index] = None if batch_max is None else float(batch_max)
        series["embedding p95"][index] = latency_p95
    return TimeSeries(times=axis, series=series)


def cache_hit_rate_per_day(*, days: int) -> Daily:
    """Share of embedding-cache lookups answered by the hot or the durable cache, per day, over
    every model (the cache is shared by tenants, so this chart has no tenant filter)."""
    axis = _day_range(days)
    rows = (
        EmbeddingCacheStats.objects.filter(day__gte=axis[0])
        .values("day")
        .annotate(hot=Sum("hot_hits"), durable=Sum("durable_hits"), misses=Sum("misses"))
    )
    position = {day: index for index, day in enumerate(axis)}
    rate: list[float | None] = [None] * len(axis)
    for row in rows:
        lookups = row["hot"] + row["durable"] + row["misses"]
        if lookups and row["day"] in position:
            rate[position[row["day"]]] = 100.0 * (row["hot"] + row["durable"]) / lookups
    return Daily(days=axis, series={"hit rate": rate})


_LARGEST_ACROSS_TENANTS = """
SELECT c.id, t.name, c.label, c.representative_text, c.size
FROM conversations_tenant t
CROSS JOIN LATERAL (
    SELECT id, label, representative_text, size FROM clustering_cluster
    WHERE tenant_id = t.id ORDER BY size DESC, id LIMIT %s
) c
ORDER BY c.size DESC, c.id
LIMIT %s
"""


def clusters_largest(*, tenant_id: int | None, limit: int = 10) -> Ranked:
    """The ``limit`` largest clusters, each read through the (tenant, size) index: across tenants
    as the top ``limit`` of each tenant's top ``limit`` (never a scan of all clusters)."""
    if tenant_id is not None:
        clusters = Cluster.objects.filter(tenant_id=tenant_id).order_by("-size", "id")
        rows = [(str(c), c.size) for c in clusters.only("label", "representative_text", "size", "id")[:limit]]
    else:
        rows = [
            (f"{tenant}: {label or text[:80] or cluster_id}", size)
            for cluster_id, tenant, label, text, size in _rows(_LARGEST_ACROSS_TENANTS, [limit, limit])
        ]
    rows = [(label, size) for label, size in rows if size > 0]
    return Ranked(labels=[label for label, _ in rows], values=[float(size) for _, size in rows])


def timings_p95_per_operation(*, step_minutes: int = 5, points: int = 12) -> TimeSeries:
    """p95 per operation (milliseconds, both outcomes) in each ``step_minutes`` slice of the
    timings store's retention (an hour by default), through ``convo.monitoring``'s store and
    histograms: the same figures as the stats API and /metrics, sliced over time. One read of
    nested windows (the last 5, 10, ... minutes); a slice is the difference of two of them.
    Operations with no runs in the whole span are left out."""
    from convo.monitoring.histogram import histogram_merge, histogram_percentiles
    from convo.monitoring.timing_stores import timing_store_default

    windows = [step_minutes * (offset + 1) for offset in range(points)]
    nested = timing_store_default().read(now_minute=int(time.time()) // 60, windows=windows)
    series: dict[str, list[float | None]] = {}
    for offset, counts in enumerate(nested):
        newer = nested[offset - 1] if offset else {}
        index = points - 1 - offset
        for operation in {operation for operation, _ in counts}:
            merged = histogram_merge(counts.get((operation, ok), {}) for ok in (True, False))
            seen = histogram_merge(newer.get((operation, ok), {}) for ok in (True, False))
            sliced = {bucket: count - seen.get(bucket, 0) for bucket, count in merged.items()}
            (p95,) = histogram_percentiles(counts={b: c for b, c in sliced.items() if c > 0}, quantiles=(0.95,))
            if p95 is not None:
                series.setdefault(operation, [None] * points)[index] = p95 * 1000
    end = timezone.now().replace(second=0, microsecond=0)
    times = [end - dt.timedelta(minutes=step_minutes * offset) for offset in range(points - 1, -1, -1)]
    return TimeSeries(times=times, series=dict(sorted(series.items())))
