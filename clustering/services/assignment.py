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

The candidates come from the worker's in-process matrix of the tenant's joinable clusters
(services/matrix.py), caught up with the database once per batch, or from SQL for a tenant too
large for it. Round trips per batch: the messages; then the tenants' locks, each tenant's
thresholds, running mean and clusters already holding the batch's texts, and its matrix's
catch-up read (one round trip: each statement still runs after the one before, under the
locks); then per message one statement that joins (or founds) the cluster and writes the
membership, returning the cluster for the matrix (the last one of a tenant also stores its
mean). The statements are shaped to be cheap to plan (subqueries rather than joins where a
join would only check a row): with client-side binding every statement is planned afresh.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from django.conf import settings
from django.db import connection
from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

from clustering.list_cache import cluster_list_cache_invalidate_on_commit
from clustering.models import Cluster, ClusteringPolicy, ClusterMembership, ClusterStatus, JoinMethod, TenantCentre
from clustering.services.deliveries import delivery_suggest
from clustering.services.locking import tenants_clustering_lock_statements
from clustering.services.matrix import ROW_COLUMNS, ClusterMatrix, MatrixSync, cluster_matrix_forget
from clustering.services.scoring import (
    Candidate,
    Centre,
    Probe,
    Thresholds,
    centre_of,
    centre_save_statement,
    cluster_candidates,
    cluster_candidates_centred,
    tenant_uses_hnsw,
    thresholds_of,
)
from conversations.models import Conversation, EmbeddingSpace, Message, MessageEmbedding, Role
from conversations.services.embedding_cache import text_normalize
from convo.db import hnsw_parameters, index_ensure
from convo.ids import uuid7
from convo.monitoring.timings import timed

_CLUSTERS = Cluster._meta.db_table
_MEMBERS = ClusterMembership._meta.db_table
Tail = list[tuple[str, list[Any]]]  # statements sent in the same round trip as a write
_PUNCTUATION = re.compile(r"[^\w\s]+")
LABEL_CHARS = 120

# The message's vector as the statements below add it: the one the worker stored in this
# transaction (no literal to build and parse, and exactly what a recompute from the members
# sums), or, for a caller that stored none, the literal.
_STORED = f"(SELECT embedding FROM {MessageEmbedding._meta.db_table} WHERE item_id = %s AND space_id = %s)"
_LITERAL = "%s::vector"

# A join, in one statement: the cluster takes the vector (only while it is joinable), the
# membership is written, and the cluster comes back as the database now has it.
_JOIN = """
WITH joined AS (
    UPDATE {clusters}
       SET vector_sum = vector_sum + {vector}, size = size + 1,
           first_message_at = LEAST(first_message_at, %s), last_message_at = GREATEST(last_message_at, %s),
           updated_at = now()
     WHERE id = %s AND tenant_id = %s AND space_id = %s AND status IN ('open', 'answered')
 RETURNING {columns}
), membership AS (
    INSERT INTO {members} (message_id, cluster_id, tenant_id, similarity, method, text_key, answer_suggested)
    SELECT %s, id, %s, %s, %s, %s, status = 'answered' FROM joined
)
SELECT * FROM joined
"""

# A new cluster with its founder as the only member, in one statement.
_FOUND = """
WITH founded AS (
    INSERT INTO {clusters}
           (id, tenant_id, space_id, label, representative_id, representative_text, vector_sum, size,
            first_message_at, last_message_at, status, answer, answer_version, answered_by)
    VALUES (%s, %s, %s, %s, %s, %s, {vector}, 1, %s, %s, 'open', '', 0, '')
 RETURNING {columns}
), membership AS (
    INSERT INTO {members} (message_id, cluster_id, tenant_id, similarity, method, text_key, answer_suggested)
    SELECT %s, id, %s, 1.0, 'founder', %s, false FROM founded
)
SELECT * FROM founded
"""
_WRITES = {
    (template, stored): template.format(
        clusters=_CLUSTERS, members=_MEMBERS, columns=ROW_COLUMNS, vector=_STORED if stored else _LITERAL
    )
    for template in (_JOIN, _FOUND)
    for stored in (True, False)
}

