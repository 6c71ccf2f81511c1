"""Embedding spaces: one per model, each with its own partial HNSW index.

The vector tables hold vectors of any dimension; each space gets an expression index
``USING hnsw ((embedding::vector(<dims>)) vector_cosine_ops) WHERE space_id = <id>``, which is
how pgvector indexes several models in one table. Search must use the same expression.
"""

from __future__ import annotations

import threading

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from conversations.embeddings.base import Embedder
from conversations.models import ConversationEmbedding, EmbeddingSpace, MessageEmbedding, SpaceState

_spaces: dict[tuple[str, int], EmbeddingSpace] = {}
_lock = threading.Lock()


def embedding_space_for(*, embedder: Embedder) -> EmbeddingSpace:
    """The space of ``embedder``'s model, created (with its HNSW indexes) on first use. The first
    space ever created becomes the active one; later ones wait for a model switch."""
    key = (embedder.model_id, embedder.dimensions)
    with _lock:
        cached = _spaces.get(key)
    if cached is not None:
        return cached
    with transaction.atomic():
        space, created = EmbeddingSpace.objects.get_or_create(
            model_id=embedder.model_id, defaults={"dimensions": embedder.dimensions}
        )
        if space.dimensions != embedder.dimensions:
            raise ValueError(
                f"{embedder.model_id} is stored with {space.dimensions} dimensions but now answers "
                f"{embedder.dimensions}: give the new configuration its own model id"
            )
        if created and not EmbeddingSpace.objects.filter(state=SpaceState.ACTIVE).exists():
            space.state = SpaceState.ACTIVE
            space.activated_at = timezone.now()
            space.save(update_fields=["state", "activated_at"])
    embedding_space_index(space=space)
    with _lock:
        _spaces[key] = space
    return space


def embedding_space_index(*, space: EmbeddingSpace) -> None:
    """Create the space's HNSW indexes if missing (concurrently, when not inside a transaction,
    so a big table keeps taking writes). ``m`` and ``ef_construction`` follow seed 002."""
    concurrently = "" if connection.in_atomic_block else "CONCURRENTLY"
    for model, prefix in ((MessageEmbedding, "msg"), (ConversationEmbedding, "conv")):
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE INDEX {concurrently} IF NOT EXISTS {prefix}_hnsw_space_{space.pk} "
                f"ON {model._meta.db_table} USING hnsw ((embedding::vector({int(space.dimensions)})) "
                f"vector_cosine_ops) WITH (m = {int(settings.EMBEDDING_HNSW_M)}, "
                f"ef_construction = {int(settings.EMBEDDING_HNSW_EF_CONSTRUCTION)}) "
                f"WHERE space_id = {int(space.pk)}"
            )


def embedding_space_active() -> EmbeddingSpace | None:
    return EmbeddingSpace.objects.filter(state=SpaceState.ACTIVE).first()


def embedding_spaces_forget() -> None:
    """Drop this process's memory of spaces (tests; after a model switch)."""
    with _lock:
        _spaces.clear()
