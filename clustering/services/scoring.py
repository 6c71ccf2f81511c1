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
best cluster is one inner product per cluster with the stored sums, with no re-ranking: computed
in the worker's memory (services/matrix.py) or by one SQL query.

The running mean needs some messages before it means anything: until a tenant has
``CLUSTER_CENTERING_MIN_MESSAGES`` in the space, the plain cosine to the cluster's centroid is
used instead, with its own threshold (measured: the warm-up costs no quality).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any
from uuid import UUID

import numpy as np
import numpy.typing as npt
from django.conf import settings
from django.db import connection

from clustering.models import Cluster, ClusteringPolicy, TenantCentre
from clustering.services.matrix import ClusterMatrix, joinable_count
from conversations.models import EmbeddingSpace

_CLUSTERS = Cluster._meta.db_table
_TINY = 1e-9

Floats = npt.NDArray[np.float64]


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


class Probe:
    """A vector in the forms the searches need, each made at most once: float64 for the
    arithmetic, as the database stores it (float32, widened back to float64) for the in-process
    search, and as a pgvector literal for SQL."""

    def __init__(self, vector: list[float] | Floats) -> None:
        self.vector: Floats = np.asarray(vector, dtype=np.float64)

    @cached_property
    def stored(self) -> Floats:
        return self.vector.astype(np.float32).astype(np.float64)

    @cached_property
    def literal(self) -> str:
        return vector_literal(self.vector)


def tenant_thresholds(*, tenant_id: int) -> Thresholds:
    """The tenant's thresholds: its ClusteringPolicy where set, else the settings."""
    policy = ClusteringPolicy.objects.filter(tenant_id=tenant_id).first() or ClusteringPolicy()
    return thresholds_of(
        policy.similarity_threshold,
        policy.warmup_similarity_threshold,
        policy.text_similarity_threshold,
        policy.short_message_chars,
    )


def thresholds_of(
    similarity: float | None, warmup: float | None, text: float | None, short_chars: int | None
) -> Thresholds:
    """Thresholds from a policy's fields (None: the setting)."""
    return Thresholds(
        similarity=_or(similarity, settings.CLUSTER_SIMILARITY_THRESHOLD),
        warmup_similarity=_or(warmup, settings.CLUSTER_WARMUP_SIMILARITY_THRESHOLD),
        text_similarity=_or(text, settings.CLUSTER_TEXT_SIMILARITY_THRESHOLD),
        short_chars=int(_or(short_chars, settings.CLUSTER_SHORT_MESSAGE_CHARS)),
    )


def centre_load(*, tenant_id: int, space: EmbeddingSpace) -> Centre:
    row = TenantCentre.objects.filter(tenant_id=tenant_id, space=space).first()
    if row is None:
        return Centre(total=np.zeros(int(space.dimensions)), count=0, norm_sum=0.0)
    return Centre(total=np.asarray(row.vector_sum, dtype=np.float64), count=row.messages, norm_sum=row.centred_norm_sum)


def centre_of(*, space: EmbeddingSpace, vector: bytes | None, messages: int | None, norm_sum: float | None) -> Centre:
    """A centre from its stored columns (``vector_send`` of the sum; None: no centre yet)."""
    if vector is None:
        return Centre(total=np.zeros(int(space.dimensions)), count=0, norm_sum=0.0)
    total = np.frombuffer(vector, dtype=">f4", offset=4).astype(np.float64)
    return Centre(total=total, count=int(messages or 0), norm_sum=float(norm_sum or 0.0))


def centre_save_statement(*, tenant_id: int, space: EmbeddingSpace, centre: Centre) -> tuple[str, list[Any]]:
    """The upsert that stores the advanced centre, sent with the batch's last write (the caller
    holds the tenant's clustering lock)."""
    return (
        f"""
        INSERT INTO {TenantCentre._meta.db_table} (tenant_id, space_id, vector_sum, messages, centred_norm_sum)
        VALUES (%s, %s, %s::vector, %s, %s)
        ON CONFLICT (tenant_id, space_id) DO UPDATE
           SET vector_sum = EXCLUDED.vector_sum, messages = EXCLUDED.messages,
               centred_norm_sum = EXCLUDED.centred_norm_sum
        """,
        [tenant_id, space.pk, vector_literal(centre.total), centre.count, centre.norm_sum],
    )


