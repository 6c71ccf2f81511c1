"""Semantic search over a tenant's messages: the read side of the embeddings.

The neighbours come from ``conversations.nearest.filtered_neighbours``: an exact scan when the
filters match few rows, HNSW with a raised ``ef_search`` when they match many, and the exact scan
again when HNSW comes back short (that module says why pgvector needs this).

Ranking blends similarity with recency and channel (seed 004):
``score = (1 - time_weight - channel_weight) * similarity + time_weight * recency
+ channel_weight * same_channel``, where ``recency = 0.5 ** (age / half_life)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connections
from django.utils import timezone
from psycopg.types.json import Jsonb

from conversations.models import Conversation, ConversationEmbedding, EmbeddingSpace, Message, MessageEmbedding, Tenant
from conversations.nearest import filtered_neighbours, vector_literal
from convo.db_router import read_alias_for

_VECTORS = MessageEmbedding._meta.db_table
_MESSAGES = Message._meta.db_table
_CONVERSATIONS = Conversation._meta.db_table


@dataclass(frozen=True)
class SearchFilters:
    user_id: str | None = None
    channel: str | None = None
    status: str | None = None
    metadata: dict[str, Any] | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    role: str | None = None


@dataclass(frozen=True)
class Ranking:
    min_similarity: float = 0.7
    time_weight: float = 0.2
    channel_weight: float = 0.1
    half_life_days: float = 30.0
    adaptive: bool = True
    channel: str | None = None  # the channel the query comes from, for the same-channel bonus


@dataclass(frozen=True)
class SearchHit:
    message_id: UUID
    conversation_id: UUID
    text: str
    role: str
    channel: str
    user_id: str
    created_at: datetime
    similarity: float
    score: float


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    strategy: str  # "exact" or "hnsw" (or "hnsw+exact" when HNSW came back short)
    matching: int  # rows the filters match, counted up to the exact-scan cap
    threshold: float  # the similarity threshold finally applied
    extra: dict[str, Any] = field(default_factory=dict)


def message_neighbours(
    *, tenant: Tenant, space: EmbeddingSpace, vector: list[float], filters: SearchFilters, limit: int
) -> tuple[list[tuple[UUID, float]], str, int]:
    """The ``limit`` nearest messages (id, cosine similarity) among those ``filters`` match,
    nearest first, with the strategy used and the (capped) count of matching rows."""
    where, params = _where(tenant=tenant, space=space, filters=filters)
    return filtered_neighbours(
        alias=read_alias_for(models=(MessageEmbedding, Message, Conversation)),
        vectors_table=_VECTORS,
        from_sql=_FROM_WITH_MESSAGES if _filters_messages(filters) else _FROM,
        where=where,
        params=params,
        dims=int(space.dimensions),
        vector=vector,
        limit=limit,
    )


def message_search(
    *,
    tenant: Tenant,
    space: EmbeddingSpace,
    vector: list[float],
    filters: SearchFilters,
    k: int,
    ranking: Ranking,
    now: datetime | None = None,
) -> SearchResult:
    """The ``k`` best messages by blended score among the nearest candidates that pass the
    similarity threshold. With ``adaptive``, the threshold is lowered in steps of
    ``SEARCH_ADAPTIVE_STEP`` (not below ``SEARCH_ADAPTIVE_FLOOR``) until ``k`` candidates pass."""
    candidates_wanted = max(k * settings.SEARCH_CANDIDATE_FACTOR, k)
    neighbours, strategy, matching = message_neighbours(
        tenant=tenant, space=space, vector=vector, filters=filters, limit=candidates_wanted
    )
    threshold = ranking.min_similarity
    passing = [n for n in neighbours if n[1] >= threshold]
    if ranking.adaptive:
        floor: float = settings.SEARCH_ADAPTIVE_FLOOR
        while len(passing) < min(k, len(neighbours)) and threshold > floor:
            threshold = max(floor, round(threshold - settings.SEARCH_ADAPTIVE_STEP, 6))
            passing = [n for n in neighbours if n[1] >= threshold]
    hits = _hydrate(passing, ranking=ranking, now=now or timezone.now())
    hits.sort(key=lambda hit: hit.score, reverse=True)
    return SearchResult(hits=hits[:k], strategy=strategy, matching=matching, threshold=threshold)


def message_text_search(*, tenant: Tenant, query: str, filters: SearchFilters, limit: int) -> list[tuple[UUID, float]]:
    """Messages matching the words of ``query`` (PostgreSQL full-text search, ``simple``
    configuration: no stemming, any language), best ``ts_rank_cd`` first. The expression matches
    the GIN index ``msg_text_search``."""
    where, params = _where_messages(tenant=tenant, filters=filters)
    with connections[read_alias_for(models=(Message, Conversation))].cursor() as cursor:
        cursor.execute(
            f"""
            SELECT m.id, ts_rank_cd({_TSVECTOR}, q) AS rank
              FROM {_MESSAGES} AS m JOIN {_CONVERSATIONS} AS c ON c.id = m.conversation_id,
                   websearch_to_tsquery('simple', %s) AS q
             WHERE {where} AND {_TSVECTOR} @@ q
             ORDER BY rank DESC, m.created_at DESC LIMIT %s
            """,
            [query, *params, limit],
        )
        return [(row[0], float(row[1])) for row in cursor.fetchall()]


def message_words_search(
    *, tenant: Tenant, query: str, filters: SearchFilters, k: int, ranking: Ranking, now: datetime | None = None
) -> SearchResult:
    """Text mode: messages ranked by their words alone; ``score`` is ``ts_rank_cd``."""
    matches = message_text_search(tenant=tenant, query=query, filters=filters, limit=k)
    hits = {
        hit.message_id: hit
        for hit in _hydrate([(item, float("nan")) for item, _ in matches], ranking=ranking, now=now or timezone.now())
    }
    ordered = [SearchHit(**{**hits[item].__dict__, "score": rank}) for item, rank in matches if item in hits]
    return SearchResult(hits=ordered, strategy="text", matching=len(matches), threshold=-1.0)


def reciprocal_rank_fusion(*rankings: list[UUID], k: int = 60) -> list[tuple[UUID, float]]:
    """Fuse rankings by ``sum(1 / (k + rank))`` (Cormack et al., 2009): robust to the two lists'
    scores living on different scales, which is why hybrid search fuses ranks, not scores."""
    fused: dict[UUID, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda pair: pair[1], reverse=True)


def message_hybrid_search(
    *,
    tenant: Tenant,
    space: EmbeddingSpace,
    vector: list[float],
    query: str,
    filters: SearchFilters,
    k: int,
    ranking: Ranking,
    now: datetime | None = None,
) -> SearchResult:
    """Vector neighbours and full-text matches fused by reciprocal rank. ``score`` is the fused
    score; ``similarity`` is the cosine similarity where the vector side found the message."""
    wanted = max(k * settings.SEARCH_CANDIDATE_FACTOR, k)
    neighbours, strategy, matching = message_neighbours(
        tenant=tenant, space=space, vector=vector, filters=filters, limit=wanted
    )
    words = message_text_search(tenant=tenant, query=query, filters=filters, limit=wanted)
    fused = reciprocal_rank_fusion([item for item, _ in neighbours], [item for item, _ in words])[:k]
    similarity = dict(neighbours)
    hits = {
        hit.message_id: hit
        for hit in _hydrate(
            [(item, similarity.get(item, float("nan"))) for item, _ in fused],
            ranking=ranking,
            now=now or timezone.now(),
        )
    }
    ordered = [SearchHit(**{**hits[item].__dict__, "score": score}) for item, score in fused if item in hits]
    return SearchResult(hits=ordered, strategy=f"hybrid:{strategy}", matching=matching, threshold=-1.0)


def conversation_neighbours(
    *, tenant: Tenant, space: EmbeddingSpace, vector: list[float], user_id: str, limit: int
) -> list[tuple[UUID, float]]:
    """The user's live conversations nearest to ``vector`` (by summary or transcript). One user's
    conversations are few, so this is always an exact scan, correct by construction."""
    dims = int(space.dimensions)
    distance = f"(e.embedding::vector({dims}) <=> %s::vector({dims}))"
    with connections[read_alias_for(models=(ConversationEmbedding, Conversation))].cursor() as cursor:
        cursor.execute(
            f"""
            SELECT e.item_id, 1 - {distance}
              FROM {ConversationEmbedding._meta.db_table} AS e JOIN {_CONVERSATIONS} AS c ON c.id = e.item_id
             WHERE e.space_id = %s AND e.tenant_id = %s AND c.external_user_id = %s AND c.deleted_at IS NULL
             ORDER BY {distance} + 0 LIMIT %s
            """,
            [vector_literal(vector), space.pk, tenant.pk, user_id, vector_literal(vector), limit],
        )
        return [(row[0], float(row[1])) for row in cursor.fetchall()]


# --- internals ---------------------------------------------------------------------------------

_TSVECTOR = "to_tsvector('simple'::regconfig, m.text)"

# A vector row carries its message's conversation, so the messages are joined only when a filter
# reads them: a per-user search walks the user's conversations, then their vectors.
_FROM = f"{_VECTORS} AS e JOIN {_CONVERSATIONS} AS c ON c.id = e.conversation_id"
_FROM_WITH_MESSAGES = f"{_FROM} JOIN {_MESSAGES} AS m ON m.id = e.item_id"


def _filters_messages(filters: SearchFilters) -> bool:
    return filters.role is not None or filters.created_after is not None or filters.created_before is not None


def _where(*, tenant: Tenant, space: EmbeddingSpace, filters: SearchFilters) -> tuple[str, list[Any]]:
    clauses, params = _conversation_clauses(tenant=tenant, filters=filters)
    message_clauses, message_params = _message_clauses(filters=filters)
    where = " AND ".join(["e.space_id = %s", "e.tenant_id = %s", *clauses, *message_clauses])
    return where, [space.pk, tenant.pk, *params, *message_params]


def _where_messages(*, tenant: Tenant, filters: SearchFilters) -> tuple[str, list[Any]]:
    clauses, params = _conversation_clauses(tenant=tenant, filters=filters)
    message_clauses, message_params = _message_clauses(filters=filters)
    return " AND ".join(["m.tenant_id = %s", *clauses, *message_clauses]), [tenant.pk, *params, *message_params]


def _conversation_clauses(*, tenant: Tenant, filters: SearchFilters) -> tuple[list[str], list[Any]]:
    # The tenant on the conversation too (always equal to the item's): it lets a per-user filter
    # lead with the (tenant, user, created_at) index instead of scanning the tenant.
    clauses = ["c.tenant_id = %s", "c.deleted_at IS NULL"]
    params: list[Any] = [tenant.pk]
    for column, value in (
        ("c.external_user_id", filters.user_id),
        ("c.channel", filters.channel),
        ("c.status", filters.status),
    ):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if filters.metadata:
        clauses.append("c.metadata @> %s")
        params.append(Jsonb(filters.metadata))
    return clauses, params


def _message_clauses(*, filters: SearchFilters) -> tuple[list[str], list[Any]]:
    """The filters on the messages themselves; ``_filters_messages`` says whether there are any."""
    clauses: list[str] = []
    params: list[Any] = []
    if filters.role is not None:
        clauses.append("m.role = %s")
        params.append(filters.role)
    if filters.created_after is not None:
        clauses.append("m.created_at >= %s")
        params.append(filters.created_after)
    if filters.created_before is not None:
        clauses.append("m.created_at < %s")
        params.append(filters.created_before)
    return clauses, params


def _hydrate(neighbours: list[tuple[UUID, float]], *, ranking: Ranking, now: datetime) -> list[SearchHit]:
    if not neighbours:
        return []
    similarity = dict(neighbours)
    rows = Message.objects.filter(pk__in=list(similarity)).values_list(
        "id", "conversation_id", "text", "role", "conversation__channel", "conversation__external_user_id", "created_at"
    )
    half_life = ranking.half_life_days * 86400.0
    base = 1.0 - ranking.time_weight - ranking.channel_weight
    hits = []
    for message_id, conversation_id, text, role, channel, user_id, created_at in rows:
        age = max((now - created_at).total_seconds(), 0.0)
        recency = 0.5 ** (age / half_life) if half_life > 0 else 0.0
        same_channel = 1.0 if ranking.channel is not None and channel == ranking.channel else 0.0
        sim = similarity[message_id]
        score = base * sim + ranking.time_weight * recency + ranking.channel_weight * same_channel
        hits.append(SearchHit(message_id, conversation_id, text, role, channel, user_id, created_at, sim, score))
    return hits
