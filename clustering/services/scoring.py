"""How similar a message is to a cluster: centred average-link, measured on Banking77
(docs/clustering.md has the study and its figures).

Sentence embeddings of one tenant's messages share a large common direction ("a banking
question", "a question to this creator"), which inflates every cosine. Subtracting the tenant's
running mean ``mu`` removes it. A message ``x`` is then compared with a cluster ``c`` by the
mean cosine between the centred message and the centred members, which is, to a very good
approximation,

    score(x, c) = (x - mu) · (m_c - mu) / (|x - mu| * s)

where ``m_c`` is the mean of the members' vectors (``vector_sum / size``) and ``s`` the running
mean of ``|x_i - mu|``. For one message only ``(x - mu) · m_c`` varies between clusters, so the
best cluster is one inner-product query over the stored sums, with no re-ranking.

The running mean needs some messages before it means anything: until a tenant has
``CLUSTER_CENTERING_MIN_MESSAGES`` in the space, the plain cosine to the cluster's centroid is
used instead, with its own threshold (measured: the warm-up costs no quality).
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import numpy as np
from django.conf import settings
from django.db import connection

from clustering.models import Cluster, ClusteringPolicy, TenantCentre
from conversations.models import EmbeddingSpace

_CLUSTERS = Cluster._meta.db_table
_TINY = 1e-9


@dataclass(frozen=True)
class Thresholds:
    similarity: float  # centred average-link score
    warmup_similarity: float  # cosine to the centroid, while the tenant's mean is young
    text_similarity: float  # rapidfuzz token_set_ratio, 0-100
    short_chars: int


@dataclass(frozen=True)
class Candidate:
    id: UUID
    score: float  # what the join decision compares with its threshold
    similarity: float  # cosine between the message and the cluster's centroid (shown to moderators)
    status: str
    representative_text: str


@dataclass
class Centre:
    """A tenant's running mean in one space, as assignment reads and advances it."""

    total: np.ndarray
    count: int
    norm_sum: float

    @property
    def warm(self) -> bool:
        return self.count >= int(settings.CLUSTER_CENTERING_MIN_MESSAGES)

    def add(self, vector: np.ndarray) -> None:
        """Count a new message in (the mean then includes it, as the study measured)."""
        self.total += vector
        self.count += 1
        self.norm_sum += max(float(np.linalg.norm(vector - self.total / self.count)), _TINY)

    def centred(self, vector: np.ndarray) -> tuple[np.ndarray, float, float, np.ndarray]:
        """(q, |q|, s, mu) for a message already counted in."""
        mu = self.total / max(self.count, 1)
        q = vector - mu
        spread = self.norm_sum / max(self.count, 1)
        return q, max(float(np.linalg.norm(q)), _TINY), max(spread, _TINY), mu


def tenant_thresholds(*, tenant_id: int) -> Thresholds:
    """The tenant's thresholds: its ClusteringPolicy where set, else the settings."""
    policy = ClusteringPolicy.objects.filter(tenant_id=tenant_id).first() or ClusteringPolicy()
    return Thresholds(
        similarity=_or(policy.similarity_threshold, settings.CLUSTER_SIMILARITY_THRESHOLD),
        warmup_similarity=_or(policy.warmup_similarity_threshold, settings.CLUSTER_WARMUP_SIMILARITY_THRESHOLD),
        text_similarity=_or(policy.text_similarity_threshold, settings.CLUSTER_TEXT_SIMILARITY_THRESHOLD),
        short_chars=int(_or(policy.short_message_chars, settings.CLUSTER_SHORT_MESSAGE_CHARS)),
    )


def centre_load(*, tenant_id: int, space: EmbeddingSpace) -> Centre:
    row = TenantCentre.objects.filter(tenant_id=tenant_id, space=space).first()
    if row is None:
        return Centre(total=np.zeros(int(space.dimensions)), count=0, norm_sum=0.0)
    return Centre(total=np.asarray(row.vector_sum, dtype=np.float64), count=row.messages, norm_sum=row.centred_norm_sum)


def centre_save(*, tenant_id: int, space: EmbeddingSpace, centre: Centre) -> None:
    """Store the advanced centre (the caller holds the tenant's clustering lock)."""
    TenantCentre.objects.update_or_create(
        tenant_id=tenant_id,
        space=space,
        defaults={"vector_sum": centre.total.tolist(), "messages": centre.count, "centred_norm_sum": centre.norm_sum},
    )