def cluster_candidates(
    *,
    tenant_id: int,
    space: EmbeddingSpace,
    vector: list[float] | Probe,
    limit: int,
    exact: bool = True,
    matrix: ClusterMatrix | None = None,
) -> list[Candidate]:
    """The ``limit`` joinable clusters of the tenant nearest to ``vector`` by centroid cosine,
    nearest first (``score`` is that cosine): the warm-up rule.

    With the tenant's ``matrix`` (services/matrix.py), every joinable cluster is scored in
    process. Otherwise ``exact`` scans them in SQL (right by construction; ~8 ms at 10k), or
    the space's HNSW index over joinable clusters answers, with a raised ef_search; pgvector
    filters the tenant after the index scan, so this is only for tenants that own a large share
    of the clusters (``tenant_uses_hnsw``), and a short answer falls back to exact."""
    probe = vector if isinstance(vector, Probe) else Probe(vector)
    if matrix is not None:
        return [
            Candidate(matrix.ids[row], cosine, cosine, matrix.statuses[row], matrix.texts[row])
            for row, cosine in matrix.nearest_by_cosine(probe.stored, limit)
        ]
    dims = int(space.dimensions)
    distance = f"(vector_sum::vector({dims}) <=> %s::vector({dims}))"
    literal = probe.literal
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
        return cluster_candidates(tenant_id=tenant_id, space=space, vector=probe, limit=limit, exact=True)
    return found


def cluster_candidates_centred(
    *,
    tenant_id: int,
    space: EmbeddingSpace,
    vector: np.ndarray | Probe,
    centre: Centre,
    limit: int,
    exact: bool = True,
    matrix: ClusterMatrix | None = None,
) -> list[Candidate]:
    """The ``limit`` joinable clusters with the best centred average-link score, best first.
    ``vector`` must already be counted in ``centre``. The tenant's ``matrix`` or the exact SQL
    path ranks every joinable cluster by inner product with the centred message; the HNSW path
    (very large tenants) takes a wider set by cosine from the index and ranks that."""
    probe = vector if isinstance(vector, Probe) else Probe(vector)
    q, q_norm, spread, mu = centre.centred(probe.vector)
    offset = float(q @ mu)
    rows: list[tuple[UUID, float, float, str, str]]
    if matrix is not None:
        best = matrix.best_inner(Probe(q).stored, probe.stored, limit)
        rows = [(matrix.ids[r], inner, cosine, matrix.statuses[r], matrix.texts[r]) for r, inner, cosine in best]
    else:
        rows = _centred_rows_sql(tenant_id=tenant_id, space=space, q=q, probe=probe, limit=limit, exact=exact)
        if not exact and len(rows) < limit:
            rows = _centred_rows_sql(tenant_id=tenant_id, space=space, q=q, probe=probe, limit=limit, exact=True)
    found = [Candidate(r[0], (float(r[1]) - offset) / (q_norm * spread), float(r[2]), r[3], r[4]) for r in rows]
    found.sort(key=lambda c: -c.score)
    return found[:limit]


def _centred_rows_sql(
    *, tenant_id: int, space: EmbeddingSpace, q: Floats, probe: Probe, limit: int, exact: bool
) -> list[tuple[UUID, float, float, str, str]]:
    """(id, q · m_c, cosine to the message, status, representative text) of the best clusters
    by the exact scan, or of ``4 * limit`` clusters nearest by cosine through HNSW."""
    dims = int(space.dimensions)
    q_literal, x_literal = vector_literal(q), probe.literal
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
        return [(r[0], float(r[1]), float(r[2]), r[3], r[4]) for r in cursor.fetchall()]


def tenant_uses_hnsw(*, tenant_id: int, space: EmbeddingSpace) -> bool:
    """Whether the tenant has more joinable clusters than an exact SQL scan should read. Always
    False (and nothing is counted) unless CLUSTER_HNSW_INDEX is on: without the index, the
    "approximate" search would be a scan too."""
    if not settings.CLUSTER_HNSW_INDEX:
        return False
    cap = int(settings.CLUSTER_EXACT_SCAN_MAX)
    return joinable_count(tenant_id=tenant_id, space=space, limit=cap + 1) > cap


def vector_literal(vector: list[float] | Floats) -> str:
    """A pgvector literal of ``vector``. pgvector stores float32: each value is rounded to float32
    here (as the server's strtof would round it) and written with the 9 significant digits that
    give that float32 back exactly, half the text (and time) of a float64 repr."""
    values = np.asarray(vector, dtype=np.float32).tolist()
    return "[" + ",".join(map("{:.9g}".format, values)) + "]"


def _or(value: float | None, default: float) -> float:
    return float(default if value is None else value)
