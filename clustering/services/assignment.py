"""Online assignment: each embedded inbound message joins a cluster of its tenant, or starts one.

Called by the embedding worker inside the transaction that marks the messages done (ARCHITECTURE.md:
write vectors → assign → state = done), so a message is clustered exactly once: if the worker
dies first, the whole batch is retried; if it commits, the membership is there.

Per message, in arrival order, under the tenant's clustering lock (services/locking.py):
1. an exact duplicate (same text up to case, spacing and punctuation) of a member joins that
   member's cluster, found by index, no vector math;
2. otherwise the joinable clusters are ranked by centred average-link similarity
   (services/scoring.py; plain centroid cosine while the tenant has few messages), and the
   message joins the best one if its score reaches the tenant's threshold;
3. a short message that misses the threshold may still join a candidate whose representative
   text has nearly the same wording (rapidfuzz; the embedded PostgreSQL has no pg_trgm);
4. otherwise it starts a new cluster.
A message that joins an answered cluster gets the answer as a suggestion (a delivery).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import numpy as np
from django.conf import settings
from django.db import connection
from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

from clustering.list_cache import cluster_list_cache_invalidate_on_commit
from clustering.models import Cluster, ClusterMembership, ClusterStatus, JoinMethod
from clustering.services.deliveries import delivery_suggest
from clustering.services.locking import tenants_clustering_lock
from clustering.services.scoring import (
    Candidate,
    Centre,
    Thresholds,
    centre_load,
    centre_save,
    cluster_candidates,
    cluster_candidates_centred,
    tenant_thresholds,
    tenant_uses_hnsw,
    vector_literal,
)
from conversations.models import Conversation, EmbeddingSpace, Message, Role
from conversations.services.embedding_cache import text_normalize

_CLUSTERS = Cluster._meta.db_table
_MEMBERS = ClusterMembership._meta.db_table
_PUNCTUATION = re.compile(r"[^\w\s]+")
LABEL_CHARS = 120


@dataclass(frozen=True)
class EmbeddedMessage:
    id: UUID
    tenant_id: int
    vector: list[float]


@dataclass(frozen=True)
class Assignment:
    message_id: UUID
    cluster_id: UUID
    method: str
    similarity: float
    created: bool


def text_key(text: str) -> str:
    """The exact-duplicate key: the text up to case, spacing and punctuation."""
    folded = " ".join(_PUNCTUATION.sub(" ", text_normalize(text).casefold()).split())
    return hashlib.sha256(folded.encode()).hexdigest()[:32]


def clusters_assign_embedded(*, space: EmbeddingSpace, items: list[EmbeddedMessage]) -> list[Assignment]:
    """Assign the inbound (role ``user``) messages among ``items`` that have no cluster yet.
    Must run inside the caller's transaction; takes the tenants' clustering locks until it ends."""
    if not items:
        return []
    vectors = {item.id: item.vector for item in items}
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT m.id, m.tenant_id, m.text, COALESCE(m.sent_at, m.created_at)
              FROM {Message._meta.db_table} AS m
              JOIN {Conversation._meta.db_table} AS c ON c.id = m.conversation_id
             WHERE m.id = ANY(%s) AND m.role = %s AND c.deleted_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM {_MEMBERS} AS cm WHERE cm.message_id = m.id)
             ORDER BY m.created_at, m.id
            """,
            [list(vectors), Role.USER.value],
        )
        rows = cursor.fetchall()
    if not rows:
        return []
    tenants_clustering_lock(tenant_ids=[row[1] for row in rows])
    thresholds: dict[int, Thresholds] = {}
    exact: dict[int, bool] = {}
    centres: dict[int, Centre] = {}
    done: list[Assignment] = []
    for message_id, tenant_id, text, sent_at in rows:
        if tenant_id not in thresholds:
            thresholds[tenant_id] = tenant_thresholds(tenant_id=tenant_id)
            exact[tenant_id] = not tenant_uses_hnsw(tenant_id=tenant_id, space=space)
            centres[tenant_id] = centre_load(tenant_id=tenant_id, space=space)
        done.append(
            _assign_one(
                space=space,
                tenant_id=tenant_id,
                message_id=message_id,
                text=text,
                at=sent_at,
                vector=vectors[message_id],
                thresholds=thresholds[tenant_id],
                centre=centres[tenant_id],
                exact=exact[tenant_id],
            )
        )
    for tenant_id, centre in centres.items():
        centre_save(tenant_id=tenant_id, space=space, centre=centre)
        cluster_list_cache_invalidate_on_commit(tenant_id=tenant_id)
    return done


def cluster_space_index(*, space: EmbeddingSpace) -> None:
    """Create the space's HNSW index over joinable clusters if missing (concurrently when not in
    a transaction). Called where the space's other indexes are made (embedding_space_index)."""
    name = f"cluster_hnsw_space_{int(space.pk)}"
    concurrently = "" if connection.in_atomic_block else "CONCURRENTLY"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
            [name],
        )
        row = cursor.fetchone()
        if row is not None and row[0]:  # left invalid by an interrupted concurrent build
            cursor.execute(f"DROP INDEX {concurrently} IF EXISTS {name}")
        cursor.execute(
            f"CREATE INDEX {concurrently} IF NOT EXISTS {name} ON {_CLUSTERS} "
            f"USING hnsw ((vector_sum::vector({int(space.dimensions)})) vector_cosine_ops) "
            f"WITH (m = {int(settings.EMBEDDING_HNSW_M)}, "
            f"ef_construction = {int(settings.EMBEDDING_HNSW_EF_CONSTRUCTION)}) "
            f"WHERE space_id = {int(space.pk)} AND status IN ('open', 'answered')"
        )


