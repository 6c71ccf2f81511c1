"""Waking the embedding worker after a commit.

Ingest calls ``embedding_kick_on_commit()``; the kick enqueues drain tasks at most once per
``EMBEDDING_KICK_INTERVAL_SECONDS`` (an atomic ``cache.add``), so a burst of requests costs one
enqueue, not one per request. A lost kick costs only latency: the reconcile schedule kicks too.
"""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

KICK_KEY = "convo:embedding:kick"


def embedding_kick(*, force: bool = False) -> bool:
    """Enqueue drain tasks unless another kick did within the interval. Returns True if it did."""
    from django_q.tasks import async_task

    interval: float = settings.EMBEDDING_KICK_INTERVAL_SECONDS
    if not force and not cache.add(KICK_KEY, 1, timeout=max(interval, 0.001)):
        return False
    for _ in range(max(1, settings.EMBEDDING_CONCURRENT_BATCHES)):
        async_task("conversations.tasks.embed_pending", group="embedding", q_options={"ack_failure": True})
    return True


def embedding_kick_on_commit() -> None:
    # robust: the rows are committed and acknowledged; a failed kick must only be logged.
    transaction.on_commit(embedding_kick, robust=True)
