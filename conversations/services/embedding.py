"""The embedding worker: claim pending rows, embed them in batches, store their vectors.

The pending rows are the queue (ARCHITECTURE.md, decision 1). A batch is claimed in a short
transaction with ``FOR UPDATE SKIP LOCKED`` (so concurrent workers never take the same rows),
which marks the rows ``processing`` with a claim time and counts the attempt. The provider is
called outside any transaction. The vectors and the new states are then written together; the
finishing UPDATE matches the claim time, so a row whose text changed meanwhile (and was put back
to ``pending``) is not marked done with a stale vector. A claim older than the lease is handed
back by ``embedding_reconcile``: a worker killed at any moment loses nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction

from conversations.embeddings.base import Embedder, EmbeddingUnavailable
from conversations.models import (
    Conversation,
    ConversationEmbedding,
    EmbeddingSpace,
    Message,
    MessageEmbedding,
)
from conversations.services.embedding_cache import embed_texts_cached, text_normalize
from conversations.services.embedding_spaces import embedding_space_for

logger = logging.getLogger(__name__)

Kind = Literal["message", "conversation"]
KINDS: tuple[Kind, ...] = ("message", "conversation")

_SOURCES: dict[
    Kind, tuple[type[Message] | type[Conversation], type[MessageEmbedding] | type[ConversationEmbedding], str]
] = {
    "message": (Message, MessageEmbedding, "t.text"),
    # A conversation is embedded by its summary, or by its transcript when it has no summary.
    "conversation": (Conversation, ConversationEmbedding, "COALESCE(NULLIF(t.summary, ''), t.transcript)"),
}


@dataclass(frozen=True)
class ClaimedItem:
    id: UUID
    tenant_id: int
    text: str
    attempts: int


@dataclass(frozen=True)
class BatchOutcome:
    claimed: int = 0
    done: int = 0
    failed: int = 0
    released: int = 0
    skipped: int = 0


def embedding_process_batch(*, kind: Kind, embedder: Embedder, space: EmbeddingSpace, limit: int) -> BatchOutcome:
    """Claim, embed and store one batch of ``kind``. Returns what happened to its items."""
    items = _claim(kind=kind, limit=limit)
    if not items:
        return BatchOutcome()
    texts = {item.id: text_normalize(item.text) for item, _ in items}
    blank = [(item, claimed) for item, claimed in items if not texts[item.id]]
    todo = [(item, claimed) for item, claimed in items if texts[item.id]]

    try:
        outcome = embed_texts_cached(embedder=embedder, texts=[texts[item.id] for item, _ in todo]) if todo else None
    except EmbeddingUnavailable as exc:
        logger.warning("embedding provider unavailable for %d %ss: %s", len(todo), kind, exc)
        failed = _finish_failed(kind, todo, f"provider unavailable: {exc}")
        skipped = _finish_blank(kind, blank)
        return BatchOutcome(claimed=len(items), failed=failed, released=len(todo) - failed, skipped=skipped)

    done: list[tuple[ClaimedItem, datetime, list[float]]] = []
    rejected: list[tuple[ClaimedItem, datetime, str]] = []
    for item, claimed in todo:
        text = texts[item.id]
        if outcome is not None and text in outcome.vectors:
            vector = outcome.vectors[text]
            if len(vector) != space.dimensions:  # a provider answering another size than its space
                rejected.append((item, claimed, f"vector has {len(vector)} dimensions, expected {space.dimensions}"))
            else:
                done.append((item, claimed, vector))
        else:
            rejected.append((item, claimed, outcome.failures.get(text, "not embedded") if outcome else "not embedded"))

    with transaction.atomic():
        _store_vectors(kind, space, done)
        finished = _finish_done(kind, done)
        # A rejected text fails for good: the same text will be rejected again.
        failed = _finish_rejected(kind, rejected)
        skipped = _finish_blank(kind, blank)
    return BatchOutcome(claimed=len(items), done=finished, failed=failed, skipped=skipped)


def embedding_drain(*, embedder: Embedder | None = None, seconds: float | None = None) -> int:
    """Process batches of every kind until nothing is pending or ``seconds`` have passed.
    Returns how many items were claimed."""
    if embedder is None:
        from conversations.embeddings import get_embedder

        embedder = get_embedder()
    space = embedding_space_for(embedder=embedder)
    budget: float = seconds if seconds is not None else settings.EMBEDDING_DRAIN_SECONDS
    deadline = time.monotonic() + budget
    total = 0
    while time.monotonic() < deadline:
        claimed = 0
        for kind in KINDS:
            claimed += embedding_process_batch(
                kind=kind, embedder=embedder, space=space, limit=settings.EMBEDDING_BATCH_SIZE
            ).claimed
        total += claimed
        if not claimed:
            break
    return total


def embedding_reconcile() -> int:
    """Hand back claims older than the lease (their worker died or hung). An item that has used
    all its attempts ends ``failed``. Returns how many rows were handed back or failed."""
    lease: float = settings.EMBEDDING_LEASE_SECONDS
    max_attempts: int = settings.EMBEDDING_MAX_ATTEMPTS
    total = 0
    for kind in KINDS:
        table = _SOURCES[kind][0]._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"""
                UPDATE {table}
                   SET embedding_state = CASE WHEN embedding_attempts >= %s THEN 'failed' ELSE 'pending' END,
                       embedding_error = CASE WHEN embedding_attempts >= %s
                           THEN 'lease expired on the last attempt' ELSE embedding_error END,
                       embedding_claimed_at = NULL
                 WHERE embedding_state = 'processing' AND embedding_claimed_at < now() - make_interval(secs => %s)
                """,
                [max_attempts, max_attempts, lease],
            )
            total += cursor.rowcount
    if total:
        logger.info("embedding reconciler handed back %d expired claims", total)
    return total


# --- internals ---------------------------------------------------------------------------------


def _claim(*, kind: Kind, limit: int) -> list[tuple[ClaimedItem, datetime]]:
    model, _, text_sql = _SOURCES[kind]
    table = model._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"""
            WITH picked AS (
                SELECT id FROM {table} WHERE embedding_state = 'pending'
                ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED
            )
            UPDATE {table} AS t
               SET embedding_state = 'processing', embedding_claimed_at = clock_timestamp(),
                   embedding_attempts = t.embedding_attempts + 1
              FROM picked WHERE t.id = picked.id
            RETURNING t.id, t.tenant_id, {text_sql}, t.embedding_attempts, t.embedding_claimed_at
            """,
            [limit],
        )
        rows = cursor.fetchall()
    return [(ClaimedItem(id=r[0], tenant_id=r[1], text=r[2] or "", attempts=r[3]), r[4]) for r in rows]


def _store_vectors(kind: Kind, space: EmbeddingSpace, done: list[tuple[ClaimedItem, datetime, list[float]]]) -> None:
    if not done:
        return
    vector_model = _SOURCES[kind][1]
    rows: list[Any] = [
        vector_model(item_id=item.id, tenant_id=item.tenant_id, space=space, embedding=vector)
        for item, _, vector in done
    ]
    # A conversation whose text changed is embedded again: its vector in the space is replaced.
    vector_model.objects.bulk_create(
        rows, update_conflicts=True, unique_fields=["item", "space"], update_fields=["embedding"]
    )


def _finish(kind: Kind, rows: list[tuple[UUID, datetime]], state: str, errors: list[str] | None = None) -> int:
    if not rows:
        return 0
    table = _SOURCES[kind][0]._meta.db_table
    ids = [row_id for row_id, _ in rows]
    claims = [claimed for _, claimed in rows]
    messages = errors or [""] * len(rows)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {table} AS t
               SET embedding_state = %s, embedding_claimed_at = NULL, embedding_error = f.error
              FROM unnest(%s::uuid[], %s::timestamptz[], %s::text[]) AS f(id, claimed_at, error)
             WHERE t.id = f.id AND t.embedding_state = 'processing' AND t.embedding_claimed_at = f.claimed_at
            """,
            [state, ids, claims, messages],
        )
        return cursor.rowcount