# Per batch and tenant, read under its lock in the same round trip: the policy's thresholds,
# the running mean, and which clusters already hold a member with one of the batch's texts
# (exact duplicates). Three single-table statements: nearly nothing to plan.
_POLICY = f"""
SELECT similarity_threshold, warmup_similarity_threshold, text_similarity_threshold, short_message_chars
  FROM {ClusteringPolicy._meta.db_table} WHERE tenant_id = %s
"""
_CENTRE = f"""
SELECT vector_send(vector_sum), messages, centred_norm_sum
  FROM {TenantCentre._meta.db_table} WHERE tenant_id = %s AND space_id = %s
"""
_TWINS = f"SELECT DISTINCT text_key, cluster_id FROM {_MEMBERS} WHERE tenant_id = %s AND text_key = ANY(%s)"


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


@dataclass
class _TenantRun:
    """What assigning one batch keeps for one tenant."""

    thresholds: Thresholds
    centre: Centre
    matrix: ClusterMatrix | None  # None: candidates come from SQL
    exact: bool  # the SQL search scans (else: HNSW)
    twins: dict[str, set[UUID]]  # text key -> clusters with a member of that text


@dataclass(frozen=True)
class _Inbound:
    id: UUID
    tenant_id: int
    text: str
    key: str
    at: datetime
    probe: Probe
    stored: bool  # its vector in the space is stored (the worker's case)

    def vector_params(self, space: EmbeddingSpace) -> list[UUID | int | str]:
        return [self.id, space.pk] if self.stored else [self.probe.literal]


def text_key(text: str) -> str:
    """The exact-duplicate key: the text up to case, spacing and punctuation."""
    folded = " ".join(_PUNCTUATION.sub(" ", text_normalize(text).casefold()).split())
    return hashlib.sha256(folded.encode()).hexdigest()[:32]


@timed("cluster_assignment")
def clusters_assign_embedded(*, space: EmbeddingSpace, items: list[EmbeddedMessage]) -> list[Assignment]:
    """Assign the inbound (role ``user``) messages among ``items`` that have no cluster yet.
    Must run inside the caller's transaction; takes the tenants' clustering locks until it ends."""
    if not items:
        return []
    vectors = {item.id: item.vector for item in items}
    # The locks first, in the same round trip: a soft delete or another worker's assignment that
    # commits while this one waits must be seen by the read (deleted_at, existing memberships).
    locks = tenants_clustering_lock_statements(tenant_ids={item.tenant_id for item in items})
    read = (
        f"""
        SELECT m.id, m.tenant_id, m.text, COALESCE(m.sent_at, m.created_at),
               EXISTS (SELECT 1 FROM {MessageEmbedding._meta.db_table} AS e
                        WHERE e.item_id = m.id AND e.space_id = %s)
          FROM {Message._meta.db_table} AS m
         WHERE m.id = ANY(%s) AND m.role = %s
           AND (SELECT c.deleted_at FROM {Conversation._meta.db_table} AS c WHERE c.id = m.conversation_id) IS NULL
           AND NOT EXISTS (SELECT 1 FROM {_MEMBERS} AS cm WHERE cm.message_id = m.id)
         ORDER BY m.created_at, m.id
        """,
        [space.pk, list(vectors), Role.USER.value],
    )
    rows = _round_trip([*locks, read])[-1]
    if not rows:
        return []
    inbound = [
        _Inbound(row[0], row[1], row[2], text_key(row[2]), row[3], Probe(vectors[row[0]]), stored=row[4])
        for row in rows
    ]
    runs = _tenants_start(space=space, inbound=inbound)
    last = {message.tenant_id: position for position, message in enumerate(inbound)}
    done = [
        _assign_one(space=space, run=runs[message.tenant_id], message=message, closing=last[message.tenant_id] == i)
        for i, message in enumerate(inbound)
    ]
    for tenant_id in runs:
        cluster_list_cache_invalidate_on_commit(tenant_id=tenant_id)
    return done


def cluster_space_index(*, space: EmbeddingSpace) -> None:
    """Create the space's HNSW index over joinable clusters if missing (``index_ensure``), when
    CLUSTER_HNSW_INDEX is on; otherwise nothing (an existing index is left alone). Called where
    the space's other indexes are made (embedding_space_index)."""
    if not settings.CLUSTER_HNSW_INDEX:
        return
    index_ensure(
        name=f"cluster_hnsw_space_{int(space.pk)}",
        definition=f"ON {_CLUSTERS} USING hnsw ((vector_sum::vector({int(space.dimensions)})) vector_cosine_ops) "
        f"{hnsw_parameters()} WHERE space_id = {int(space.pk)} AND status IN ('open', 'answered')",
    )


