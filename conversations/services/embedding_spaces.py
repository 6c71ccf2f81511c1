"""Embedding spaces: one per model, each with its own partial HNSW index and its own embedder.

The vector tables hold vectors of any dimension; each space gets an expression index
``USING hnsw ((embedding::vector(<dims>)) vector_cosine_ops) WHERE space_id = <id>``, which is
how pgvector indexes several models in one table. Search must use the same expression.

A space stores the config that builds its embedder, so the worker and search follow the
``active`` space, not their own settings: ``settings.EMBEDDINGS`` only chooses the first space.
A model switch (``convo_embeddings_switch``) fills a ``building`` space beside the active one,
then swaps them in one transaction (docs/embeddings.md).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.utils import timezone

from clustering.services.assignment import cluster_space_index
from clustering.services.spaces import clusters_move_to_space
from conversations.embeddings import config_for_this_process, embedder_from_config, get_embedder
from conversations.embeddings.base import Embedder
from conversations.models import EmbeddingSpace, SpaceState
from conversations.services.embedding_kinds import embedding_kinds
from convo.db import hnsw_parameters, index_ensure

_spaces: dict[tuple[str, int], EmbeddingSpace] = {}
_embedders: dict[tuple[int, str], Embedder] = {}
_lock = threading.Lock()

# Held shared by worker batches while they store vectors and finish items, exclusively by an
# activation: the two never interleave.
SPACES_LOCK = 0x636F6E766F5350  # "convoSP"


def embedding_space_for(*, embedder: Embedder, config: Mapping[str, Any] | None = None) -> EmbeddingSpace:
    """The space of ``embedder``'s model, created (with its HNSW indexes) on first use, storing
    ``config`` (the EMBEDDINGS mapping that built ``embedder``). The first space ever created
    becomes the active one; a later one is ``building`` and waits for a model switch."""
    key = (embedder.model_id, embedder.dimensions)
    with _lock:
        cached = _spaces.get(key)
    if cached is not None:
        return cached
    with transaction.atomic():
        space, created = EmbeddingSpace.objects.get_or_create(
            model_id=embedder.model_id, defaults={"dimensions": embedder.dimensions, "config": dict(config or {})}
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


def embedding_space_embedder(*, space: EmbeddingSpace) -> Embedder:
    """The embedder of ``space``, built from its stored config once per process. A space made
    before configs were stored is adopted by the configured embedder when the model matches
    (and the config is then stored, so the space can be switched back to later)."""
    config = config_for_this_process(space.config or _adopted_config(space))
    key = (space.pk, json.dumps(config, sort_keys=True, default=str))
    with _lock:
        cached = _embedders.get(key)
    if cached is not None:
        return cached
    # The settings' own embedder when the config is the settings': one client/model per process.
    embedder = get_embedder() if _same_config(config, settings.EMBEDDINGS) else embedder_from_config(config)
    if (embedder.model_id, embedder.dimensions) != (space.model_id, space.dimensions):
        raise ImproperlyConfigured(
            f"the stored config of space {space.model_id} ({space.dimensions}d) builds "
            f"{embedder.model_id} ({embedder.dimensions}d)"
        )
    with _lock:
        _embedders[key] = embedder
    return embedder


def embedding_space_active_embedder() -> tuple[EmbeddingSpace, Embedder] | None:
    """The active space and its embedder: what search embeds queries with and what the worker
    embeds new items with. Read from the database on every call (one small query), so every
    process follows a model switch at once. When no space exists yet, the first one is created
    from ``settings.EMBEDDINGS``; None only if spaces exist but none is active."""
    space = embedding_space_active()
    if space is None:
        space = embedding_space_for(embedder=get_embedder(), config=settings.EMBEDDINGS)
        if space.state != SpaceState.ACTIVE:
            return None
    return space, embedding_space_embedder(space=space)


def embedding_space_index(*, space: EmbeddingSpace) -> None:
    """Create the space's HNSW indexes if missing (``index_ensure``: concurrently outside a
    transaction, without the statement timeout, an invalid one rebuilt, a built one left alone).
    ``m`` and ``ef_construction`` follow seed 002."""
    if connection.in_atomic_block:
        with connection.cursor() as cursor:  # no index on a table with deferred FK checks pending
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    for kind in embedding_kinds():
        index_ensure(
            name=f"{kind.index_prefix}_hnsw_space_{int(space.pk)}",
            definition=f"ON {kind.vectors._meta.db_table} USING hnsw ((embedding::vector({int(space.dimensions)})) "
            f"vector_cosine_ops) {hnsw_parameters()} WHERE space_id = {int(space.pk)}",
        )
    cluster_space_index(space=space)


def embedding_space_unindex(*, space: EmbeddingSpace) -> None:
    """Drop the space's HNSW indexes (a retired space is never searched). Its vectors stay, so
    switching back costs an index build and a catch-up, not a re-embedding."""
    concurrently = "" if connection.in_atomic_block else "CONCURRENTLY"
    for kind in embedding_kinds():
        with connection.cursor() as cursor:
            cursor.execute(f"DROP INDEX {concurrently} IF EXISTS {kind.index_prefix}_hnsw_space_{int(space.pk)}")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX {concurrently} IF EXISTS cluster_hnsw_space_{int(space.pk)}")


def embedding_space_active() -> EmbeddingSpace | None:
    return EmbeddingSpace.objects.filter(state=SpaceState.ACTIVE).first()


def embedding_space_building_start(*, embedder: Embedder, config: Mapping[str, Any]) -> EmbeddingSpace:
    """The ``building`` space of ``embedder``'s model for a switch: created, resumed, or revived
    from ``retired``. ``config`` replaces the stored one (a resumed switch may move the provider's
    URL). A revived space loses the vectors of every kind whose text can change (conversation
    summaries, knowledge entries) first: they may have changed while nothing kept the space up to
    date (messages never change), and the backfill fills them again, mostly from the embedding
    cache. Refuses when a switch to another model is under way."""
    with transaction.atomic():
        other = EmbeddingSpace.objects.filter(state=SpaceState.BUILDING).exclude(model_id=embedder.model_id).first()
        if other is not None:
            raise ValueError(f"a switch to {other.model_id} is under way; finish or abandon it first")
        space, _ = EmbeddingSpace.objects.select_for_update().get_or_create(
            model_id=embedder.model_id,
            defaults={"dimensions": embedder.dimensions, "state": SpaceState.BUILDING, "config": dict(config)},
        )
        if space.dimensions != embedder.dimensions:
            raise ValueError(f"{space.model_id} has {space.dimensions} dimensions, not {embedder.dimensions}")
        if space.state == SpaceState.ACTIVE:
            raise ValueError(f"{space.model_id} is already the active space")
        if space.state == SpaceState.RETIRED:
            for kind in embedding_kinds():
                if kind.mutable_text:
                    kind.vectors.objects.filter(space=space).delete()
        space.state, space.config = SpaceState.BUILDING, dict(config)
        space.save(update_fields=["state", "config"])
    return space


def embedding_space_abandon(*, space: EmbeddingSpace) -> None:
    """Stop building ``space`` (it becomes ``retired``; its vectors stay for a later attempt)."""
    EmbeddingSpace.objects.filter(pk=space.pk, state=SpaceState.BUILDING).update(state=SpaceState.RETIRED)


@transaction.atomic
def embedding_space_activate(*, space: EmbeddingSpace) -> EmbeddingSpace | None:
    """Make the building ``space`` the one search reads, retiring the active one, in one
    transaction. It holds the spaces lock exclusively: it waits for worker batches deciding
    against the old space (``embedding_spaces_live``), and batches after it see the new one.
    Returns the retired space."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [SPACES_LOCK])
    target = EmbeddingSpace.objects.get(pk=space.pk)
    if target.state != SpaceState.BUILDING:
        raise ValueError(f"{target.model_id} is {target.state}, not building")
    old = EmbeddingSpace.objects.filter(state=SpaceState.ACTIVE).first()
    if old is not None:
        old.state = SpaceState.RETIRED
        old.save(update_fields=["state"])
    target.state, target.activated_at = SpaceState.ACTIVE, timezone.now()
    target.save(update_fields=["state", "activated_at"])
    if old is not None:
        clusters_move_to_space(old=old, new=target)
    return old