# --- internals ---------------------------------------------------------------------------------


def _assign_one(
    *,
    space: EmbeddingSpace,
    tenant_id: int,
    message_id: UUID,
    text: str,
    at: datetime,
    vector: list[float],
    thresholds: Thresholds,
    centre: Centre,
    exact: bool,
) -> Assignment:
    key = text_key(text)
    centre.add(np.asarray(vector, dtype=np.float64))
    twin = _exact_twin(tenant_id=tenant_id, space=space, key=key)
    if twin is not None:
        return _join(twin, message_id, tenant_id, vector, key, at, JoinMethod.EXACT, 1.0)
    best, candidates = cluster_best(
        tenant_id=tenant_id, space=space, vector=vector, centre=centre, thresholds=thresholds, exact=exact
    )
    if best is not None:
        return _join(best, message_id, tenant_id, vector, key, at, JoinMethod.VECTOR, best.similarity)
    normalized = text_normalize(text)
    if len(normalized) <= thresholds.short_chars:
        # Only short against short: token_set_ratio scores 100 whenever one text's words are a
        # subset of the other's, which says little about a long representative text.
        wording = [
            (fuzz.token_set_ratio(normalized, c.representative_text, processor=default_process), c)
            for c in candidates
            if len(c.representative_text) <= 2 * thresholds.short_chars
        ]
        if wording:
            score, closest = max(wording, key=lambda pair: (pair[0], pair[1].score))
            if score >= thresholds.text_similarity:
                return _join(closest, message_id, tenant_id, vector, key, at, JoinMethod.TEXT, closest.similarity)
    return _found(space, message_id, tenant_id, vector, key, at, normalized)


def cluster_best(
    *,
    tenant_id: int,
    space: EmbeddingSpace,
    vector: list[float],
    centre: Centre,
    thresholds: Thresholds,
    exact: bool = True,
    exclude: UUID | None = None,
) -> tuple[Candidate | None, list[Candidate]]:
    """The cluster a message (already counted in ``centre``) should join, if any passes the
    tenant's threshold, and the candidates looked at. ``exclude``: a cluster id to leave out."""
    limit = int(settings.CLUSTER_CANDIDATES) + (exclude is not None)
    if centre.warm:
        candidates = cluster_candidates_centred(
            tenant_id=tenant_id,
            space=space,
            vector=np.asarray(vector, dtype=np.float64),
            centre=centre,
            limit=limit,
            exact=exact,
        )
        threshold = thresholds.similarity
    else:
        candidates = cluster_candidates(tenant_id=tenant_id, space=space, vector=vector, limit=limit, exact=exact)
        threshold = thresholds.warmup_similarity
    candidates = [c for c in candidates if c.id != exclude]
    best = candidates[0] if candidates and candidates[0].score >= threshold else None
    return best, candidates


def _exact_twin(*, tenant_id: int, space: EmbeddingSpace, key: str) -> Candidate | None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT c.id, c.status, c.representative_text FROM {_MEMBERS} AS m
              JOIN {_CLUSTERS} AS c ON c.id = m.cluster_id
             WHERE m.tenant_id = %s AND m.text_key = %s AND c.space_id = %s AND c.status IN ('open', 'answered')
             ORDER BY c.size DESC LIMIT 1
            """,
            [tenant_id, key, space.pk],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return Candidate(id=row[0], score=1.0, similarity=1.0, status=row[1], representative_text=row[2])


def _join(
    cluster: Candidate,
    message_id: UUID,
    tenant_id: int,
    vector: list[float],
    key: str,
    at: datetime,
    method: str,
    similarity: float,
) -> Assignment:
    answered = cluster.status == ClusterStatus.ANSWERED
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            UPDATE {_CLUSTERS}
               SET vector_sum = vector_sum + %s::vector, size = size + 1,
                   first_message_at = LEAST(first_message_at, %s), last_message_at = GREATEST(last_message_at, %s),
                   updated_at = now()
             WHERE id = %s
            """,
            [vector_literal(vector), at, at, cluster.id],
        )
    ClusterMembership.objects.create(
        message_id=message_id,
        cluster_id=cluster.id,
        tenant_id=tenant_id,
        similarity=min(1.0, similarity),
        method=method,
        text_key=key,
        answer_suggested=answered,
    )
    if answered:
        delivery_suggest(cluster_id=cluster.id, message_ids=[message_id])
    return Assignment(message_id, cluster.id, method, similarity, created=False)


def _found(
    space: EmbeddingSpace, message_id: UUID, tenant_id: int, vector: list[float], key: str, at: datetime, text: str
) -> Assignment:
    cluster = Cluster.objects.create(
        tenant_id=tenant_id,
        space=space,
        label=text[:LABEL_CHARS],
        representative_id=message_id,
        representative_text=text,
        vector_sum=vector,
        size=1,
        first_message_at=at,
        last_message_at=at,
    )
    ClusterMembership.objects.create(
        message_id=message_id,
        cluster=cluster,
        tenant_id=tenant_id,
        similarity=1.0,
        method=JoinMethod.FOUNDER,
        text_key=key,
    )
    return Assignment(message_id, cluster.id, JoinMethod.FOUNDER, 1.0, created=True)