def cluster_best(
    *,
    tenant_id: int,
    space: EmbeddingSpace,
    vector: list[float] | Probe,
    centre: Centre,
    thresholds: Thresholds,
    exact: bool = True,
    exclude: UUID | None = None,
    matrix: ClusterMatrix | None = None,
) -> tuple[Candidate | None, list[Candidate]]:
    """The cluster a message (already counted in ``centre``) should join, if any passes the
    tenant's threshold, and the candidates looked at. ``exclude``: a cluster id to leave out.
    ``matrix``: the tenant's in-process clusters (else SQL searches)."""
    probe = vector if isinstance(vector, Probe) else Probe(vector)
    limit = int(settings.CLUSTER_CANDIDATES) + (exclude is not None)
    if centre.warm:
        candidates = cluster_candidates_centred(
            tenant_id=tenant_id, space=space, vector=probe, centre=centre, limit=limit, exact=exact, matrix=matrix
        )
        threshold = thresholds.similarity
    else:
        candidates = cluster_candidates(
            tenant_id=tenant_id, space=space, vector=probe, limit=limit, exact=exact, matrix=matrix
        )
        threshold = thresholds.warmup_similarity
    candidates = [c for c in candidates if c.id != exclude]
    best = candidates[0] if candidates and candidates[0].score >= threshold else None
    return best, candidates


# --- internals ---------------------------------------------------------------------------------


def _tenants_start(*, space: EmbeddingSpace, inbound: list[_Inbound]) -> dict[int, _TenantRun]:
    """Read what the batch needs of each tenant and its matrix's catch-up, in one round trip,
    under the tenants' locks (taken by ``clusters_assign_embedded`` before it read the batch)."""
    keys: dict[int, set[str]] = {}
    for message in inbound:
        keys.setdefault(message.tenant_id, set()).add(message.key)
    syncs = {tenant_id: MatrixSync(tenant_id=tenant_id, space=space) for tenant_id in sorted(keys)}
    statements: Tail = []
    for tenant_id, sync in syncs.items():
        statements.append((_POLICY, [tenant_id]))
        statements.append((_CENTRE, [tenant_id, space.pk]))
        statements.append((_TWINS, [tenant_id, sorted(keys[tenant_id])]))
        if sync.statement is not None:
            statements.append(sync.statement)
    results = iter(_round_trip(statements))
    runs: dict[int, _TenantRun] = {}
    for tenant_id, sync in syncs.items():
        policy = next(results) or [(None, None, None, None)]
        centre = next(results) or [(None, None, None)]
        twins: dict[str, set[UUID]] = {}
        for key, cluster_id in next(results):
            twins.setdefault(key, set()).add(cluster_id)
        matrix = sync.finish(next(results) if sync.statement is not None else [])
        (vector, messages, norm_sum), policy_row = centre[0], policy[0]
        runs[tenant_id] = _TenantRun(
            thresholds=thresholds_of(*policy_row),
            centre=centre_of(space=space, vector=vector, messages=messages, norm_sum=norm_sum),
            matrix=matrix,
            exact=matrix is not None or not tenant_uses_hnsw(tenant_id=tenant_id, space=space),
            twins=twins,
        )
    return runs


def _round_trip(statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple[Any, ...]]]:
    """Run ``statements`` in order and return the rows of each. With psycopg's client-side
    binding (Django's default) they go to the server as one query string: one round trip, and
    each statement still starts after the one before has finished (its own snapshot, after any
    lock the one before took). Otherwise, one by one."""
    with connection.cursor() as cursor:
        if not isinstance(cursor.cursor, psycopg.ClientCursor):
            out = []
            for sql, params in statements:
                cursor.execute(sql, params)
                out.append(cursor.fetchall() if cursor.description else [])
            return out
        cursor.execute(";\n".join(sql for sql, _ in statements), [p for _, params in statements for p in params])
        results = [cursor.fetchall() if cursor.description else []]
        while cursor.nextset():
            results.append(cursor.fetchall() if cursor.description else [])
        return results


def _assign_one(*, space: EmbeddingSpace, run: _TenantRun, message: _Inbound, closing: bool) -> Assignment:
    """``closing``: the tenant's last message of the batch, whose write also stores the mean."""
    run.centre.add(message.probe.vector)
    tail = [centre_save_statement(tenant_id=message.tenant_id, space=space, centre=run.centre)] if closing else []
    assignment = _place(space, run, message, tail)
    if assignment is None:
        # The matrix offered a cluster that is gone or no longer joinable: it is stale (which the
        # revision protocol should make impossible). Drop it; SQL decides for the rest of the batch.
        cluster_matrix_forget(tenant_id=message.tenant_id, space=space)
        run.matrix = None
        run.exact = not tenant_uses_hnsw(tenant_id=message.tenant_id, space=space)
        assignment = _place(space, run, message, tail)
        if assignment is None:
            raise RuntimeError(f"no joinable cluster for message {message.id} although one was found")
    run.twins.setdefault(message.key, set()).add(assignment.cluster_id)
    return assignment