def embedding_spaces_live() -> dict[int, str]:
    """The active and building spaces (id -> state), read under the spaces lock held shared until
    the caller's transaction ends: a worker finishing a batch calls this, so an activation
    cannot slip between its reading the active space and its marking items done. An advisory
    lock rather than ``FOR SHARE`` on the rows: no row writes (multixacts) on every batch."""
    if not connection.in_atomic_block:
        raise RuntimeError("embedding_spaces_live() must run inside the transaction it protects")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [SPACES_LOCK])
        cursor.execute(f"SELECT id, state FROM {EmbeddingSpace._meta.db_table} WHERE state IN ('active', 'building')")
        return {row[0]: row[1] for row in cursor.fetchall()}


def embedding_space_states_sync(*, space: EmbeddingSpace) -> tuple[int, int]:
    """After ``space`` became active, make ``embedding_state`` describe it again: a conversation
    with a vector there is ``done`` even if the old model had failed it (a message so is handed to
    the worker, which finishes it from the cache and clusters it), and a ``done`` item without one
    (the new model rejected it, or it was finished by a worker that did not yet know the space)
    goes back to ``pending`` for the worker. Returns (now done, back to pending)."""
    done = pending = 0
    for kind in embedding_kinds():
        items, vectors = kind.items._meta.db_table, kind.vectors._meta.db_table
        has_vector = f"EXISTS (SELECT 1 FROM {vectors} AS e WHERE e.item_id = t.id AND e.space_id = %s)"
        with connection.cursor() as cursor:
            if kind.finish_in_worker:
                # A message must pass through the worker to be clustered: back to pending (its
                # vector comes from the cache), not straight to done.
                cursor.execute(
                    f"UPDATE {items} AS t SET embedding_state = 'pending', embedding_attempts = 0, "
                    f"embedding_error = '' WHERE t.embedding_state = 'failed' AND {has_vector}",
                    [space.pk],
                )
                pending += cursor.rowcount
            else:
                cursor.execute(
                    f"UPDATE {items} AS t SET embedding_state = 'done', embedding_error = '' "
                    f"WHERE t.embedding_state = 'failed' AND {has_vector}",
                    [space.pk],
                )
                done += cursor.rowcount
            cursor.execute(
                f"UPDATE {items} AS t SET embedding_state = 'pending', embedding_attempts = 0, embedding_error = '' "
                f"WHERE t.embedding_state = 'done' AND NOT {has_vector}",
                [space.pk],
            )
            pending += cursor.rowcount
    return done, pending


def embedding_spaces_forget() -> None:
    """Drop this process's memory of spaces and their embedders (tests; after a model switch)."""
    with _lock:
        _spaces.clear()
        _embedders.clear()


# --- internals ---------------------------------------------------------------------------------


def _same_config(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _adopted_config(space: EmbeddingSpace) -> dict[str, Any]:
    """The settings' config for a space stored without one, if the settings build its model."""
    embedder = get_embedder()
    if (embedder.model_id, embedder.dimensions) != (space.model_id, space.dimensions):
        raise ImproperlyConfigured(
            f"space {space.model_id} has no stored config and EMBEDDINGS builds {embedder.model_id}: "
            "configure its model or switch with convo_embeddings_switch"
        )
    config = json.loads(json.dumps(settings.EMBEDDINGS, default=str))
    EmbeddingSpace.objects.filter(pk=space.pk, config={}).update(config=config)
    space.config = config
    return config
