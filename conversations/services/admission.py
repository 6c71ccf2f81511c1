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


def pending_work_count() -> int:
    """Conversations plus messages waiting for embedding. Both counts read only the small partial
    indexes on pending rows, so the cost follows the backlog, not the table size."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT count(*) FROM {Conversation._meta.db_table} WHERE embedding_state = 'pending')"
            f" + (SELECT count(*) FROM {Message._meta.db_table} WHERE embedding_state = 'pending')"
        )
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
    now = time.monotonic()
    if now - _counted_at >= ttl:
        with _lock:
            if now - _counted_at >= ttl:
                _cached_count = pending_work_count()
                _counted_at = time.monotonic()
    limit: int = settings.CONVO_MAX_PENDING_ITEMS
    if _cached_count >= limit:
        raise Overloaded(
            f"{_cached_count} items are waiting to be embedded (limit {limit}); retry later.",
            retry_after=settings.CONVO_BACKPRESSURE_RETRY_AFTER_SECONDS,
        )


def admission_cache_clear() -> None:
    """Forget the cached count (tests, and after bulk deletes)."""
    global _counted_at
    with _lock:
        _counted_at = float("-inf")