def cluster_candidates(
    *, tenant_id: int, space: EmbeddingSpace, vector: list[float], limit: int, exact: bool = True
) -> list[Candidate]:
    """The ``limit`` joinable clusters of the tenant nearest to ``vector`` by centroid cosine,
    nearest first (``score`` is that cosine): the warm-up rule.

    ``exact`` scans the tenant's joinable clusters (right by construction; a few ms at 10k).
    Otherwise the space's HNSW index over joinable clusters answers, with a raised ef_search;
    pgvector filters the tenant after the index scan, so this is only for tenants that own a
    large share of the clusters (``tenant_uses_hnsw``), and a short answer falls back to exact."""
    dims = int(space.dimensions)
    distance = f"(vector_sum::vector({dims}) <=> %s::vector({dims}))"
    literal = vector_literal(vector)
    with connection.cursor() as cursor:
        if not exact:
            cursor.execute(f"SET LOCAL hnsw.ef_search = {max(int(settings.CLUSTER_EF_SEARCH), limit)}")
        # "+ 0" keeps the planner off the HNSW index for the exact scan.
        order = distance if not exact else f"{distance} + 0"
        cursor.execute(
            f"""
            SELECT id, 1 - {distance}, status, representative_text FROM {_CLUSTERS}
             WHERE tenant_id = %s AND space_id = %s AND status IN ('open', 'answered')
             ORDER BY {order} LIMIT %s
            """,
            [literal, tenant_id, space.pk, literal, limit],
        )
        found = [Candidate(r[0], float(r[1]), float(r[1]), r[2], r[3]) for r in cursor]
    if not exact and len(found) < limit:
        return cluster_candidates(tenant_id=tenant_id, space=space, vector=vector, limit=limit, exact=True)
    return found


def cluster_candidates_centred(
    *, tenant_id: int, space: EmbeddingSpace, vector: np.ndarray, centre: Centre, limit: int, exact: bool = True
) -> list[Candidate]:
    """The ``limit`` joinable clusters with the best centred average-link score, best first.
    ``vector`` must already be counted in ``centre``. The exact path ranks every joinable cluster
    by inner product with the centred message; the HNSW path (very large tenants) takes a wider
    set by cosine from the index and ranks that."""
    q, q_norm, spread, mu = centre.centred(vector)
    offset = float(q @ mu)
    dims = int(space.dimensions)
    q_literal, x_literal = vector_literal(q.tolist()), vector_literal(vector.tolist())
    inner = "(vector_sum <#> %s::vector) / GREATEST(size, 1)"  # minus (q · m_c)
    where = "tenant_id = %s AND space_id = %s AND status IN ('open', 'answered')"
    with connection.cursor() as cursor:
        if exact:
            cursor.execute(
                f"""
                SELECT id, -{inner}, 1 - (vector_sum <=> %s::vector), status, representative_text
                  FROM {_CLUSTERS} WHERE {where} ORDER BY {inner} LIMIT %s
                """,
                [q_literal, x_literal, tenant_id, space.pk, q_literal, limit],
            )
        else:
            wide = max(int(settings.CLUSTER_EF_SEARCH), 4 * limit)
            cursor.execute(f"SET LOCAL hnsw.ef_search = {wide}")
            cursor.execute(
                f"""
                SELECT id, -{inner}, 1 - (vector_sum <=> %s::vector), status, representative_text
                  FROM {_CLUSTERS} WHERE {where}
                 ORDER BY (vector_sum::vector({dims}) <=> %s::vector({dims})) LIMIT %s
                """,
                [q_literal, x_literal, tenant_id, space.pk, q_literal, 4 * limit],
            )
        rows = cursor.fetchall()
    if not exact and len(rows) < limit:
        return cluster_candidates_centred(
            tenant_id=tenant_id, space=space, vector=vector, centre=centre, limit=limit, exact=True
        )
    found = [Candidate(r[0], (float(r[1]) - offset) / (q_norm * spread), float(r[2]), r[3], r[4]) for r in rows]
    found.sort(key=lambda c: -c.score)
    return found[:limit]


def tenant_uses_hnsw(*, tenant_id: int, space: EmbeddingSpace) -> bool:
    """Whether the tenant has more joinable clusters than an exact scan should read."""
    cap = int(settings.CLUSTER_EXACT_SCAN_MAX)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT count(*) FROM (SELECT 1 FROM {_CLUSTERS}
             WHERE tenant_id = %s AND space_id = %s AND status IN ('open', 'answered') LIMIT %s) AS joinable
            """,
            [tenant_id, space.pk, cap + 1],
        )
        return int(cursor.fetchone()[0]) > cap


def vector_literal(vector: list[float]) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def _or(value: float | None, default: float) -> float:
    return float(default if value is None else value)