def _place(space: EmbeddingSpace, run: _TenantRun, message: _Inbound, tail: Tail) -> Assignment | None:
    """Decide and write (``tail``: statements to send with the write); None when the chosen
    cluster turned out not to be joinable."""
    twin = _exact_twin(space, run, message)
    if twin is not None:
        return _join(space, run, twin, message, JoinMethod.EXACT, 1.0, tail)
    best, candidates = cluster_best(
        tenant_id=message.tenant_id,
        space=space,
        vector=message.probe,
        centre=run.centre,
        thresholds=run.thresholds,
        exact=run.exact,
        matrix=run.matrix,
    )
    if best is not None:
        return _join(space, run, best, message, JoinMethod.VECTOR, best.similarity, tail)
    normalized = text_normalize(message.text)
    short_chars = run.thresholds.short_chars
    if len(normalized) <= short_chars:
        # Only short against short: token_set_ratio scores 100 whenever one text's words are a
        # subset of the other's, which says little about a long representative text.
        wording = [
            (fuzz.token_set_ratio(normalized, c.representative_text, processor=default_process), c)
            for c in candidates
            if len(c.representative_text) <= 2 * short_chars
        ]
        if wording:
            score, closest = max(wording, key=lambda pair: (pair[0], pair[1].score))
            if score >= run.thresholds.text_similarity:
                return _join(space, run, closest, message, JoinMethod.TEXT, closest.similarity, tail)
    return _found(space, run, message, normalized, tail)


def _exact_twin(space: EmbeddingSpace, run: _TenantRun, message: _Inbound) -> Candidate | None:
    """The largest joinable cluster of the space holding a member with the message's text."""
    clusters = run.twins.get(message.key)
    if not clusters:
        return None
    if run.matrix is not None:
        row = run.matrix.largest(clusters)
        if row is None:
            return None
        return Candidate(run.matrix.ids[row], 1.0, 1.0, run.matrix.statuses[row], run.matrix.texts[row])
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT id, status, representative_text FROM {_CLUSTERS}
             WHERE id = ANY(%s) AND space_id = %s AND status IN ('open', 'answered')
             ORDER BY size DESC LIMIT 1
            """,
            [list(clusters), space.pk],
        )
        found = cursor.fetchone()
    if found is None:
        return None
    return Candidate(id=found[0], score=1.0, similarity=1.0, status=found[1], representative_text=found[2])


def _join(
    space: EmbeddingSpace,
    run: _TenantRun,
    cluster: Candidate,
    message: _Inbound,
    method: str,
    similarity: float,
    tail: Tail,
) -> Assignment | None:
    written = _round_trip(
        [
            (
                _WRITES[_JOIN, message.stored],
                [
                    *message.vector_params(space),
                    message.at,
                    message.at,
                    cluster.id,
                    message.tenant_id,
                    space.pk,
                    message.id,
                    message.tenant_id,
                    min(1.0, similarity),
                    method,
                    message.key,
                ],
            ),
            *tail,
        ]
    )[0]
    if not written:
        return None
    row = written[0]
    if run.matrix is not None:
        run.matrix.apply([row])
    if row[3] == ClusterStatus.ANSWERED:
        delivery_suggest(cluster_id=cluster.id, message_ids=[message.id])
    return Assignment(message.id, cluster.id, method, similarity, created=False)


def _found(space: EmbeddingSpace, run: _TenantRun, message: _Inbound, text: str, tail: Tail) -> Assignment:
    cluster_id = uuid7()
    (row,) = _round_trip(
        [
            (
                _WRITES[_FOUND, message.stored],
                [
                    cluster_id,
                    message.tenant_id,
                    space.pk,
                    text[:LABEL_CHARS],
                    message.id,
                    text,
                    *message.vector_params(space),
                    message.at,
                    message.at,
                    message.id,
                    message.tenant_id,
                    message.key,
                ],
            ),
            *tail,
        ]
    )[0]
    if run.matrix is not None:
        run.matrix.apply([row])
    return Assignment(message.id, cluster_id, JoinMethod.FOUNDER, 1.0, created=True)
