"""Backpressure for ingest. The pending rows are the queue; when too many wait for the embedding
worker, ingest answers 503 with Retry-After instead of letting the backlog grow without bound."""

from __future__ import annotations

import threading
import time

from django.conf import settings
from django.db import connection

from conversations.models import Conversation, Message
from convo.errors import Overloaded

_lock = threading.Lock()
_cached_count = 0
_counted_at = float("-inf")


def pending_work_count(*, at_most: int | None = None) -> int:
    """Conversations plus messages waiting for embedding. Both counts read only the small partial
    indexes on pending rows, so the cost follows the backlog, not the table size.

    With ``at_most``, each table's count stops there, so the cost stops growing with the backlog
    too: the admission check only asks whether the bound is reached, and uncapped its cost grew with
    the very backlog it guards against (tens of milliseconds at a few hundred thousand pending
    rows: docs/benchmarks.md). The result is exact below the bound and at least ``at_most`` at or
    above it."""
    # LIMIT NULL is no limit: one statement serves both.
    counts = " + ".join(
        f"(SELECT count(*) FROM (SELECT 1 FROM {table} WHERE embedding_state = 'pending' LIMIT %s) AS pending)"
        for table in (Conversation._meta.db_table, Message._meta.db_table)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {counts}", [at_most, at_most])
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def ingest_admission_check() -> None:
    """Raise ``Overloaded`` when the backlog has reached ``CONVO_MAX_PENDING_ITEMS``.

    The count is taken at most once per ``CONVO_PENDING_COUNT_TTL_SECONDS`` per process, so the
    check costs nothing on the hot path; a burst can overshoot the bound by what arrives within
    that window, which is the price of not counting on every request.
    """
    global _cached_count, _counted_at
    ttl: float = settings.CONVO_PENDING_COUNT_TTL_SECONDS
    limit: int = settings.CONVO_MAX_PENDING_ITEMS
    now = time.monotonic()
    if now - _counted_at >= ttl:
        with _lock:
            if now - _counted_at >= ttl:
                _cached_count = pending_work_count(at_most=max(limit, 0))
                _counted_at = time.monotonic()
    if _cached_count >= limit:
        raise Overloaded(
            f"At least {limit} items are waiting to be embedded (the limit); retry later.",
            retry_after=settings.CONVO_BACKPRESSURE_RETRY_AFTER_SECONDS,
        )


def admission_cache_clear() -> None:
    """Forget the cached count (tests, and after bulk deletes)."""
    global _counted_at
    with _lock:
        _counted_at = float("-inf")