def _finish_done(kind: Kind, done: list[tuple[ClaimedItem, datetime, list[float]]]) -> int:
    return _finish(kind, [(item.id, claimed) for item, claimed, _ in done], "done")


def _finish_rejected(kind: Kind, rejected: list[tuple[ClaimedItem, datetime, str]]) -> int:
    return _finish(
        kind, [(item.id, claimed) for item, claimed, _ in rejected], "failed", [error for _, _, error in rejected]
    )


def _finish_blank(kind: Kind, blank: list[tuple[ClaimedItem, datetime]]) -> int:
    rows = [(item.id, claimed) for item, claimed in blank]
    if kind == "conversation":
        return _finish(kind, rows, "skipped")
    return _finish(kind, rows, "failed", ["the text is empty"] * len(rows))


def _finish_failed(kind: Kind, items: list[tuple[ClaimedItem, datetime]], error: str) -> int:
    """After a provider outage: back to pending, or failed for items out of attempts.
    Returns how many ended failed."""
    max_attempts: int = settings.EMBEDDING_MAX_ATTEMPTS
    spent = [(item.id, claimed) for item, claimed in items if item.attempts >= max_attempts]
    again = [(item.id, claimed) for item, claimed in items if item.attempts < max_attempts]
    _finish(kind, again, "pending", [error[:1000]] * len(again))
    return _finish(kind, spent, "failed", [error[:1000]] * len(spent))
