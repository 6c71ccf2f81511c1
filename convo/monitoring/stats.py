"""What ``GET /api/v1/ops/stats`` reports besides the timings: the embedding queue (seed 000's
``getStorageStats``), the embedding cache's hit rate, this process's connection pool, and the
size of convo's tables and indexes (seed 001's verification queries). Reads only; every figure is
across all tenants, which is why the endpoint is for staff (docs/operations.md, "Stats API")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.apps import apps
from django.db import DatabaseError, connection, transaction
from django.db.models import Sum
from django.utils import timezone

from conversations.models import EmbeddingCacheStats, EmbeddingState
from conversations.services.embedding_kinds import embedding_kinds

#: Apps whose tables the storage figures cover.
STORAGE_APPS = ("conversations", "clustering", "feedback", "convo")
#: Failed items have no partial index: their count is a scan, cut off after this long (then null).
FAILED_COUNT_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class QueueStats:
    kind: str
    pending: int
    processing: int
    failed: int | None  # None: not counted (not asked for, or the count ran out of time)
    oldest_pending_seconds: float | None


def queue_stats(*, include_failed: bool = True) -> list[QueueStats]:
    """Per embeddable kind (messages, conversations, knowledge entries). Pending and processing
    counts and the oldest pending age read the partial indexes on those states (one statement);
    the states are written into the SQL, constants, so the planner can use those indexes."""
    kinds = embedding_kinds()
    pending, processing = EmbeddingState.PENDING.value, EmbeddingState.PROCESSING.value
    parts = [
        f"SELECT (SELECT count(*) FROM {t} WHERE embedding_state = '{pending}'),"
        f" (SELECT count(*) FROM {t} WHERE embedding_state = '{processing}'),"
        f" EXTRACT(EPOCH FROM now() - (SELECT min(created_at) FROM {t} WHERE embedding_state = '{pending}'))"
        for t in (kind.items._meta.db_table for kind in kinds)
    ]
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(f"({part})" for part in parts))
        rows = cursor.fetchall()
    failed = _failed_counts([kind.items._meta.db_table for kind in kinds]) if include_failed else None
    return [
        QueueStats(
            kind=kind.name,
            pending=int(row[0]),
            processing=int(row[1]),
            failed=None if failed is None else failed[index],
            oldest_pending_seconds=None if row[2] is None else round(max(0.0, float(row[2])), 3),
        )
        for index, (kind, row) in enumerate(zip(kinds, rows, strict=True))
    ]


def _failed_counts(tables: list[str]) -> list[int] | None:
    failed = EmbeddingState.FAILED.value
    sql = ", ".join(f"(SELECT count(*) FROM {t} WHERE embedding_state = '{failed}')" for t in tables)
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL statement_timeout = {FAILED_COUNT_TIMEOUT_MS}")
            cursor.execute(f"SELECT {sql}")
            row = cursor.fetchone()
    except DatabaseError:
        return None
    return None if row is None else [int(value) for value in row]


@dataclass(frozen=True)
class CacheStats:
    days: int
    hot_hits: int
    durable_hits: int
    misses: int
    hit_rate: float | None  # None: no lookups


def cache_stats(*, days: int) -> CacheStats:
    """The worker's embedding-cache lookups over the last ``days`` days (UTC, today included),
    all models: kept per model and day in ``EmbeddingCacheStats`` by ``embed_texts_cached``
    (searches' query texts are not counted there)."""
    since = timezone.now().date() - timedelta(days=days - 1)
    sums = EmbeddingCacheStats.objects.filter(day__gte=since).aggregate(
        hot=Sum("hot_hits", default=0), durable=Sum("durable_hits", default=0), misses=Sum("misses", default=0)
    )
    hits = sums["hot"] + sums["durable"]
    total = hits + sums["misses"]
    return CacheStats(
        days=days,
        hot_hits=sums["hot"],
        durable_hits=sums["durable"],
        misses=sums["misses"],
        hit_rate=None if total == 0 else round(hits / total, 4),
    )


@dataclass(frozen=True)
class PoolStats:
    min_size: int
    max_size: int
    size: int
    idle: int
    waiting: int


def pool_stats() -> PoolStats | None:
    """The answering process's psycopg pool (each process has its own), or None without one."""
    pool = getattr(connection, "pool", None)
    if pool is None:
        return None
    stats = pool.get_stats()
    return PoolStats(
        min_size=stats.get("pool_min", 0),
        max_size=stats.get("pool_max", 0),
        size=stats.get("pool_size", 0),
        idle=stats.get("pool_available", 0),
        waiting=stats.get("requests_waiting", 0),
    )


@dataclass(frozen=True)
class TableSize:
    table: str
    total_bytes: int
    table_bytes: int
    indexes_bytes: int
    rows_estimate: int


@dataclass(frozen=True)
class IndexUsage:
    index: str
    table: str
    bytes: int
    scans: int
    tuples_read: int


def _tables() -> list[str]:
    return sorted({model._meta.db_table for label in STORAGE_APPS for model in apps.get_app_config(label).get_models()})


def storage_stats(*, index_limit: int = 20) -> tuple[list[TableSize], list[IndexUsage]]:
    """convo's tables by total size (``pg_total_relation_size``, ``pg_indexes_size``, the
    planner's row estimate) and its largest indexes with their use (``pg_stat_user_indexes``)."""
    tables = _tables()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid), pg_indexes_size(c.oid),"
            " greatest(c.reltuples, 0)::bigint"
            " FROM pg_class c WHERE c.relkind IN ('r', 'p') AND c.relname = ANY(%s) AND pg_table_is_visible(c.oid)"
            " ORDER BY 2 DESC, 1",
            [tables],
        )
        sizes = [TableSize(*row) for row in cursor.fetchall()]
        cursor.execute(
            "SELECT indexrelname, relname, pg_relation_size(indexrelid), idx_scan, idx_tup_read"
            " FROM pg_stat_user_indexes WHERE relname = ANY(%s) ORDER BY 3 DESC, 1 LIMIT %s",
            [tables, index_limit],
        )
        indexes = [IndexUsage(*row) for row in cursor.fetchall()]
    return sizes, indexes
