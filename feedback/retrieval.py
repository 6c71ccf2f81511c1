"""Reads of the knowledge base: search (vector, full-text, hybrid) and the answer lookup.

Only a tenant's *active* entries are ever searched or returned. The vector side is conversation
search's own mechanism (``conversations.nearest.filtered_neighbours``): an exact scan of the
tenant's entries when they are few, HNSW with a raised ``ef_search`` when they are many, and the
exact scan again if HNSW comes back short.

The answer lookup is seed 003's response cache done by meaning: the ``KNOWLEDGE_LOOKUP_NEIGHBOURS``
nearest entries vote for their answers (entries with the same answer text vote together), each
vote weighted by its similarity, counting only neighbours at or above the suggest threshold. The
winning answer is given (``answer``) when its best similarity and its share of the votes clear
their thresholds, offered (``suggest``) when only its similarity clears the suggest threshold, and
otherwise there is no match. The vote is what keeps wrong answers rare: a question that sits
between two answers is suggested, not answered (docs/knowledge.md has the measured trade-off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connections

from conversations.models import EmbeddingSpace, Tenant
from conversations.nearest import filtered_neighbours
from conversations.search import reciprocal_rank_fusion
from conversations.services.embedding_cache import text_normalize
from convo.db_router import read_alias_for
from feedback.models import KnowledgeEmbedding, KnowledgeEntry, LookupDecision

_ENTRIES = KnowledgeEntry._meta.db_table
_VECTORS = KnowledgeEmbedding._meta.db_table
_FROM = f"{_VECTORS} AS e JOIN {_ENTRIES} AS k ON k.id = e.item_id"
# The expression of the GIN index ``knowledge_text_search`` (feedback migration 0002).
_TSVECTOR = "to_tsvector('simple'::regconfig, k.question || ' ' || k.answer)"


@dataclass(frozen=True)
class KnowledgeHit:
    entry: KnowledgeEntry
    similarity: float | None  # cosine similarity of the question; None when found by words alone
    score: float  # what the hits are ordered by: similarity, text rank, or the fused rank


@dataclass(frozen=True)
class KnowledgeSearchResult:
    hits: list[KnowledgeHit]
    strategy: str  # "exact", "hnsw", "hnsw+exact", "text", or "hybrid:<vector strategy>"


@dataclass(frozen=True)
class Thresholds:
    answer_similarity: float
    answer_agreement: float
    suggest_similarity: float
    neighbours: int

    @classmethod
    def from_settings(cls) -> Thresholds:
        return cls(
            answer_similarity=float(settings.KNOWLEDGE_ANSWER_MIN_SIMILARITY),
            answer_agreement=float(settings.KNOWLEDGE_ANSWER_MIN_AGREEMENT),
            suggest_similarity=float(settings.KNOWLEDGE_SUGGEST_MIN_SIMILARITY),
            neighbours=int(settings.KNOWLEDGE_LOOKUP_NEIGHBOURS),
        )


@dataclass(frozen=True)
class AnswerLookup:
    decision: str  # a LookupDecision
    entry: KnowledgeEntry | None  # the nearest entry giving the winning answer
    similarity: float  # that entry's similarity (0.0 when nothing is near)
    agreement: float  # the winning answer's share of the votes (0.0 when nothing voted)
    candidates: list[KnowledgeHit]  # the neighbours that were looked at, nearest first


def knowledge_neighbours(
    *, tenant: Tenant, space: EmbeddingSpace, vector: list[float], limit: int, tags: list[str] | None = None
) -> tuple[list[tuple[UUID, float]], str]:
    """The ``limit`` active entries nearest to ``vector`` (id, similarity), nearest first, and
    the strategy used. ``tags``: only entries carrying all of them."""
    where = "e.space_id = %s AND e.tenant_id = %s AND k.tenant_id = %s AND k.active"
    params: list[Any] = [space.pk, tenant.pk, tenant.pk]
    if tags:
        where += " AND k.tags @> %s::varchar[]"
        params.append(tags)
    rows, strategy, _ = filtered_neighbours(
        alias=read_alias_for(models=(KnowledgeEmbedding, KnowledgeEntry)),
        vectors_table=_VECTORS,
        from_sql=_FROM,
        where=where,
        params=params,
        dims=int(space.dimensions),
        vector=vector,
        limit=limit,
    )
    return rows, strategy


def knowledge_text_matches(
    *, tenant: Tenant, query: str, limit: int, tags: list[str] | None = None
) -> list[tuple[UUID, float]]:
    """Active entries whose question or answer holds the words of ``query`` (PostgreSQL
    full-text search, ``simple`` configuration as for messages), best ``ts_rank_cd`` first."""
    where = "k.tenant_id = %s AND k.active"
    params: list[Any] = [tenant.pk]
    if tags:
        where += " AND k.tags @> %s::varchar[]"
        params.append(tags)
    with connections[read_alias_for(models=(KnowledgeEntry,))].cursor() as cursor:
        cursor.execute(
            f"""
            SELECT k.id, ts_rank_cd({_TSVECTOR}, q) AS rank
              FROM {_ENTRIES} AS k, websearch_to_tsquery('simple', %s) AS q
             WHERE {where} AND {_TSVECTOR} @@ q
             ORDER BY rank DESC, k.updated_at DESC LIMIT %s
            """,
            [query, *params, limit],
        )
        return [(row[0], float(row[1])) for row in cursor.fetchall()]


def knowledge_search(
    *,
    tenant: Tenant,
    mode: str,
    k: int,
    query: str = "",
    space: EmbeddingSpace | None = None,
    vector: list[float] | None = None,
    tags: list[str] | None = None,
) -> KnowledgeSearchResult:
    """The ``k`` best active entries for ``query``: by meaning (``vector``, needs ``space`` and
    ``vector``), by words (``text``), or both fused by reciprocal rank (``hybrid``)."""
    if mode == "text":
        words = knowledge_text_matches(tenant=tenant, query=query, limit=k, tags=tags)
        return KnowledgeSearchResult(hits=_hydrate([(i, None, rank) for i, rank in words]), strategy="text")
    if space is None or vector is None:
        raise ValueError(f"mode {mode!r} needs the space and the query's vector")
    if mode == "vector":
        neighbours, strategy = knowledge_neighbours(tenant=tenant, space=space, vector=vector, limit=k, tags=tags)
        return KnowledgeSearchResult(hits=_hydrate([(i, s, s) for i, s in neighbours]), strategy=strategy)
    wanted = max(k * int(settings.SEARCH_CANDIDATE_FACTOR), k)
    neighbours, strategy = knowledge_neighbours(tenant=tenant, space=space, vector=vector, limit=wanted, tags=tags)
    words = knowledge_text_matches(tenant=tenant, query=query, limit=wanted, tags=tags)
    similarity = dict(neighbours)
    fused = reciprocal_rank_fusion([i for i, _ in neighbours], [i for i, _ in words])[:k]
    return KnowledgeSearchResult(
        hits=_hydrate([(i, similarity.get(i), score) for i, score in fused]), strategy=f"hybrid:{strategy}"
    )


def knowledge_answer_lookup(
    *, tenant: Tenant, space: EmbeddingSpace, vector: list[float], thresholds: Thresholds | None = None
) -> AnswerLookup:
    """The best approved answer for a question whose vector is ``vector``, and how sure that is
    (the module docstring has the rule)."""
    rules = thresholds or Thresholds.from_settings()
    neighbours, _ = knowledge_neighbours(tenant=tenant, space=space, vector=vector, limit=max(rules.neighbours, 1))
    candidates = _hydrate([(i, s, s) for i, s in neighbours])
    return answer_decide(candidates=candidates, thresholds=rules)


def answer_decide(*, candidates: list[KnowledgeHit], thresholds: Thresholds) -> AnswerLookup:
    """The vote over ``candidates`` (nearest first): pure, so the benchmark and the tests can
    apply it to any neighbours."""
    votes: dict[str, float] = {}
    nearest: dict[str, KnowledgeHit] = {}
    for hit in candidates:
        if hit.similarity is None or hit.similarity < thresholds.suggest_similarity:
            continue
        answer = text_normalize(hit.entry.answer)
        votes[answer] = votes.get(answer, 0.0) + hit.similarity
        nearest.setdefault(answer, hit)
    if not votes:
        return AnswerLookup(LookupDecision.NO_MATCH, None, _best(candidates), 0.0, candidates)
    winner = max(votes, key=lambda answer: (votes[answer], nearest[answer].similarity or 0.0))
    agreement = votes[winner] / sum(votes.values())
    best = nearest[winner]
    similarity = best.similarity or 0.0
    if similarity >= thresholds.answer_similarity and agreement >= thresholds.answer_agreement:
        decision = LookupDecision.ANSWER
    else:
        decision = LookupDecision.SUGGEST
    return AnswerLookup(decision, best.entry, similarity, agreement, candidates)


# --- internals -----------------------------------------------------------------------------------


def _best(candidates: list[KnowledgeHit]) -> float:
    return max((hit.similarity for hit in candidates if hit.similarity is not None), default=0.0)


def _hydrate(rows: list[tuple[UUID, float | None, float]]) -> list[KnowledgeHit]:
    """Entries for ``rows`` (id, similarity, score), in the rows' order, in one query."""
    if not rows:
        return []
    entries = KnowledgeEntry.objects.in_bulk([row[0] for row in rows])
    return [KnowledgeHit(entries[i], s, score) for i, s, score in rows if i in entries]
